"""Generated protobuf code for the Upstox V3 feed; ``build.py`` regenerates it."""
