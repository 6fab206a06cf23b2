# Each target creates the local venv on first use, so a fresh clone needs only Python 3.11.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test bench bench-torch detect segment clean horovod

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

# Horovod with MXNet and gloo, built from the registry's sdist into the venv (about 3
# minutes on 2 cores, once per venv; pip caches the wheel). cmake 4 refuses gloo's
# CMakeLists. Each step first writes its name to .venv/.horovod-failed, so a failed
# install leaves the step there and tests/test_horovod*.py skip naming it.
HOROVOD_VERSION := 0.28.1
HOROVOD_FLAGS := HOROVOD_WITH_MXNET=1 HOROVOD_WITH_GLOO=1 HOROVOD_WITHOUT_MPI=1 \
	HOROVOD_WITHOUT_TENSORFLOW=1 HOROVOD_WITHOUT_PYTORCH=1
HOROVOD_FAILED := $(VENV)/.horovod-failed

horovod: $(VENV)/.horovod

$(VENV)/.horovod: $(STAMP)
	@echo "installing cmake<4" > $(HOROVOD_FAILED)
	$(BIN)/python -m pip install -q "cmake>=3.13,<4"
	@echo "building horovod==$(HOROVOD_VERSION) (log: $(VENV)/horovod-build.log)" > $(HOROVOD_FAILED)
	PATH="$(abspath $(BIN)):$$PATH" $(HOROVOD_FLAGS) $(BIN)/python -m pip install \
		--no-build-isolation "horovod==$(HOROVOD_VERSION)" > $(VENV)/horovod-build.log 2>&1
	@echo "importing horovod.mxnet (built with gloo) after the build" > $(HOROVOD_FAILED)
	$(BIN)/python -c "import horovod.mxnet as hvd; assert hvd.gloo_built()"
	@rm -f $(HOROVOD_FAILED)
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
	$(BIN)/python -m bench.bench_call_path
	$(BIN)/python -m bench.bench_faster_rcnn_step --hybridize
	$(BIN)/python -m bench.bench_faster_rcnn_step

# PyTorch for bench/bench_vs_torch.py, in a venv of its own: gluoncv 0.10.5 (in .venv)
# refuses to import next to torch 2, and the PyTorch worker must never share a process
# with MXNet. TORCH_PIP_ARGS can point pip at PyTorch's CPU-only wheel index (e.g.
# TORCH_PIP_ARGS="--index-url URL"); left empty, torch comes from the default registry.
TORCH_PIP_ARGS ?=
.venv-bench/.installed:
	$(PYTHON) -m venv .venv-bench
	.venv-bench/bin/python -m pip install -q "numpy<1.24" torch $(TORCH_PIP_ARGS)
	touch $@

bench-torch: $(STAMP) .venv-bench/.installed
	$(BIN)/python -m bench.bench_vs_torch --torch-python .venv-bench/bin/python

detect: $(STAMP)
	$(BIN)/python -m examples.faster_rcnn --out runs/detect

segment: $(STAMP)
	$(BIN)/python -m examples.segmentation --out runs/segment

clean:
	rm -rf $(VENV) .venv-bench .venv-stock runs build *.egg-info
