"""A local stand-in for Upstox: REST authorize, the V3 feed socket, an instrument master.

``market`` generates instruments and prices (no I/O); ``server`` serves them.
"""
