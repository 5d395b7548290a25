# shardcast — the whole set-up on a fresh machine is `make run` or `make test`.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
CACHE := .cache
KAFKA_LIB := $(CACHE)/kafka/lib
PROTOS := $(wildcard protos/shardcast/v1/*.proto)

.PHONY: all deps protos kafka-jars redis run test unit lint clean compose-up compose-down compose-rehearse \
	bench bench-matrix bench-routing chaos

all: deps protos

# Python environment: pinned requirements; a .pth puts the repo and generated/ on sys.path.
$(VENV)/.deps: requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -r requirements.txt
	site=$$($(PY) -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])') && \
		printf '%s\n%s\n' "$(CURDIR)" "$(CURDIR)/generated" > "$$site/shardcast-dev.pth"
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

run: deps protos kafka-jars redis
	$(PY) -m devstack.run

unit: deps protos
	$(PY) -m pytest -q tests/unit

test: deps protos kafka-jars redis
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
