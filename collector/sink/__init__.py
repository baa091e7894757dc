"""The sink side: decode, sequence and batch what the feed read, and store it exactly once."""
