# Every asgi-fleet tunable, with its default. Override any of them in another
# group_data file, in an inventory's host data, per app in `apps`, or with
# `--data key=value`. All of them are validated before any host is touched
# (asgi_fleet/settings.py holds the rules).

# --- The app -----------------------------------------------------------------
app_name = "hello"  # names the unit, user, group, paths and socket: /srv/hello, hello.service
app_source = "example"  # the app's directory on the controller, shipped as a release
# What a release holds: from a git work tree the files git tracks, otherwise
# all but what the app's .gitignore names; never .env*, node_modules/, VCS
# dirs or caches (asgi_fleet/release.py ALWAYS_EXCLUDED). More gitignore
# patterns to leave out, e.g. ["docs/", "*.sqlite3"]:
release_exclude = []
app_module = "app:app"  # the ASGI callable, "module:attribute" (a factory: "module:create_app()")
app_lock = "example/requirements.lock"  # hash-locked requirements: server stack + the app's own
app_env = {}  # environment for the app (systemd EnvironmentFile /etc/APP/env)
# Secrets: where each value comes from on the controller, never the value itself:
# {"API_TOKEN": "env:SHOP_API_TOKEN", "DB_PASSWORD": "file:~/.secrets/shop-db"}.
# They land in /etc/APP/secrets (root:APP 0640) and reach the app's environment.
app_secrets = {}
apps = None  # several apps on a host: a list of per-app overrides, e.g. [{"app_name": "shop", "bind": "0.0.0.0:8001"}]

# --- Serving -----------------------------------------------------------------
bind = "0.0.0.0:8000"  # held by systemd's APP.socket, so a restart queues instead of refusing
backlog = 2048  # listen backlog: room for the connections that wait during a restart
# asgi-fleet's subclass of uvicorn_worker.UvicornWorker (installed into every
# virtualenv): on reload or restart it serves every connection it already
# accepted instead of dropping it (bench/notes-reload.md). The stock class is
# "uvicorn_worker.UvicornWorker"; never "uvicorn.workers.UvicornWorker" (deprecated).
# gunicorn's own ASGI worker: "asgi", or asgi-fleet's draining subclass of it,
# "asgi_fleet_gasgi.DrainingASGIWorker" (the stock one drops a few requests
# per reload under keep-alive; README, "gunicorn's own ASGI worker").
worker_class = "asgi_fleet_worker.DrainingUvicornWorker"
workers = None  # None: sized per host by worker_policy; an integer forces that count
# "cores": one worker per usable CPU. A Uvicorn worker is one event loop that
# saturates one core; gunicorn's ASGI docs say nproc and benchmarks of
# Uvicorn+Starlette peak near one per core. "2*cores+1" is gunicorn's advice
# for *sync* workers that wait on I/O; "cores+1" keeps a spare loop.
worker_policy = "cores"
worker_memory_mb = 256  # memory budget per worker: caps the count on small hosts
memory_reserve_mb = 256  # memory left to the OS and the master before workers are counted
timeout = 30  # seconds an event loop may block before the worker is killed (not a request limit)
websocket_drain_seconds = 10  # an open WebSocket's grace on reload or restart, then close 1012; < graceful_timeout - 1
graceful_timeout = 25  # seconds an old worker may finish in-flight requests; <= timeout
keepalive = 5  # seconds an idle keep-alive connection stays open
# Recycle a worker after this many requests, against leaks (0: never). Off by
# default: a host with one worker serves nothing while it reboots, which at
# 8k req/s was every second or two (bench/results/throughput.json).
max_requests = 0
max_requests_jitter = 0  # spread recycling so workers do not restart together
forwarded_allow_ips = "127.0.0.1"  # proxies trusted for X-Forwarded-* ("*" behind a unix socket)
log_level = "info"  # gunicorn's log level; logs go to journald
# A line per request into journald, on the workers' CPUs: about a third of the
# throughput (bench/). The load balancer in front logs every request anyway.
access_log = False
# How a reload (a code, config or rollback activation) replaces the workers.
# "one_at_a_time": start one new worker, wait until it serves, stop one old
# worker, and so on (asgi_fleet_roll in the virtualenv): N to N + 1 workers,
# never N apps importing at once beside N old ones draining. "all_at_once":
# gunicorn's own HUP, quicker by the waits, with a p99 spike while it lasts (bench/).
reload_workers = "one_at_a_time"
# Libraries the gunicorn master imports once, if installed, so that every worker
# forks with them loaded and imports only the app's own code: for the example,
# a new worker's boot goes from 0.2 s of CPU to 0.06 s, and a reload's roll
# from 0.6 s to 0.3 s. Only what is installed in the virtualenv qualifies (the
# app's own code would stay old across reloads: preflight refuses it). Leave
# out a library that is not safe to fork after import (one that starts threads
# or opens connections as it is imported, as grpc does).
preload_libraries = ["fastapi", "starlette"]

