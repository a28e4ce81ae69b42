# Two commands on a fresh machine (each installs what it needs):
#   make quickstart   a real, small SimSiam pretrain + linear probe on this machine
#   make test         the whole test suite (real paddle, real Slurm, real Kubernetes control plane)

VENV      ?= .venv
PY        := $(VENV)/bin/python
# containerd ... gcc: the Kubernetes test cluster's real nodes and the image they run (debootstrap,
# buildah; gcc builds the pods' pause binary).
APT_PKGS  := dataset-fashion-mnist slurm-wlm munge shellcheck openssl iproute2 \
             containerd runc containernetworking-plugins buildah debootstrap gcc libc6-dev
SUDO      := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: setup system-packages quickstart test test-fast lint clusters

system-packages:
	@missing=""; for p in $(APT_PKGS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $$missing; \
	fi

# The quick start needs only the CPU trainer; the tests also need torch (weight interchange),
# the kubernetes client and the linters.
$(VENV)/.installed-run: pyproject.toml
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e ".[cpu]"
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed-run
	$(VENV)/bin/pip install -q -e ".[cpu,kubernetes,test,torch]"
	touch $@

setup: system-packages $(VENV)/.installed-run

quickstart: setup
	$(VENV)/bin/simsiam-job quickstart

# The Go builds and, as root (debootstrap, buildah), the trainer image for the real Kubernetes
# nodes, side by side (one mostly compiles, the other mostly downloads); all cached under
# ~/.cache/simsiam-job.
clusters: system-packages $(VENV)/.installed-test
	@image=; if [ "$$(id -u)" = 0 ]; then bash tests/cluster/image.sh build >/dev/null & image=$$!; fi; \
	bash tests/cluster/k8s.sh build; rc=$$?; \
	if [ -n "$$image" ]; then wait $$image || rc=1; fi; exit $$rc

# ruff on every tree, mypy strict on the typed contract, config and job spec.
LINT_PATHS ?= simsiam_job trainer tests bench
# Every selected rule is enforced (pyproject.toml lists the few files still waiting to be wrapped);
# RUFF_ARGS passes extra arguments, e.g. make lint RUFF_ARGS=--statistics.
RUFF_ARGS ?=

lint: $(VENV)/.installed-test
	$(VENV)/bin/ruff check $(RUFF_ARGS) $(LINT_PATHS)
	$(VENV)/bin/mypy

# The inner loop: every test that needs no cluster and is not slow (no training run, no ResNet-50),
# on every core (pytest-xdist): most of these tests wait on subprocesses, so workers overlap well.
TEST_WORKERS ?= auto
test-fast: lint
	$(PY) -m pytest -q -n $(TEST_WORKERS) -m "not cluster and not slow" --durations=30 tests

test: lint clusters
	SIMSIAM_REQUIRE_ALL=1 $(PY) -m pytest -ra --timeout=900 tests
