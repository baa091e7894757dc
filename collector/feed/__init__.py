"""The feed side: authorize, connect, subscribe, read, and journal every frame.

``auth`` gets the one-time socket URL, ``connection`` keeps one shard of the
universe subscribed and reconnects forever.
"""
