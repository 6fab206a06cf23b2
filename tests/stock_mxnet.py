"""A Python that has only ``mxnet==1.9.1`` and ``numpy<1.24``, never this package: the
deployment host of the export tests.

The venv lives in ``.venv-stock`` at the repository root (ignored by git) and is made
once, on first use; ``make .venv-stock/.installed`` makes it ahead of time. Tests that
need it call :func:`run_stock_python`; where it cannot be made (no registry), they skip
with the reason.
"""
import os
import subprocess
import sys
import textwrap

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STOCK_VENV = os.path.join(ROOT, ".venv-stock")
STOCK_PYTHON = os.path.join(STOCK_VENV, "bin", "python")
STAMP = os.path.join(STOCK_VENV, ".installed")
# The deployment host's whole environment: what setup.cfg's install_requires pins.
STOCK_REQUIREMENTS = ("mxnet==1.9.1", "numpy<1.24")


def stock_python():
    """The stock venv's interpreter, made on first call; skips the test if it cannot be."""
    if not os.path.exists(STAMP):
        try:
            subprocess.run([sys.executable, "-m", "venv", "--clear", STOCK_VENV], check=True,
                           timeout=120, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
            subprocess.run([STOCK_PYTHON, "-m", "pip", "install", "-q"] + list(STOCK_REQUIREMENTS),
                           check=True, timeout=600, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, universal_newlines=True)
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as error:
            pytest.skip("the stock-MXNet venv could not be made: %s" % (
                getattr(error, "output", None) or error,))
        open(STAMP, "w").close()
    return STOCK_PYTHON


def run_stock_python(code, cwd, timeout=120, **env):
    """Run ``code`` (dedented) in the stock venv from ``cwd``; returns the CompletedProcess
    with stdout and stderr as text. The package's source tree is not on its path: it
    runs with ``-I`` (isolated: no user site, no PYTHONPATH, no current directory)."""
    python = stock_python()
    environment = {key: value for key, value in dict(os.environ, **env).items()
                   if value is not None}
    return subprocess.run([python, "-I", "-c", textwrap.dedent(code)], cwd=cwd,
                          env=environment, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          universal_newlines=True, timeout=timeout)

