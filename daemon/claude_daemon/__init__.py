"""The claude-kit reference daemon: API server, connection manager and usage monitor.

Standard library plus psycopg2 and redis-py only (Debian 12's python3-psycopg2
and python3-redis), so the container image needs nothing from PyPI.
"""

__version__ = "0.1.0"
