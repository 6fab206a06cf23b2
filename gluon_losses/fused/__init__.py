"""The fused softmax cross-entropy operator: built when the package is installed, loaded here.

``softmax_ce.cc`` beside this file is compiled at install time (``setup.py`` runs
:func:`gluon_losses.fused.build.build`) against the installed MXNet's own ``lib_api.h``
and ``lib_api.cc`` into a library that ``mx.library.load`` registers as the operator
``gluon_losses_softmax_ce`` (through the C call behind ``mx.library.load``, see
:func:`_load`). Nothing compiles at run time: where the install had no compiler,
``python -m gluon_losses.fused build`` builds it later.

:func:`available` says whether the operator runs in this process; :func:`softmax_ce`
adds it to an ``mx.nd`` or ``mx.sym`` graph. Nothing is loaded when
``GLUON_LOSSES_FUSED=0``.
"""
import json
import logging
import os
import threading

import mxnet as mx
from . import build as _build
from ..mxnet_internals import load_operator_library

__all__ = ["OP_NAME", "available", "unavailable_reason", "softmax_ce", "library_path",
           "load_cached", "log_path_once", "BUILD_COMMAND", "gradient_input", "composed_input", "is_leaf"]

OP_NAME = "gluon_losses_softmax_ce"
ENV_SWITCH = "GLUON_LOSSES_FUSED"
# A library file to load instead of the installed one (a deployment host's copy).
ENV_LIBRARY = "GLUON_LOSSES_LIBRARY"
BUILD_COMMAND = "python -m gluon_losses.fused build"
# Stored with every fused node, so an exported symbol JSON says what loading it needs.
LIBRARY_NOTE = ("gluon_losses: import gluon_losses, or mx.library.load the file "
                "gluon_losses.fused.library_path() names, to register this operator")

_log = logging.getLogger("gluon_losses")
_lock = threading.Lock()
_state = {"loaded": False, "reason": None, "logged": set()}


def disabled_by_environment():
    """Whether ``GLUON_LOSSES_FUSED`` turns the fused path off (0, false, no, off)."""
    return os.environ.get(ENV_SWITCH, "1").strip().lower() in ("0", "false", "no", "off")


def user_build_dir():
    """Where ``python -m gluon_losses.fused build`` writes when the package's folder is
    read-only: ``$XDG_CACHE_HOME/gluon_losses``, else ``~/.cache/gluon_losses``."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "gluon_losses")


def library_path():
    """The library this process loads: ``$GLUON_LOSSES_LIBRARY`` if set; else the one the
    install built beside this file; else one ``python -m gluon_losses.fused build`` wrote
    to :func:`user_build_dir`; of those, the first that :func:`library_problem` accepts.
    Returns the package's own path when none exists."""
    given = os.environ.get(ENV_LIBRARY)
    if given:
        return os.path.abspath(given)
    candidates = [os.path.join(folder, _build.LIBRARY_NAME)
                  for folder in (_build.HERE, user_build_dir())]
    existing = [path for path in candidates if os.path.exists(path)]
    usable = [path for path in existing if library_problem(path) is None]
    return (usable or existing or candidates)[0]


def library_problem(path):
    """Why the library at ``path`` must not be loaded into this process, or None.

    Its stamp must name this MXNet's version (lib_api's structures change between
    releases) and, where this package's source is present, the hash of that source: a
    library built from other code would compute another loss.
    """
    fix = "build it with: %s" % BUILD_COMMAND
    if not os.path.exists(path):
        return ("no fused operator library at %s (it is built when the package is "
                "installed, which needs a C++ compiler with OpenMP); %s" % (path, fix))
    try:
        with open(_build.stamp_path(path)) as handle:
            stamp = json.load(handle)
    except (OSError, ValueError):
        return "the library %s has no readable build stamp %s; %s" % (
            path, _build.stamp_path(path), fix)
    if stamp.get("mxnet") != mx.__version__:
        return ("the library %s was built against MXNet %s, but this is MXNet %s; %s"
                % (path, stamp.get("mxnet"), mx.__version__, fix))
    if os.path.exists(_build.SOURCE) and stamp.get("source") != _build.source_hash():
        return ("the library %s was built from other sources than this package's "
                "softmax_ce.cc; %s" % (path, fix))
    return None


