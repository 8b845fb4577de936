# Every target creates .venv and installs the project when it is missing.
PY      ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
# CPU/CUDA wheels of torch come from the machine's index; on a GPU machine pick the CUDA build first,
# e.g. `$(BIN)/pip install torch==2.14.1 torchvision==0.29.1 --index-url https://download.pytorch.org/whl/cu128`.
TORCH   ?= torch==2.14.1 torchvision==0.29.1
PYTEST  := $(BIN)/python -m pytest

.PHONY: install demo test test-slow test-slurm bench lint

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet $(TORCH)
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/python main.py fit --config experiments/quickstart.yaml --name quickstart-$$(date +%Y%m%d-%H%M%S)

# two pytest workers (one per core of the reference machine), one torch thread each: the suite is mostly
# Python (CLI parsing, model construction), so two processes beat two threads; any -n / thread count passes
test: $(STAMP)
	OMP_NUM_THREADS=$${OMP_NUM_THREADS:-1} $(PYTEST) -q -n $${PYTEST_WORKERS:-2}

test-slow: $(STAMP)
	$(PYTEST) -q -m slow

# a real single-node SLURM cluster (installs slurm-wlm + munge as root when missing); see README "SLURM"
test-slurm: $(STAMP)
	$(BIN)/python scripts/slurm/run_test.py

bench: $(STAMP)
	$(BIN)/python -m benchmarks

# lint needs only ruff, at the version the dev extras pin: it installs nothing else
LINT_STAMP := $(VENV)/.lint-installed
$(LINT_STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -c "import re; print(re.search(r'\"(ruff[^\"]*)\"', open('pyproject.toml').read()).group(1))" \
		> $(VENV)/lint-requirements.txt
	$(BIN)/python -m pip install --quiet -r $(VENV)/lint-requirements.txt
	touch $(LINT_STAMP)

lint: $(LINT_STAMP)
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .
