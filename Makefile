# Two commands on a fresh Debian machine: `make run` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
PYTEST_ARGS ?=
# Test workers (pytest-xdist): most of the suite's time is spent waiting on processes and Redis (one worker
# alone keeps 0.4-0.5 of a core busy), so four workers finish well before three even on two cores (pytest
# 620 s against 761 s on a 2-core host busy with other work besides; the longest test 49 s against the
# 120 s `timeout`). Each test module runs
# whole on one worker (its module-scoped fixtures start once), handed out in collection order, the longest files
# first (tests/conftest.py LONGEST_FIRST): xdist's own order (most tests first) left the simulation's few long
# tests for last, one worker on them for minutes with the others idle. TEST_WORKERS=0 runs it in this process.
TEST_WORKERS ?= 4
# A worker that dies (a test past pytest's `timeout`, whose thread method ends the worker) is not replaced:
# the run ends red naming the test. Replaced, pytest-xdist 3.8's loadfile scheduling could requeue the dead
# worker's finished files as empty work and leave every worker idle for good (pytest-xdist#1378), so a hung
# test became a run stopped only by CI's own limit.
TEST_WORKER_RESTARTS ?= 0

.PHONY: run test lint lock proto api-docs settings-docs certs cluster sim bootstrap redis deploy-tools bench bench-peak bench-compare soak clean help

help:
	@echo "make run    - set up, start the service with an embedded Redis and the demo estate"
	@echo "make test   - set up, lint, run the whole test suite"
	@echo "make lint   - buf lint, ruff, mypy, import contracts, house rules, the lock files"
	@echo "make lock   - recompile requirements/*.lock (exact versions, hashes) after a dependency change"
	@echo "make proto  - regenerate gRPC stubs from proto/ (client/atp_client/pb)"
	@echo "make api-docs - regenerate the reason table and retry policy in docs/API.md"
	@echo "make settings-docs - regenerate the table of every setting in docs/OPERATIONS.md"
	@echo "make sim SEEDS=100000 - the deterministic simulation over many seeds, then as many with three service processes, then with Redis full, then with load shed, then three processes whose settles fail, then Reserves naming location groups with one process and with three forwarding stream items, then a grace of 30 s (forgetting, sealing, freeing) with one process and three, then facts through the input-stream reader, dead letters and fence settings landing late among them"
	@echo "make certs  - a local CA + server/client certificates under var/certs (TLS, mutual TLS)"
	@echo "make bench  - benchmarks/throughput.py (unary + stream vs the gRPC ceiling)"
	@echo "make bench-peak SCENARIO=flash_sale|holiday_peak|steady DURATION=60 USERS=60 - locust peak run"
	@echo "make bench-compare - benchmarks/compare.py (this service vs Lua/Redis and PostgreSQL peers)"
	@echo "make cluster [PROCESSES=3] [KEEP_DATA=1] - a Redis Cluster on loopback (3 primaries, a replica each) and the service on it"
	@echo "               (PROCESSES > 1: that many leased service processes on ports 50051 up), until Ctrl-C"
	@echo "make soak SECONDS=60 SEED=1 - benchmarks/fault_soak.py (Redis pauses, slow network, kill -9; then the invariants), then on a Redis Cluster, then three service processes sharing it"
	@echo "make bootstrap - the venv, redis-server and openssl, promtool and docker compose (root: installs what is missing)"
	@echo "make clean  - remove the venv, var/ (the embedded Redis's data, certificates) and build outputs"

