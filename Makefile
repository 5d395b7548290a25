# shardcast — the whole set-up on a fresh machine is `make run` or `make test`.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
CACHE := .cache
KAFKA_LIB := $(CACHE)/kafka/lib
PROTOS := $(wildcard protos/shardcast/v1/*.proto)

.PHONY: all deps protos kafka-jars redis node-deps chromium nginx run test unit lint clean compose-up compose-down compose-rehearse \
	bench bench-matrix bench-routing chaos mutation centrifugo bench-peers

all: deps protos

# Python environment: pinned requirements; a .pth puts the repo and generated/ on sys.path.
$(VENV)/.deps: requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -r requirements.txt
	site=$$($(PY) -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])') && \
		printf '%s\n%s\n%s\n' "$(CURDIR)" "$(CURDIR)/generated" "$(CURDIR)/clients/python" \
		> "$$site/shardcast-dev.pth"
	touch $@

deps: $(VENV)/.deps

# Stubs are generated, never committed (see README): regenerated whenever a proto changes.
generated/.stamp: $(PROTOS) $(VENV)/.deps
	rm -rf generated/shardcast
	mkdir -p generated/shardcast/v1
	$(PY) -m grpc_tools.protoc -Iprotos --python_out=generated --pyi_out=generated \
		--grpc_python_out=generated $(PROTOS)
	touch generated/shardcast/__init__.py generated/shardcast/v1/__init__.py $@

protos: generated/.stamp

# Apache Kafka broker jars, fetched once through Maven into an ignored cache.
$(KAFKA_LIB)/.stamp: devstack/kafka/pom.xml
	mvn -q -B -f devstack/kafka/pom.xml dependency:copy-dependencies \
		-DincludeScope=runtime -DoutputDirectory="$(CURDIR)/$(KAFKA_LIB)"
	touch $@

kafka-jars: $(KAFKA_LIB)/.stamp

redis:
	@command -v redis-server >/dev/null || { \
		echo "installing redis-server with apt"; \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get install -y -q redis-server || \
		{ $$SUDO apt-get update -q && $$SUDO apt-get install -y -q redis-server; }; }

# The JS client's dev tools (node's own test runner needs none; playwright-core drives the
# browser test, @asyncapi/specs holds the AsyncAPI schema). The lockfile carries no registry URLs.
NODE_DEPS := clients/js/node_modules/.stamp
$(NODE_DEPS): clients/js/package.json clients/js/package-lock.json
	@command -v npm >/dev/null || { echo "installing nodejs and npm with apt"; \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); $$SUDO apt-get install -y -q nodejs npm; }
	cd clients/js && npm ci --no-audit --no-fund --loglevel=error
	touch $@

node-deps: $(NODE_DEPS)

# Debian's chromium for the demo page's browser test; nginx for make run's front door.
chromium:
	@command -v chromium >/dev/null || { \
		echo "installing chromium with apt"; \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get install -y -q chromium || \
		{ $$SUDO apt-get update -q && $$SUDO apt-get install -y -q chromium; }; }

nginx:
	@command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || { \
		echo "installing nginx-light with apt"; \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get install -y -q nginx-light || \
		{ $$SUDO apt-get update -q && $$SUDO apt-get install -y -q nginx-light; }; }

run: deps protos kafka-jars redis nginx
	$(PY) -m devstack.run

unit: deps protos
	$(PY) -m pytest -q tests/unit

test: deps protos kafka-jars redis node-deps chromium nginx
	$(PY) -m pytest

# Benchmarks (issue 4); see docs/benchmarks.md. BENCH_QUICK=1 for the small profile.
bench: deps protos kafka-jars redis
	ulimit -n $$(ulimit -Hn); $(PY) -m bench.run --reps $${BENCH_REPS:-3}

bench-matrix: deps protos kafka-jars redis
	$(PY) -m pip install -q --disable-pip-version-check -r requirements-bench.txt
	ulimit -n $$(ulimit -Hn); $(PY) -m bench.matrix

bench-routing: deps protos kafka-jars redis
	$(PY) -m bench.routing_cost

# Fault suite on the real stack (issue 8); see docs/reliability.md. CHAOS_REPS repetitions per fault.
chaos: deps protos kafka-jars redis
	ulimit -n $$(ulimit -Hn); $(PY) -m bench.chaos --reps $${CHAOS_REPS:-3}

# The same stack in containers (needs a Docker engine; see compose/docker-compose.yml).
compose-up:
	docker compose -f compose/docker-compose.yml up -d --build

compose-down:
	docker compose -f compose/docker-compose.yml down -v

# Without Docker: compose's commands, nginx and Prometheus configs on loopback (needs nginx, prometheus).
compose-rehearse: deps protos kafka-jars redis
	$(PY) -m devstack.rehearse_compose

lint: deps
	$(VENV)/bin/ruff check .

clean:
	rm -rf generated/shardcast generated/.stamp .run

# Mutation testing of the pure cores against the unit suite (issue 12); see docs/testing.md.
# Fresh each run; the packages are copied to mutants/, everything else is linked in. One worker by default.
MUTATION_JOBS ?= 1
mutation: deps protos
	$(PY) -m pip install -q --disable-pip-version-check -r requirements-mutation.txt
	rm -rf mutants && mkdir mutants
	for f in *; do case $$f in shard|dispatcher|common|tests|mutants|pyproject.toml) ;; \
		*) ln -s ../$$f mutants/$$f ;; esac; done
	$(VENV)/bin/mutmut run --max-children $(MUTATION_JOBS) > mutants/run.log 2>&1 || \
		{ tail -c 4000 mutants/run.log; exit 1; }
	$(VENV)/bin/mutmut results --all true | awk -F': ' '{ m = $$1; sub(/^ +/, "", m); \
		sub(/\.x[_ǁ].*/, "", m); t[m]++; T++; if ($$2 == "killed" || $$2 == "timeout") { k[m]++; K++ } } \
		END { for (m in t) printf "%-22s %4d/%-4d killed %5.1f%%\n", m, k[m], t[m], 100 * k[m] / t[m] | "sort"; \
		close("sort"); printf "%-22s %4d/%-4d killed %5.1f%%\n", "overall", K, T, 100 * K / T; exit (K < 0.9 * T) }'
	@echo "survivors: .venv/bin/mutmut results; a diff: .venv/bin/mutmut show <name>"

