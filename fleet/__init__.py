"""asgi-fleet test hosts: systemd Debian containers that play servers.

`python -m asgi_fleet.fleet build|up|down|status` (see fleet/__main__.py). Stdlib only:
everything is done through the docker, debootstrap and ssh command-line tools,
so the controller needs no extra Python packages for this.
"""
