# offload: `make serve` and `make test` set everything up themselves (see README.md).
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
REPO   ?= model_repository
# Extra flags for `offload serve`, e.g. make serve SERVE_ARGS="--grpc-port 0 -m jet_tagger"
SERVE_ARGS ?=
# The 25 slowest tests are listed at the end of every run, to keep the fast lane fast.
PYTEST_ARGS ?= --durations=25

# `make models QUICK=1`: a smoke run into build/models-quick/, leaving model_repository/ alone
QUICK ?=

.PHONY: help venv serve test test-fast lint repo-check bench perf load models data deploy undeploy clean

help:
	@echo "make serve   start a real Triton server on this machine with $(REPO)/"
	@echo "make test    lint, check the model repository and run the test suite"
	@echo "make test-fast  the same without the tests marked slow (perf, load, soak, training, restarts)"
	@echo "make bench   served vs in-process throughput per CPU backend (perf/)"
	@echo "make models  regenerate data, train and export the models (QUICK=1: smoke run)"
	@echo "make data    the sample PFNano-like ROOT file data/pfnano_sample.root (offload apply)"
	@echo "make perf    sweeps, as-a-service and dynamic-batching figures (QUICK=1: smoke run)"
	@echo "make load    locust, headless, on the embedded server (LOAD_HOST=host:port: a running one)"
	@echo "make deploy  deploy on the current kubectl context (OVERLAY=gpu|cpu|dev, NAMESPACE=..., DRY_RUN=1: plan only)"
	@echo "make undeploy  remove that deployment (NAMESPACE=...)"
	@echo "make clean   remove the virtual environment and caches"

# One virtual environment; a stamp per extra records what it holds. Stamps are newer than
# pyproject.toml once installed, so a second run installs nothing.
comma := ,
$(VENV)/.stamp-%: pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@echo "installing offload[$*] into $(VENV) (once; later runs skip this)"
	$(PY) -m pip install --quiet --disable-pip-version-check -e ".[$*]"
	@for extra in $(subst $(comma), ,$*); do touch $(VENV)/.stamp-$$extra; done
	@touch $@

venv: $(VENV)/.stamp-server,train,dev

serve: $(VENV)/.stamp-server
	$(VENV)/bin/offload serve --model-repository $(REPO) $(SERVE_ARGS)

lint: $(VENV)/.stamp-server,train,dev
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

repo-check: $(VENV)/.stamp-server
	$(VENV)/bin/offload repo check $(REPO)

test: $(VENV)/.stamp-server,train,dev lint repo-check
	$(PY) -m pytest $(PYTEST_ARGS)

# The inner loop: every test not marked slow. CI runs `make test`, all of them.
test-fast: $(VENV)/.stamp-server,train,dev lint repo-check
	$(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

models: $(VENV)/.stamp-server,train,dev
	$(VENV)/bin/offload train $(if $(QUICK),--quick)

# The sample PFNano-like ROOT file from the project's own Pythia + detector + FastJet chain
# (2000 events, ~1 min on one core; data/ is gitignored). Made once; delete it to remake.
SAMPLE_EVENTS ?= 2000
data: data/pfnano_sample.root

data/pfnano_sample.root: | $(VENV)/.stamp-server,train,dev
	$(PY) -m offload_training.jets.pfnano_sample --events $(SAMPLE_EVENTS) --output $@

perf: $(VENV)/.stamp-server,train,dev
	$(PY) -m offload_perf.run_all $(if $(QUICK),--quick)

# `make load LOAD_HOST=gpu1:8001 LOAD_ARGS="--users 64 --run-time 5m --shape spike"`
LOAD_HOST ?=
LOAD_ARGS ?=
load: $(VENV)/.stamp-server,train,dev
	$(PY) -m offload_perf.load $(if $(LOAD_HOST),--host $(LOAD_HOST)) $(LOAD_ARGS)

bench: $(VENV)/.stamp-server,train,dev
	$(PY) perf/bench_backends.py

# Kubernetes (k8s/README.md): render the overlay, apply it server-side, upload $(REPO).
OVERLAY   ?= gpu
NAMESPACE ?= offload
DRY_RUN   ?=
deploy: $(VENV)/.stamp-k8s
	$(VENV)/bin/offload deploy --overlay $(OVERLAY) --namespace $(NAMESPACE) --repository $(REPO) $(if $(DRY_RUN),--dry-run)

undeploy: $(VENV)/.stamp-k8s
	$(VENV)/bin/offload undeploy --namespace $(NAMESPACE)

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache build *.egg-info client/*.egg-info
