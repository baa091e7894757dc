"""``collector replay``: a recorded span back over the Upstox V3 feed protocol.

``recording`` reads the span from the database as frames, ``clock`` keeps the
replay's time, ``server`` serves it through :mod:`collector.feedserver`,
``command`` is the command line.
"""