# Exact versions with hashes from requirements/dev.lock, then the two packages of this tree.
# Debian's python3.11 comes without ensurepip, which `python -m venv` needs: it is in the
# python3.11-venv package (installed here as root; otherwise say what to install).
$(STAMP): pyproject.toml client/pyproject.toml requirements/dev.lock
	@$(PYTHON) -c 'from ensurepip import bootstrap' 2>/dev/null || { \
	  venv_pkg="$$($(PYTHON) -c 'import sys; print("python%d.%d-venv" % sys.version_info[:2])')"; \
	  if [ "$$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing Debian's $$venv_pkg (python -m venv needs ensurepip)"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$$venv_pkg" >/dev/null; \
	  else \
	    echo "$(PYTHON) has no ensurepip (python -m venv needs it): run 'sudo apt-get install $$venv_pkg'"; exit 1; \
	  fi; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet --require-hashes -r requirements/dev.lock
	$(BIN)/pip install --quiet --no-deps -e ./client -e .
	touch $(STAMP)

# Recompile the lock files after a change of dependencies in pyproject.toml (needs PyPI).
LOCK := $(BIN)/uv pip compile --quiet --generate-hashes --python-version 3.11 \
	--no-emit-package atp-client --no-emit-package atp-service --custom-compile-command "make lock"
lock: $(STAMP)
	$(LOCK) requirements/service.in -o requirements/service.lock
	$(LOCK) requirements/dev.in -o requirements/dev.lock

# google/rpc/status.proto, which proto/atp/v1 imports, from the installed googleapis-common-protos:
# buf resolves imports only inside its workspace (buf.yaml), and the registry is not reachable.
PROTO_DEPS := build/proto-deps/google/rpc/status.proto
$(PROTO_DEPS): $(STAMP)
	mkdir -p $(dir $@)
	cp "$$($(BIN)/python -c 'import google.rpc.status_pb2 as m, os; print(os.path.dirname(m.__file__))')/status.proto" $@

bootstrap: $(STAMP) redis deploy-tools

# What running the service needs: the venv and redis-server. promtool and docker compose are for the
# tests of deploy/ alone (`make test`): `make run` does not install them (Debian's prometheus package
# also starts a Prometheus server on a host with systemd).
SERVE_DEPS := $(STAMP) redis

# Debian's redis-server when missing (root only; otherwise say what to install).
redis:
	@command -v redis-server >/dev/null 2>&1 || [ -x /usr/bin/redis-server ] || { \
	  if [ "$$(id -u)" = "0" ]; then \
	    echo "installing Debian's redis-server"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null; \
	  else \
	    echo "redis-server is missing: run 'sudo apt-get install redis-server' (or set ATP_REDIS_URL)"; exit 1; \
	  fi; }
	@command -v openssl >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = "0" ]; then \
	    echo "installing Debian's openssl (make certs, the TLS tests)"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openssl >/dev/null; \
	  else \
	    echo "openssl is missing: run 'sudo apt-get install openssl'"; exit 1; \
	  fi; }

# The tests of deploy/ (tests/deploy): promtool, from Debian's prometheus (on a host with systemd the
# package also starts a Prometheus server: `systemctl disable --now prometheus` stops it), and
# Debian's docker-compose unless the `docker compose` plugin is there. Root only; otherwise say what
# to install.
deploy-tools:
	@command -v promtool >/dev/null 2>&1 || [ -x /usr/bin/promtool ] || { \
	  if [ "$$(id -u)" = "0" ]; then \
	    echo "installing Debian's prometheus (promtool, for tests/deploy)"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null; \
	  else \
	    echo "promtool is missing: run 'sudo apt-get install prometheus'"; exit 1; \
	  fi; }
	@docker compose version >/dev/null 2>&1 || command -v docker-compose >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = "0" ]; then \
	    echo "installing Debian's docker-compose (for tests/deploy)"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends docker-compose >/dev/null; \
	  else \
	    echo "docker compose is missing: run 'sudo apt-get install docker-compose' (or install the docker compose plugin)"; exit 1; \
	  fi; }

SEEDS ?= 1000
PROCESSES ?= 1
# Its data directory (every node's AOF) is removed when it exits, Ctrl-C included, unless KEEP_DATA=1. The shell
# traps INT and TERM so that it outlives the script's own stop (Ctrl-C reaches both), then runs its EXIT trap.
KEEP_DATA ?=
cluster: $(SERVE_DEPS)
	@data="$$(mktemp -d /tmp/atp-cluster.XXXXXX)" || exit 1; \
	if [ -n "$(KEEP_DATA)" ]; then trap 'echo "make cluster: data kept: $$data"' EXIT; \
	else trap 'rm -rf "$$data"' EXIT; fi; \
	trap 'exit 130' INT TERM; \
	echo "$(BIN)/python -m atp_service.storage.embedded_cluster --data-dir $$data --serve --processes $(PROCESSES)"; \
	$(BIN)/python -m atp_service.storage.embedded_cluster --data-dir "$$data" --serve --processes $(PROCESSES)

