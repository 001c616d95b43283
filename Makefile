# One-command setup: `make demo` and `make test` create .venv when it is missing.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# torch and torchvision are named with pins the local wheel cache holds, so pip never
# reaches for a multi-GB download it could avoid.
TORCH_PINS ?= torch==2.14.1 torchvision==0.29.1

.PHONY: install demo test clean

install: $(STAMP)

$(STAMP): pyproject.toml setup.py cnntrain/data/_jpegcrop.c
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(TORCH_PINS)
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $(STAMP)

demo: install
	rm -rf runs/demo-a runs/demo-b
	$(BIN)/cnntrain fit --recipe lenet5 --out runs/demo-a --seed 0
	$(BIN)/cnntrain fit --recipe lenet5 --out runs/demo-b --seed 1
	$(BIN)/cnntrain eval runs/demo-a/best.pt --topk 5 --json runs/demo-a/eval.json
	$(BIN)/cnntrain ensemble runs/demo-a/best.pt runs/demo-b/best.pt --json runs/ensemble.json

test: install
	$(BIN)/python -m pytest -n auto

clean:
	rm -rf $(VENV) runs .pytest_cache
