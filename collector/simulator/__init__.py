"""A local stand-in for Upstox: REST authorize, the V3 feed socket, an instrument master.

``market`` generates instruments and prices (no I/O); ``candles`` answers the
candle and holiday APIs from what the market traded; ``server`` serves it all
on one port through :mod:`collector.feedserver` (the protocol, shared with the replay), with
what its sockets carry in ``feed``.
"""
