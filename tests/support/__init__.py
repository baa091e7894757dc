"""What the tests share: databases, ports, metrics, processes, and the collector's own pieces set up for tests.

Tests import from here, never from ``conftest`` (which only holds fixtures and hooks).
"""
