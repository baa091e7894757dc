"""The journal: the one log both processes of a connection share.

The feed process appends every frame it reads (``appender``); the writer
process reads it from the committed position on (``reader``) and deletes
what is committed. ``format`` is the record format (no I/O), ``files`` the
folder's segments, id and locks, ``events`` the connection events the feed
journals beside the frames.
"""