# --- Sandbox (the unit scores <= 1.5 in `systemd-analyze security` by default) ---
unit_read_write_paths = []  # more paths the app may write (its runtime and state dirs always)
unit_ip_address_allow = None  # None: any egress; a list of networks restricts it, e.g. ["10.0.0.0/8"]
# MemoryDenyWriteExecute breaks cffi callbacks and some JITs, so it is opt-in.
unit_memory_deny_write_execute = False

# --- Health gate -------------------------------------------------------------
health_path = "/healthz"  # GET through the real socket after every start or reload; 200 = healthy
health_deadline = 60  # seconds for a host to become healthy before it is rolled back
health_consecutive = 3  # healthy = this many 200s in a row (0.5 s apart), from workers on the new release

# --- Releases ----------------------------------------------------------------
srv_root = "/srv"  # apps live in SRV_ROOT/APP/{releases,venvs,current}
keep_releases = 5  # releases kept per app; the running and the previous one are never pruned
rollback = False  # --data rollback=1: go back to each app's previous release (ships nothing)
rollback_to = None  # with rollback: this release (asgi-fleet releases lists them) instead of the previous one

# --- Rolling activation ----------------------------------------------------------
# The release is staged and preflighted on every host at once; then hosts are
# activated batch by batch, in inventory order, each batch drained at the load
# balancer and health-gated before the next starts. A host that fails is rolled
# back to the release it ran before.
rollout_batch = 1  # hosts activated at a time: a count, or a share of the app hosts like "25%"
rollout_max_failures = 0  # failed hosts tolerated before the rollout stops: a count or "10%"
# A run that died (Ctrl-C, a CI timeout) leaves its lock on each host. The
# next run takes it over when its pyinfra process on this controller is gone,
# or when it is older than this (a lock from another controller); never while
# an activation of that run still runs on the host.
deploy_lock_max_age = 7200
break_lock = None  # --data break_lock=RUN_ID: take over that run's lock now (the error names it)

# --- Load balancer (hosts in the inventory group `lb`) ------------------------------
# nginx from Debian, listening on each app's port, with every app host that runs
# the app as an upstream server.
lb_address = None  # this app host's address as the load balancer reaches it; None: its inventory name
lb_keepalive = 16  # idle connections the load balancer keeps open to each app upstream, per nginx worker; 0: one per request

# --- Host packages and the package index ----------------------------------------
extra_system_packages = []  # more Debian packages, e.g. ["libpq5"] for the app's wheels
apt_cache_time = 86400  # seconds before apt's lists count as stale: a re-run stays offline
# The controller downloads each lock's wheels once per host platform (Python,
# machine, glibc: bookworm and trixie are two) with its own pip configuration,
# caches them (~/.cache/asgi-fleet) and ships them: hosts install offline, with
# uv, and need no index. False: each host installs from its package index
# below, with pip.
wheelhouse = True
pip_index_url = None  # a private index or mirror, e.g. "https://pypi.example.com/simple"
pip_ca_bundle = None  # a CA bundle on the controller, uploaded for pip (a TLS proxy, a private CA)
