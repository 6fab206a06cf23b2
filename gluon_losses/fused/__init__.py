"""The fused softmax cross-entropy operator: built from source on first use, cached, loaded.

``softmax_ce.cc`` beside this file is compiled against the installed MXNet's own
``lib_api.h`` and ``lib_api.cc`` into a shared library that ``mx.library.load``
registers as the operator ``gluon_losses_softmax_ce`` (through the C call behind
``mx.library.load``, see :func:`_load`). The build is cached in
``$GLUON_LOSSES_CACHE`` (default ``$XDG_CACHE_HOME/gluon_losses``, else
``~/.cache/gluon_losses``) under a name keyed on the MXNet version, the compiler and
the source, so it happens once per machine and environment.

:func:`available` says whether the operator can run in this process (building and
loading it on first call); :func:`softmax_ce` adds it to an ``mx.nd`` or ``mx.sym``
graph. Nothing is built or loaded when ``GLUON_LOSSES_FUSED=0``.
"""
import ctypes
import hashlib
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import threading

import mxnet as mx
from mxnet.base import _LIB, OpHandle, c_str, check_call, mx_uint
from mxnet.ndarray.register import _make_ndarray_function
from mxnet.symbol.register import _make_symbol_function

__all__ = ["OP_NAME", "available", "unavailable_reason", "softmax_ce", "library_path",
           "load_cached", "log_path_once"]

OP_NAME = "gluon_losses_softmax_ce"
SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "softmax_ce.cc")
# The linker version script: the library exports MXNet's loader entry points only.
EXPORTS = os.path.join(os.path.dirname(SOURCE), "exports.map")
# Portable flags only: the hot loops carry their own AVX2 and AVX-512 clones, picked at
# load time (see GL_MULTIVERSION in the source). -fno-trapping-math lets comparisons
# be vectorised; NaN semantics are kept (no -ffast-math).
CXXFLAGS = ["-O3", "-std=c++17", "-fPIC", "-shared", "-fopenmp", "-fno-trapping-math",
            "-fno-math-errno"]
ENV_SWITCH = "GLUON_LOSSES_FUSED"
# Stored with every fused node, so an exported symbol JSON says what loading it needs.
LIBRARY_NOTE = "gluon_losses: import gluon_losses to register this operator"

_log = logging.getLogger("gluon_losses")
_lock = threading.Lock()
_state = {"loaded": False, "reason": None, "logged": set()}


def _mxnet_dir():
    return os.path.dirname(os.path.abspath(mx.__file__))


def disabled_by_environment():
    """Whether ``GLUON_LOSSES_FUSED`` turns the fused path off (0, false, no, off)."""
    return os.environ.get(ENV_SWITCH, "1").strip().lower() in ("0", "false", "no", "off")


def _cache_dir():
    root = os.environ.get("GLUON_LOSSES_CACHE")
    if not root:
        base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        root = os.path.join(base, "gluon_losses")
    return root


def _compiler():
    """The C++ compiler: ``$CXX`` if set, else ``c++`` or ``g++`` on PATH; None if none."""
    name = os.environ.get("CXX") or shutil.which("c++") or shutil.which("g++")
    if not name:
        return None
    return shutil.which(name) or (name if os.path.isfile(name) else None)


def _mxnet_version_number():
    major, minor, patch = (int(part) for part in mx.__version__.split(".")[:3])
    return major * 10000 + minor * 100 + patch


def library_path(compiler=None):
    """Where the library for this MXNet, compiler and source lives in the cache.

    The compiler enters the key by its resolved path, size and modification time, so
    an upgraded compiler rebuilds without running it to ask for its version.
    """
    compiler = compiler or _compiler()
    key = hashlib.sha256()
    for part in (mx.__version__, sys.platform, " ".join(CXXFLAGS)):
        key.update(part.encode() + b"\0")
    with open(EXPORTS, "rb") as handle:
        key.update(handle.read())
    if compiler:
        real = os.path.realpath(compiler)
        stat = os.stat(real)
        key.update(("%s|%d|%d" % (real, stat.st_size, int(stat.st_mtime))).encode())
    with open(SOURCE, "rb") as handle:
        key.update(handle.read())
    name = "softmax_ce-mxnet%s-%s.so" % (mx.__version__, key.hexdigest()[:16])
    return os.path.join(_cache_dir(), name)


def _build(compiler, target):
    """Compile into a temporary file beside ``target``, then move it in place atomically."""
    mxnet_dir = _mxnet_dir()
    os.makedirs(os.path.dirname(target), exist_ok=True)
    handle, partial = tempfile.mkstemp(suffix=".so", dir=os.path.dirname(target))
    os.close(handle)
    command = [compiler] + CXXFLAGS + [
        "-DGLUON_LOSSES_MXNET_VERSION=%d" % _mxnet_version_number(),
        "-I", os.path.join(mxnet_dir, "include"),
        "-Wl,--version-script=" + EXPORTS,
        SOURCE, os.path.join(mxnet_dir, "src", "lib_api.cc"), "-o", partial]
    try:
        result = subprocess.run(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                universal_newlines=True)
        if result.returncode != 0:
            raise RuntimeError("%s failed (exit %d): %s" % (
                os.path.basename(compiler), result.returncode, result.stdout.strip()[-2000:]))
        os.chmod(partial, 0o755)
        os.replace(partial, target)
    finally:
        if os.path.exists(partial):
            os.remove(partial)


