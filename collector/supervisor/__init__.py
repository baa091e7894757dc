"""The supervisor process: startup → main loop → shutdown, its children, Upstox's REST API, gap work."""
