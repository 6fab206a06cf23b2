# Each target creates the local venv on first use, so a fresh clone needs only Python 3.11.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test bench detect segment clean

$(STAMP): setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip "setuptools>=64" wheel
	$(BIN)/python -m pip install -q -e '.[test,train]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m examples.center_loss --out runs/demo

test: $(STAMP)
	$(BIN)/python -m pytest -q tests

bench: $(STAMP)
	$(BIN)/python -m bench.bench_softmax_ce
	$(BIN)/python -m bench.bench_center
	$(BIN)/python -m bench.bench_symbol
	$(BIN)/python -m bench.bench_faster_rcnn_step --hybridize
	$(BIN)/python -m bench.bench_faster_rcnn_step

detect: $(STAMP)
	$(BIN)/python -m examples.faster_rcnn --out runs/detect

segment: $(STAMP)
	$(BIN)/python -m examples.segmentation --out runs/segment

clean:
	rm -rf $(VENV) .venv-bench runs build *.egg-info
