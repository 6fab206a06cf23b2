# Each target creates the local venv on first use, so a fresh clone needs only Python 3.11.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test bench detect segment clean

# The install builds the fused operator (setup.py), so its sources are prerequisites too.
$(STAMP): setup.cfg setup.py pyproject.toml gluon_losses/fused/softmax_ce.cc gluon_losses/fused/exports.map gluon_losses/fused/build.py
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip "setuptools>=64" wheel
	$(BIN)/python -m pip install -q -e '.[test,train]'
	touch $(STAMP)

# A venv with only what the package's install needs (mxnet, numpy): the deployment host
# that the export tests load graphs in (tests/stock_mxnet.py makes it on first use too).
.venv-stock/.installed:
	$(PYTHON) -m venv .venv-stock
	.venv-stock/bin/python -m pip install -q "mxnet==1.9.1" "numpy<1.24"
	touch $@

demo: $(STAMP)
	$(BIN)/python -m examples.center_loss --out runs/demo

# The whole suite on the default path (the fused operator the install built), then the
# loss tests again with the fused path switched off, as a machine without it runs them.
test: $(STAMP)
	GLUON_LOSSES_FUSED=0 $(BIN)/python -m pytest -q -p no:cacheprovider tests/test_softmax_ce.py tests/test_reliability.py tests/test_deploy.py tests/test_center_backward.py
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
	rm -rf $(VENV) .venv-bench .venv-stock runs build *.egg-info
