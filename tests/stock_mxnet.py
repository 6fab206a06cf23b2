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
# The deployment host's whole environment: what setup.cfg's install_requires pins.
STOCK_REQUIREMENTS = ("mxnet==1.9.1", "numpy<1.24")


def venv_python(venv, requirements, purpose):
    """The interpreter of the venv at ``venv`` holding ``requirements``, made on first
    call (a stamp file marks it done); skips the test, naming ``purpose``, if it cannot
    be made."""
    python = os.path.join(venv, "bin", "python")
    stamp = os.path.join(venv, ".installed")
    if not os.path.exists(stamp):
        try:
            subprocess.run([sys.executable, "-m", "venv", "--clear", venv], check=True,
                           timeout=120, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
            subprocess.run([python, "-m", "pip", "install", "-q"] + list(requirements),
                           check=True, timeout=600, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, universal_newlines=True)
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as error:
            pytest.skip("the %s venv could not be made: %s" % (
                purpose, getattr(error, "output", None) or error,))
        open(stamp, "w").close()
    return python


def stock_python():
    """The stock venv's interpreter, made on first call; skips the test if it cannot be."""
    return venv_python(STOCK_VENV, STOCK_REQUIREMENTS, "stock-MXNet")


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

