"""The writer side: decode, sequence and batch what the feed journaled, and store it exactly once."""
