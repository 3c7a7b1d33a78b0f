# pycilium: host setup, run, test. Everything needs root (packages, bpffs, dockerd, tc).
#   make run    install what is missing, start dockerd and the driver
#   make uninstall  remove what the driver added to the host (after make stop)
#   make cluster    etcd and NODES simulated hosts on this machine (scripts/cluster.sh)
#   make test   run the whole suite, and tests/e2e on Docker 26 too (what .ci/run does);
#               tests/cluster starts etcd (Debian's etcd-server, from make setup) per test

VENV        ?= .venv
# The engine's own client, where docker.io, docker-ce-cli and moby-cli all put it. Not the
# docker first on PATH: on a fresh machine that is a CLI 28 in /usr/local/bin, and this is
# read before 'make setup' installs the engine. DOCKER=... for a client elsewhere.
DOCKER      ?= /usr/bin/docker
PIDFILE     ?= /run/pycilium/cilium-docker.pid
LOG         ?= /var/log/pycilium/cilium-docker.log
PLUGIN_SOCK ?= /run/docker/plugins/cilium.sock
IMAGE       ?= pycilium/busybox:latest
DRIVER_ARGS ?=
PYTEST_ARGS ?=
NODES       ?= 3

# The scripts read these; DOCKER is the client matching the engine (not the CLI 28 that is
# first on PATH on these machines), exported so the test suite can use the same binary.
export VENV DOCKER PIDFILE LOG PLUGIN_SOCK IMAGE DRIVER_ARGS NODES

# Prerequisites run in the order written (setup before lint before pytest).
.NOTPARALLEL:
.DEFAULT_GOAL := help

.PHONY: help setup run stop uninstall status lint format docs test test-26 clean plugin demo demo-down bench \
	cluster cluster-down

help:
	@echo "make run      install what is missing, start dockerd and the driver"
	@echo "make stop     stop the driver that 'make run' started"
	@echo "make uninstall  remove what the driver added to the host (routes, rules, maps, state)"
	@echo "make test     setup, lint, the whole pytest suite, then tests/e2e on Docker 26 (PYTEST_ARGS=...)"
	@echo "make test-26  only tests/e2e against Docker 26 + compose v2 (scripts/engine.sh)"
	@echo "make setup    only the host setup (packages, headers, bpffs, venv, dockerd, image)"
	@echo "make demo     the docker-compose demo (make demo-down removes it)"
	@echo "make cluster  etcd and NODES=3 simulated hosts, each with dockerd and driver (make cluster-down)"
	@echo "make lint / make format / make docs / make status / make clean"

setup:
	@scripts/setup-host.sh
	@scripts/build-image.sh

run: setup
	@scripts/driver.sh start

stop:
	@scripts/driver.sh stop

# Same DRIVER_ARGS as 'make run': it removes what that instance added, and nothing else.
uninstall:
	@if scripts/driver.sh status >/dev/null 2>&1; then \
		echo "the driver from 'make run' still runs: 'make stop' first" >&2; exit 1; fi
	@$(VENV)/bin/python -m driver.server.uninstall $(DRIVER_ARGS)

status:
	@scripts/driver.sh status

lint:
	@test -x $(VENV)/bin/ruff || { echo "no $(VENV)/bin/ruff: run 'make setup' first" >&2; exit 1; }
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format:
	@test -x $(VENV)/bin/ruff || { echo "no $(VENV)/bin/ruff: run 'make setup' first" >&2; exit 1; }
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

# The docker-compose.yml demo with its policy and a service VIP; prints what passes.
demo: run
	@scripts/demo.sh up

demo-down:
	@scripts/demo.sh down

# Several hosts on this machine (README: Several hosts): etcd, and NODES network + mount
# namespaces each with its own dockerd and driver in cluster mode; /run/pycilium/cluster/nodeK.env
# per host. DRIVER_ARGS go to every host's driver. cluster-down removes all of it.
cluster: setup
	@scripts/cluster.sh up

cluster-down:
	@scripts/cluster.sh down

# README's CLI and option references are generated from the code (a test checks them).
docs:
	$(VENV)/bin/python -m driver.docs README.md

