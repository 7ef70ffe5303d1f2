# The front door. `make up` / `make test` on a fresh machine; ENV picks the environment
# (default: local machines, no cloud account needed).
SHELL := /bin/bash
ENV ?= local
CONFIG ?=
PY := .venv/bin/python
VENV_STAMP := .venv/.installed
# The agent services pin protobuf 7 (livekit rtc), pulumi needs protobuf 5: two venvs.
APY := .venv-agent/bin/python
AGENT_STAMP := .venv-agent/.installed

# Optional stack file for up/down (default Pulumi.$(ENV).yaml, else the built-in local defaults).
CONFIG_ARG = $(if $(CONFIG),--config "$(CONFIG)")
ROOM ?= voice-test
USER_ID ?=

.PHONY: prereqs n8n help up down deploy verify validate preflight shell test test-unit test-e2e test-browser test-n8n test-e2e-long lint bench token deps venv

help:
	@echo "make up [ENV=local|<stack>] [CONFIG=<stack file>]   validate, provision, deploy, verify, summary"
	@echo "make down [ENV=...]           remove it"
	@echo "make deploy|verify|preflight  one step on its own, against .stack/\$$ENV/outputs.json"
	@echo "make deploy ENV=x ROLLING=1    a cluster one node at a time, each out of its load balancer meanwhile"
	@echo "make validate CONFIG=Pulumi.<stack>.yaml   check a stack file, create nothing"
	@echo "make shell [ENV=local]        a shell on a local environment's emulated internet (its names, its CA)"
	@echo "make token [ROOM=voice-test] [USER_ID=..]  mint a LiveKit token"
	@echo "make test                     everything CI runs (lint, unit, e2e; installs n8n for its tests the first time)"
	@echo "make test-browser             the voice page in Chromium against a loopback stack (~3 min)"
	@echo "make test-n8n                 only the tests of the examples/n8n workflows in a real n8n"
	@echo "make test-e2e-long            Redis failover on three nodes, whole chaos suite"
	@echo "make bench                    benchmarks (print figures)"
	@echo "make bench-cluster            a three-node cluster loses each node in turn, then one rolling deploy (~30 min, figures)"

venv: $(VENV_STAMP) $(AGENT_STAMP)
$(VENV_STAMP): requirements.txt
	@test -x $(PY) || python3 -m venv .venv
	@echo "==> installing operator requirements into .venv"
	@$(PY) -m pip install -q --disable-pip-version-check -r requirements.txt
	@touch $@
# The agent venv also runs the agent's unit tests: pytest, and pytest-xdist to run their files side by side.
AGENT_TEST_PINS := pytest==9.2.0 pytest-xdist==3.8.0 execnet==2.1.2
$(AGENT_STAMP): agent/requirements.txt Makefile
	@test -x $(APY) || python3 -m venv .venv-agent
	@echo "==> installing agent requirements into .venv-agent"
	@$(APY) -m pip install -q --disable-pip-version-check -r agent/requirements.txt $(AGENT_TEST_PINS)
	@touch $@

# Host packages the local environment and the tests use (Debian names).
deps:
	@$(if $(DEPS_DONE),true,scripts/install_host_deps.sh)

validate: $(VENV_STAMP)
	@test -n "$(CONFIG)" || { echo "usage: make validate CONFIG=Pulumi.<stack>.yaml" >&2; exit 2; }
	@$(PY) -m infra.validate "$(CONFIG)"

token: $(VENV_STAMP)
	@ENV=$(ENV) scripts/generate_livekit_token.sh "$(ROOM)" $(USER_ID)

# The two venvs and the host packages do not depend on each other: on a fresh machine they are
# installed side by side (pip downloads, apt-get), each printing its own "==>" lines.
prereqs:
	@$(MAKE) --no-print-directory -j3 --output-sync=line $(VENV_STAMP) $(AGENT_STAMP) deps

up: prereqs
	@$(PY) -m infra.up --env $(ENV) $(CONFIG_ARG)

down: $(VENV_STAMP)
	@$(PY) -m infra.down --env $(ENV) $(CONFIG_ARG)

deploy: $(VENV_STAMP)
	@$(PY) -m deploy --env $(ENV)$(if $(ROLLING), --rolling)

verify: $(VENV_STAMP) $(AGENT_STAMP)
	@$(PY) -m infra.verify --env $(ENV)

preflight: $(VENV_STAMP)
	@$(PY) -m infra.preflight --env $(ENV)

shell: $(VENV_STAMP)
	@$(PY) -m infra.local shell --env $(ENV)

# ruff (pinned in requirements.txt) over the whole tree; import cycles are a unit test.
lint: $(VENV_STAMP)
	@$(PY) -m ruff check .

# Two files at a time (pytest-xdist, one file per worker: a module's fixtures stay in one process):
# much of the time is real-time audio through a real livekit-server and waiting on real services.
UNIT_XDIST := -n 2 --dist loadfile
test-unit: $(VENV_STAMP) $(AGENT_STAMP)
	@$(PY) -m pytest tests/unit --ignore-glob='tests/unit/test_agent_*' $(UNIT_XDIST)
	@export LIVEKIT_SERVER_BIN="$$($(PY) -m infra.local livekit-bin)" && $(APY) -m pytest tests/unit/test_agent_*.py $(UNIT_XDIST)

