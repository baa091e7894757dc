"""The feed side: connect, subscribe, read, and journal every frame.

``connection`` keeps one shard of the universe subscribed and reconnects
forever; ``process`` is the feed process around it. The supervisor
authorizes each attempt (:mod:`collector.supervisor.upstox`).
"""