# The suite starts its own driver instance; this target does not start one. It also writes
# docs/reliability.md from the run (the fault, fuzzing and hostile-packet tests and results).
# Then the end-to-end tests again against Docker 26 with compose v2 (test-26); both runs go
# to the end, and the target fails if either did. tests/multihost is part of the first run:
# its fault tests belong in the same reliability report, and its three-host cluster (its own,
# from scripts/cluster.sh, about two minutes) is made only when one of its tests is
# selected; its hosts run the host's Docker, so test-26 does not repeat it.
test: setup lint
	@status=0; \
	PATH="$(abspath $(VENV))/bin:$$PATH" $(VENV)/bin/pytest -ra tests --durations=25 \
		--reliability-report docs/reliability.md $(PYTEST_ARGS) || status=1; \
	$(MAKE) --no-print-directory test-26 || status=1; \
	exit $$status

# Not on Docker 26: the managed plugin build and install (scripts/build-plugin.sh builds and
# enables it on the host's engine only), and the uninstall test (its instance asks only the
# host's engine for networks).
ENGINE26_IGNORE = --ignore=tests/e2e/test_managed_plugin.py --ignore=tests/e2e/test_uninstall.py

# tests/e2e on Docker 26 + compose v2 (scripts/engine.sh; the first `up` debootstraps its
# rootfs into /var/cache/pycilium), with a driver instance of its own; the engine is brought
# down afterwards whatever the result.
test-26:
	@trap 'scripts/engine.sh down 26' INT TERM; \
	scripts/engine.sh up 26 || { scripts/engine.sh down 26; exit 1; }; \
	PATH="$(abspath $(VENV))/bin:$$PATH" $(VENV)/bin/pytest -ra tests/e2e --engine 26 \
		--durations=10 $(ENGINE26_IGNORE) $(PYTEST_ARGS); \
	status=$$?; scripts/engine.sh down 26 || status=1; exit $$status

# The driver as a Docker managed (v2) plugin, built without a registry (README: Managed plugin).
# PLUGIN=NAME:TAG (default pycilium:latest), PLUGIN_ENABLE=0, PLUGIN_SETTINGS="KEY=VALUE ...".
plugin: setup
	@scripts/build-plugin.sh

# Benchmarks against the driver that 'make run' started: the datapath (bench/run.py --help,
# BENCH_ARGS=...) and the control plane (bench/control.py --help, BENCH_CONTROL_ARGS=...);
# then the cluster at scale with drivers and an etcd of its own (bench/cluster.py --help,
# BENCH_CLUSTER_ARGS=...), and traffic between two simulated hosts through pycilium's VXLAN
# datapath against a plain kernel VXLAN link (bench/crosshost.py --help, BENCH_CROSSHOST_ARGS=...,
# about 3 minutes). Writes bench/results/<UTC date>*.{json,md} and docs/benchmarks/*.png, and
# prints the wall time of the four (the image build, cached after the first run, aside).
bench:
	@scripts/driver.sh status >/dev/null 2>&1 || { echo "the cilium driver is not running: 'make run' first" >&2; exit 1; }
	@command -v iperf3 >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends iperf3 >/dev/null
	@command -v gcc >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends gcc libc6-dev >/dev/null
	@$(VENV)/bin/python -c 'import matplotlib' 2>/dev/null || $(VENV)/bin/python -m pip install -q 'matplotlib>=3.6'
	@DOCKER=$(DOCKER) bench/build-image.sh
	@t0=$$(date +%s); status=0; \
	DOCKER=$(DOCKER) $(VENV)/bin/python bench/run.py $(BENCH_ARGS) && \
	DOCKER=$(DOCKER) $(VENV)/bin/python bench/control.py $(BENCH_CONTROL_ARGS) && \
	$(VENV)/bin/python bench/cluster.py $(BENCH_CLUSTER_ARGS) && \
	$(VENV)/bin/python bench/crosshost.py $(BENCH_CROSSHOST_ARGS) || status=$$?; \
	s=$$(( $$(date +%s) - t0 )); \
	echo "make bench: $$((s / 60)) min $$((s % 60)) s of wall time for the four benchmarks" \
		"(issue 17: under 25 minutes; docs/benchmarks.md has the estimate)"; \
	exit $$status

clean:
	@if scripts/driver.sh status >/dev/null 2>&1; then \
		echo "the driver from 'make run' still runs from $(VENV): 'make stop' first" >&2; exit 1; fi
	rm -rf $(VENV) .pytest_cache .ruff_cache build *.egg-info
	find . -path ./.git -prune -o -type d -name __pycache__ -prune -exec rm -rf {} +