def _load(path):
    """``mx.library.load(path)``, binding Python functions for this one operator only.

    ``mx.library.load`` regenerates the functions of every registered operator, which
    takes about a second; registering the library and binding one name is enough.
    """
    if not os.path.isabs(path):
        raise OSError("the library path must be absolute, got %r" % path)
    check_call(_LIB.MXLoadLib(c_str(path), mx_uint(0)))
    handle = OpHandle()
    check_call(_LIB.NNGetOpHandle(c_str(OP_NAME), ctypes.byref(handle)))
    for package, make_function in ((mx.ndarray, _make_ndarray_function),
                                   (mx.symbol, _make_symbol_function)):
        function = make_function(handle, OP_NAME, OP_NAME)
        for module in (package, package.op):
            setattr(module, OP_NAME, function)
    _state["loaded"] = True


def load_cached():
    """Load an already built library, without compiling; what ``import gluon_losses`` does.

    A graph exported with the fused operator then loads in a fresh process that imported
    the package. Returns whether the operator is registered.
    """
    with _lock:
        if _state["loaded"] or _state["reason"] is not None or disabled_by_environment():
            return _state["loaded"]
        compiler = _compiler()
        try:
            path = library_path(compiler)
            if os.path.exists(path):
                _load(path)
        except (OSError, mx.base.MXNetError) as error:
            _state["reason"] = "the cached library did not load: %s" % error
        return _state["loaded"]


def available():
    """Whether the fused operator runs in this process; builds and loads it on first call."""
    if _state["loaded"]:
        return True
    with _lock:
        if _state["loaded"] or _state["reason"] is not None:
            return _state["loaded"]
        if disabled_by_environment():
            _state["reason"] = "%s=%s" % (ENV_SWITCH, os.environ.get(ENV_SWITCH))
            return False
        compiler = _compiler()
        if compiler is None:
            _state["reason"] = "no C++ compiler (CXX=%r, and no c++ or g++ on PATH)" % (
                os.environ.get("CXX"),)
            return False
        try:
            path = library_path(compiler)
            if not os.path.exists(path):
                _build(compiler, path)
            _load(path)
        except (OSError, RuntimeError, mx.base.MXNetError) as error:
            _state["reason"] = "the operator library could not be built or loaded: %s" % error
        return _state["loaded"]


def unavailable_reason():
    """Why :func:`available` returned False (None while it has not, or when it is True)."""
    return _state["reason"]


def log_path_once(fused, why, unrequested=False):
    """The one log line per process and path saying which softmax CE implementation runs.

    ``unrequested``: the graph runs because the operator could not (no compiler, a failed
    build or load), not because the user or the mode chose it; that is a WARNING naming
    the reason and the fix, since the two paths round differently and differ in speed.
    """
    key = (fused, why)
    if key in _state["logged"]:
        return
    _state["logged"].add(key)
    if fused:
        _log.info("WeightedSoftmaxCELoss runs on the fused operator %s", OP_NAME)
    elif unrequested:
        _log.warning("WeightedSoftmaxCELoss runs on the MXNet-operator graph, not the fused "
                     "operator: %s. To use the fused operator, make a C++ compiler with "
                     "OpenMP available (CXX, or g++ on PATH) and run again; to choose the "
                     "graph and silence this, pass fused=False or set %s=0", why, ENV_SWITCH)
    else:
        _log.info("WeightedSoftmaxCELoss runs on the MXNet-operator graph: %s", why)


def softmax_ce(F, pred, label, class_weight=None, sample_weight=None, axis=-1, ignore_label=-1,
               normalization="valid", label_smoothing=0.0, batch_axis=0, scale=1.0):
    """The fused operator on ``F`` (``mx.nd`` or ``mx.sym``); needs :func:`available`.

    Arguments mean what they mean for :class:`gluon_losses.WeightedSoftmaxCELoss`
    (sparse labels, ``from_logits=False``, ``gamma=0``); ``scale`` is its ``weight``.
    ``pred``, ``label`` and the weights are float32; ``sample_weight`` has the label's
    number of dimensions and broadcasts to it.

    Returns ``(batch,)``, or the label's shape for ``normalization='none'``.
    """
    inputs = [pred, label]
    if class_weight is not None:
        inputs.append(class_weight)
    if sample_weight is not None:
        inputs.append(sample_weight)
    return getattr(F, OP_NAME)(
        *inputs, axis=int(axis), batch_axis=int(batch_axis),
        ignore_label="None" if ignore_label is None else repr(float(ignore_label)),
        normalization=normalization, label_smoothing=repr(float(label_smoothing)),
        scale=repr(float(scale)), class_weight=int(class_weight is not None),
        sample_weight=int(sample_weight is not None), library=LIBRARY_NOTE)


# Registers an already built operator at import, so that an exported graph naming it
# loads in a fresh process after ``import gluon_losses``. Never compiles here.
load_cached()