# The voice page in Chromium against a whole stack on loopback (~3 min; not part of make test, whose
# e2e drives the page on a deployed environment: tests/e2e/test_edge.py).
test-browser: $(VENV_STAMP) $(AGENT_STAMP)
	@$(PY) -m pytest tests/unit/test_browser_call.py -m loopback_stack

# The pinned n8n the tests of the shipped workflows run (infra/n8n: n8n 2.41.1 + Node 24 from npm,
# cached under /var/cache/voicestack/n8n, ~1.3 GB; minutes the first time, then nothing). make test
# installs it beside the venvs and host packages; it needs npm (Debian's, from `make deps`, when the
# host has none).
N8N_NEEDS := $(if $(shell command -v npm),,deps)
n8n: $(N8N_NEEDS)
	@echo "==> n8n for the workflow tests (infra/n8n/install.py)"
	@python3 -m infra.n8n.install >/dev/null

# Only the tests of the shipped n8n workflows (make test runs them too): on loopback with the
# voicestack parts (tests/unit/test_agent_n8n.py), then behind a deployed local environment whose
# node reaches n8n on the emulated internet (tests/e2e/test_recording.py, root).
test-n8n: $(VENV_STAMP) $(AGENT_STAMP) deps n8n
	@export LIVEKIT_SERVER_BIN="$$($(PY) -m infra.local livekit-bin)" && $(APY) -m pytest tests/unit/test_agent_n8n.py -m n8n
	@$(PY) -m pytest tests/e2e/test_recording.py -m n8n

# e2e: builds local machines of its own (env names e2e*), needs root. Two streams at once (their
# environments are apart: own names, networks, nftables tables; the shared caches are built once
# under a lock, infra.local.host.cache_lock), of about equal length: the three-node cluster (its
# modules share one cluster: cross-node call, node loss, rolling deploy) then the verify faults,
# and the other single-node modules. Each prints its 15 slowest tests. The long e2e modules (the
# Redis failover on the cluster, the whole chaos suite) run with
# `make test-e2e-long`; make test runs the chaos suite's smoke (tests/e2e/heal.py, in
# test_verify_faults.py). See README, Tests.
E2E_LONG := tests/e2e/cluster/test_redis_failover.py tests/e2e/test_chaos.py
E2E_STREAM := tests/e2e/cluster tests/e2e/test_verify_faults.py
E2E_ARGS := $(foreach m,$(E2E_LONG),--ignore=$(m)) --durations=15
test-e2e: $(VENV_STAMP) deps
	@$(MAKE) --no-print-directory -j2 --output-sync=target test-e2e-cluster test-e2e-single
test-e2e-cluster: $(VENV_STAMP) deps
	@$(PY) -m pytest $(E2E_STREAM) $(E2E_ARGS)
test-e2e-single: $(VENV_STAMP) deps
	@$(PY) -m pytest tests/e2e $(foreach m,$(E2E_STREAM),--ignore=$(m)) $(E2E_ARGS)
test-e2e-long: $(VENV_STAMP) deps
	@$(PY) -m pytest $(E2E_LONG)

test:
	@$(MAKE) --no-print-directory -j4 --output-sync=line $(VENV_STAMP) $(AGENT_STAMP) deps n8n
	@$(MAKE) --no-print-directory DEPS_DONE=1 lint test-unit test-e2e

# Figures, not pass/fail: provisioning, speech backends, deploy/verify/voice-to-voice latency.
bench: $(VENV_STAMP) $(AGENT_STAMP) deps
	@echo "==> bench/bench_local_env.py"; $(PY) bench/bench_local_env.py
	@echo "==> bench/bench_speech.py"; $(APY) bench/bench_speech.py
	@echo "==> bench/bench_stack.py"; $(PY) bench/bench_stack.py
	@echo "==> bench/bench_recovery.py"; $(PY) bench/bench_recovery.py

# A three-node cluster behind its load balancer loses each node in turn (~20 min; figures only).
.PHONY: bench-cluster
bench-cluster: $(VENV_STAMP) $(AGENT_STAMP) deps
	@$(PY) bench/bench_cluster_loss.py --rolling 1

# Capacity (figures, not pass/fail): the load ramp per room shape and the agent's concurrent
# conversations against a deployed environment, then a soak at 70 % of the knee.
.PHONY: bench-load bench-soak
bench-load: $(VENV_STAMP) $(AGENT_STAMP)
	@$(PY) bench/bench_load.py --env $(ENV) $(if $(DURATION),--duration $(DURATION))
bench-soak: $(VENV_STAMP) $(AGENT_STAMP)
	@$(PY) bench/bench_soak.py --env $(ENV) $(if $(MINUTES),--minutes $(MINUTES))
