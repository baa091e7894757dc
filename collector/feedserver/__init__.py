"""The Upstox V3 feed protocol as a server: what the simulator and the replay both speak through."""
