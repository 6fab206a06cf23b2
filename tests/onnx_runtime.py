"""A Python with ONNX Runtime and NumPy only, never MXNet: the ONNX deployment host.

onnxruntime needs numpy>=1.24, which MXNet 1.9.1 does not import under, so it lives in a
venv of its own, ``.venv-onnx`` at the repository root (ignored by git), made on first
use. Where it cannot be made (no registry), the tests that need it skip with the reason.
"""
import os
import subprocess

from stock_mxnet import venv_python

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ONNX_VENV = os.path.join(ROOT, ".venv-onnx")

# Runs a model on inputs.npz's arrays (named as the model's inputs); saves outputs.npz.
RUN_MODEL = """
import sys
import numpy as np
import onnxruntime
session = onnxruntime.InferenceSession(sys.argv[1], providers=["CPUExecutionProvider"])
inputs = dict(np.load(sys.argv[2]))
outputs = session.run(None, inputs)
np.savez(sys.argv[3], *outputs)
"""


def onnx_python():
    """The ONNX venv's interpreter, made on first call; skips the test if it cannot be."""
    return venv_python(ONNX_VENV, ["onnxruntime"], "onnxruntime")


def run_onnx_model(model_path, inputs_path, outputs_path, timeout=120):
    """Run the model in the ONNX venv; returns the CompletedProcess (text output)."""
    return subprocess.run([onnx_python(), "-I", "-c", RUN_MODEL, model_path, inputs_path,
                           outputs_path], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          universal_newlines=True, timeout=timeout)
