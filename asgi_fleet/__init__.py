"""asgi-fleet: run Python ASGI apps on your own Debian servers with pyinfra.

This package holds the decisions (pure, unit-tested functions), the custom
pyinfra facts and operations. The deploy itself is `deploy.py` + `tasks/`.
"""
