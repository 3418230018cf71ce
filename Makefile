# asgi-fleet. `make demo` deploys the example app to a local fleet of Docker
# test hosts; `make test` runs the unit tests and the end-to-end tests on it.
# Both set everything up on a fresh Debian machine where you are root.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
INVENTORY ?= inventories/docker.py

include Makefile.fleet

.PHONY: demo test unit e2e deploy status verify bench venv docker-engine lock clean

venv: $(VENV)/.installed
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q -e '.[test]'
	touch $@

docker-engine:
	./fleet/docker-engine.sh

fleet-build fleet-up fleet-fresh fleet-down fleet-status: venv docker-engine

demo: venv docker-engine fleet deploy status

deploy: venv
	$(VENV)/bin/pyinfra -y $(INVENTORY) deploy.py

status: venv
	$(PY) -m asgi_fleet.status $(INVENTORY)

# Check every promise of the deploy against the live processes of INVENTORY.
verify: venv
	$(VENV)/bin/pytest tests/verify --inventory $(INVENTORY)

test: venv docker-engine fleet-fresh
	$(VENV)/bin/pytest -ra --durations=30 tests/unit tests/e2e

# Every benchmark on the local fleet, one after the other (24-26 minutes on a
# fresh 2-core machine); rewrites the tables in bench/README.md.
bench: venv docker-engine fleet
	$(PY) bench/run_all.py

unit: venv
	$(VENV)/bin/pytest -q tests/unit

# Re-lock the example app's requirements and the hosts' tools (hashes for
# every wheel, all Pythons).
lock: venv
	$(VENV)/bin/uv pip compile --quiet --universal --generate-hashes --python-version 3.11 \
		example/requirements.in -o example/requirements.lock
	$(VENV)/bin/uv pip compile --quiet --universal --generate-hashes --python-version 3.11 \
		requirements/verify-tools.in -o requirements/verify-tools.lock

clean: fleet-down
	rm -rf .asgi-fleet
