"""The pure core: rules and data without I/O.

Nothing here touches a socket, a file, the database, a subprocess, the event
loop or the metrics registry (``tests/core/test_pure.py`` holds it to that);
time comes in as an argument. The shells around it (``feed``, ``writer``,
``supervisor``, ``db``) do the I/O.
"""