def _load(path):
    """``mx.library.load(path)``, binding Python functions for this one operator only.

    ``mx.library.load`` regenerates the functions of every registered operator, which
    takes about a second; registering the library and binding one name is enough.
    """
    if not os.path.isabs(path):
        raise OSError("the library path must be absolute, got %r" % path)
    load_operator_library(path, OP_NAME)
    _state["loaded"] = True


def available():
    """Whether the fused operator runs in this process; loads the library on first call."""
    if _state["loaded"]:
        return True
    with _lock:
        if _state["loaded"] or _state["reason"] is not None:
            return _state["loaded"]
        if disabled_by_environment():
            _state["reason"] = "%s=%s" % (ENV_SWITCH, os.environ.get(ENV_SWITCH))
            return False
        path = library_path()
        _state["reason"] = library_problem(path)
        if _state["reason"] is None:
            try:
                _load(path)
            except (OSError, mx.base.MXNetError) as error:
                _state["reason"] = "the library %s did not load: %s; %s" % (
                    path, error, "rebuild it with: %s" % BUILD_COMMAND)
        return _state["loaded"]


# Loading at import registers the operator, so a graph exported with it loads in a
# fresh process after ``import gluon_losses``; it never compiles.
load_cached = available


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
                     "operator: %s. To choose the graph and silence this, pass fused=False "
                     "or set %s=0", why, ENV_SWITCH)
    else:
        _log.info("WeightedSoftmaxCELoss runs on the MXNet-operator graph: %s", why)


def paths_taken():
    """Which implementations WeightedSoftmaxCELoss has run in this process, as sorted
    strings (``'fused'``, or ``'graph: <why>'``); examples store it with their results,
    since the two paths round differently."""
    return sorted("fused" if fused else "graph: %s" % why for fused, why in _state["logged"])


# Why the two functions below exist: MXNet 1.9's library-operator interface hands the
# operator its arrays but not the write request of each output (CustomFComputeDispatcher
# in src/c_api/c_api.cc drops `req`; lib_api.h's MXTensor has no field for it), so the
# fused backward cannot tell kAddTo from kWriteTo and always writes. Where its gradient
# output is the buffer of a leaf with grad_req='add' (an NDArray given attach_grad, a
# Parameter's data fed straight in, the input of a hybridized block), MXNet asks it to
# add. Both functions put one of MXNet's own operators between ``pred`` and the fused
# node there: that operator's backward honours the request, and the fused backward
# writes into a buffer of its own. (A statically allocated graph in which eight or more
# fused losses read the same logits still loses gradients, with or without them: see
# docs/fused.md, Limits.)


def gradient_input(pred):
    """``pred`` as an ``mx.nd`` call of the fused operator should take it.

    While autograd records and ``pred`` is a leaf (it has a gradient buffer), a recorded
    reshape to its own shape: a view, so the forward copies nothing, whose backward is
    MXNet's copy, which adds for grad_req='add' and writes for 'write'. Anything else
    (the usual case, a network's output) is returned as it is, at no cost.
    """
    return pred.reshape(pred.shape) if is_leaf(pred) else pred


def is_leaf(pred):
    """Whether autograd records and ``pred`` is a leaf (it has a gradient buffer)."""
    return mx.autograd.is_recording() and pred.grad is not None


def composed_input(pred):
    """``pred`` as the fused node should take it in a graph composed on symbols (the
    loss inside another block's graph, or on the caller's symbols), where nothing says
    whether the entry will be a leaf with grad_req='add'.

    ``identity``: MXNet marks it in place (FInplaceIdentity), so where ``pred`` is
    another node's output with no other consumer the planner gives both one buffer and
    nothing is copied; on a graph input it copies ``pred`` in the forward and its
    gradient in the backward, with the request MXNet gives it.
    """
    return mx.sym.identity(pred)


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


available()