# Side by side with Centrifugo and two Python floors, one core each (issue 10); see docs/benchmarks.md
# "Peers". PEERS_REPS repetitions (3), PEERS_QUICK=1 for the reduced profile, PEERS_SYSTEMS to choose.
# Centrifugo comes from its pinned Go module into the ignored cache; without go it is skipped.
CENTRIFUGO_VERSION := v6.9.1
CENTRIFUGO := $(CACHE)/go/bin/centrifugo

centrifugo:
	@if ! command -v go >/dev/null; then echo "go not found: bench-peers will skip Centrifugo"; \
	elif go version -m $(CENTRIFUGO) 2>/dev/null | grep -q "centrifugo/v6[[:space:]]*$(CENTRIFUGO_VERSION)"; then :; \
	else echo "building Centrifugo $(CENTRIFUGO_VERSION) with go install (a few minutes)"; \
		GOBIN="$(CURDIR)/$(CACHE)/go/bin" go install github.com/centrifugal/centrifugo/v6@$(CENTRIFUGO_VERSION) || \
		echo "go install failed: bench-peers will skip Centrifugo"; fi

bench-peers: deps protos kafka-jars redis centrifugo
	$(PY) -m pip install -q --disable-pip-version-check -r requirements-bench.txt
	ulimit -n $$(ulimit -Hn); $(PY) -m bench.peers
