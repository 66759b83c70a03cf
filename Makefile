# Set-up and entry points. `make sample` and `make test` each install everything first.
VENV ?= .venv
PY := $(VENV)/bin/python
# The CPU wheel of PyTorch; on a GPU machine: make sample TORCH=torch==2.13.0 --index-url ...
TORCH ?= torch==2.13.0

.PHONY: setup browser postgres slurm sample test test-slow

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	python3.11 -m venv $(VENV)
	$(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -e '.[test]'
	touch $@

# Chromium prints the report's PDF and opens the report in the tests. It is a system package, so it is
# installed only when this runs as root with apt-get (as CI does); otherwise this says how.
browser:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		export DEBIAN_FRONTEND=noninteractive; \
		apt-get install -y -q chromium >/dev/null || { apt-get update -q && apt-get install -y -q chromium >/dev/null; }; \
	else \
		echo "Chromium not found: the report's PDF and browser tests need it (sudo apt-get install -y chromium)"; \
	fi

# PostgreSQL backs the MLflow tracking server in the slow tests (tests/tasks/track/test_mlflow_server.py),
# which start it themselves on a loopback port; installed like Chromium, only as root with apt-get.
postgres:
	@command -v initdb >/dev/null 2>&1 || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		export DEBIAN_FRONTEND=noninteractive; \
		apt-get install -y -q postgresql >/dev/null || { apt-get update -q && apt-get install -y -q postgresql >/dev/null; }; \
	else \
		echo "PostgreSQL not found: the tracking-server tests need it (sudo apt-get install -y postgresql)"; \
	fi

# Slurm (slurm-wlm, munge) for the Slurm executor's tests (tests/tasks/cluster), which start its daemons
# themselves in a loopback-only network namespace (iproute2's ip, util-linux's nsenter); root only.
slurm:
	@command -v sbatch >/dev/null 2>&1 || \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		export DEBIAN_FRONTEND=noninteractive; \
		apt-get install -y -q slurm-wlm munge iproute2 >/dev/null || { apt-get update -q && apt-get install -y -q slurm-wlm munge iproute2 >/dev/null; }; \
	else \
		echo "Slurm not found: the Slurm executor's tests need it (sudo apt-get install -y slurm-wlm munge)"; \
	fi

sample: setup
	$(VENV)/bin/scaling run deployments/sweeps/sample.yaml

# One pytest-xdist worker per CPU (at most 4), a test file to each, so a file's shared fixtures are made once.
XDIST := -n auto --maxprocesses 4 --dist loadfile

test: setup browser
	$(PY) -m pytest $(XDIST)

test-slow: setup postgres slurm
	$(PY) -m pytest -m slow $(XDIST)