sim: $(STAMP)
	$(BIN)/python -m tests.sim --seeds $(SEEDS)
	$(BIN)/python -m tests.sim --seeds $(SEEDS) --processes 3 --late-across-steps
	$(BIN)/python -m tests.sim --seeds $(SEEDS) --redis-full
	$(BIN)/python -m tests.sim --seeds $(SEEDS) --shed
	$(BIN)/python -m tests.sim --seeds $(SEEDS) --processes 3 --settle-faults
	$(BIN)/python -m tests.sim --seeds $(SEEDS) --groups
	$(BIN)/python -m tests.sim --seeds $(SEEDS) --processes 3 --forward-streams --groups
	$(BIN)/python -m tests.sim --seeds $(SEEDS) --short-grace --fact-times
	$(BIN)/python -m tests.sim --seeds $(SEEDS) --processes 3 --short-grace --settle-faults
	$(BIN)/python -m tests.sim --seeds $(SEEDS) --input-streams --late-letters
	$(BIN)/python -m tests.sim --seeds $(SEEDS) --input-streams --processes 3 --late-letters

certs: $(STAMP)
	$(BIN)/python -m atp_service.app.certs var/certs

proto: $(STAMP)
	$(BIN)/python proto/generate.py

# The generated parts of docs/API.md: the table of refusal reasons, the published retry policy.
api-docs: $(STAMP)
	$(BIN)/python -m atp_service.edge.api_doc docs/API.md

# The table of every setting in docs/OPERATIONS.md (variable, flag, default, first sentence of its docstring).
settings-docs: $(STAMP)
	$(BIN)/python -m atp_service.app.settings_doc docs/OPERATIONS.md

run: $(SERVE_DEPS)
	$(BIN)/atp-service serve

lint: $(STAMP) $(PROTO_DEPS)
	$(BIN)/buf lint
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/lint-imports
	$(BIN)/python .ci/contracts.py
	$(BIN)/python .ci/lock_check.py

# The whole suite (no PYTEST_ARGS) must also have run every test it has, none skipped (.ci/test_count.py).
TEST_REPORT := build/test-report.xml
# The tree's modules compiled once before the run (compileall writes bytecode whatever PYTHONDONTWRITEBYTECODE
# says; Python reads it either way): the suite starts hundreds of Python processes (atp-service, atpctl,
# atp-publisher, the benchmark scripts, one under valgrind), and where PYTHONDONTWRITEBYTECODE is set each one
# compiled every module of the tree it imported again: ~0.2 s of CPU an atp-service start, 16-20 % of the CPU of
# test_cli.py and test_peak_smoke.py. Where bytecode is written anyway, this only does the first import's work.
COMPILED := atp_service client/atp_client reservation publishers benchmarks proto tests
test: bootstrap lint
	@mkdir -p build
	$(BIN)/python -m compileall -q $(COMPILED) >/dev/null
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder --max-worker-restart=$(TEST_WORKER_RESTARTS) --durations=25 --junitxml=$(TEST_REPORT) $(PYTEST_ARGS)
	$(if $(strip $(PYTEST_ARGS)),,$(BIN)/python .ci/test_count.py $(TEST_REPORT))

bench: $(SERVE_DEPS)
	$(BIN)/python benchmarks/throughput.py

SCENARIO ?= holiday_peak
DURATION ?= 60
USERS ?= 60
bench-peak: $(SERVE_DEPS)
	$(BIN)/python benchmarks/peak_run.py --scenario $(SCENARIO) --duration $(DURATION) --users $(USERS)

bench-compare: $(SERVE_DEPS)
	$(BIN)/python benchmarks/compare.py

SECONDS ?= 60
SEED ?= 1
soak: $(SERVE_DEPS)
	$(BIN)/python benchmarks/fault_soak.py --seconds $(SECONDS) --seed $(SEED)
	$(BIN)/python benchmarks/fault_soak.py --seconds $(SECONDS) --seed $(SEED) --cluster
	$(BIN)/python benchmarks/process_soak.py --seconds $(SECONDS) --seed $(SEED)

clean:
	rm -rf $(VENV) var build *.egg-info .pytest_cache .mypy_cache .ruff_cache
