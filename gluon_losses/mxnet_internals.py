"""Every private MXNet name the package relies on, and nothing else.

Each is used through a function or the mixin below, and
``tests/test_mxnet_internals.py`` checks that MXNet 1.9.1 still behaves as each of them
assumes, so that an MXNet change fails there, naming the assumption, instead of
somewhere inside a loss. (The datasets' private fields that ``dataset_labels.py`` reads
are GluonCV's.)

One-time setup of a loss, made safe for concurrent first calls
--------------------------------------------------------------
GluonCV's ``DataParallelCriterion(..., sync=True)`` and ``Parallel`` call one loss
object from one thread per context at the same moment. A hybridized ``HybridBlock``
builds its graph on its first call inside the block's name scope, whose state is
stored on the block, not per thread: two threads building at once leave that state
``None`` for one of them (``AttributeError: 'NoneType' object has no attribute
'__exit__'`` from ``block.name_scope``). A loss's constant parameters, copied to a
new context on first use, race the same way. Both steps run once per block (per
context), so they take a lock; later calls do not touch it.

Threads that share one context race on every call, not only the first: MXNet records
each input's autograd entry on the NDArray itself, so two threads recording an op on
the same parameter array (the class weights) corrupt the heap ("double free or
corruption"), in backward as well. So each call passes the parameters as handles of its
own (``detach()``, which shares the memory), and a block's calls on one context take
that context's lock (:meth:`SerializedFirstCall._calls_on`), since a CachedOp with static
memory is not re-entrant; threads on different contexts, GluonCV's ``Parallel``
pattern, never wait for each other.
"""
import ctypes
import sys
import threading

# Only mxnet.ndarray at import: a parameter server unpickles center_optimizer, which
# needs set_rows, while `import mxnet` is still running and mxnet.gluon cannot load.
import mxnet.ndarray as nd
from mxnet.ndarray import NDArray

# Held for a graph build and for copying a parameter to a new context (graph_ops.
# ensure_on_context). Reentrant: a build may run a child block's first call.
SETUP_LOCK = threading.RLock()


class SerializedFirstCall:
    """Mixin for a ``HybridBlock``: its cached graph is built by one thread at a time.

    Put it before the block's base class (``class MyLoss(SerializedFirstCall, Loss)``).
    """

    def _calls_on(self, context):
        """The lock held by this block's calls on ``context``."""
        key = (context.device_typeid, context.device_id)
        locks = getattr(self, "_context_locks", None)
        if locks is None or key not in locks:
            with SETUP_LOCK:
                locks = getattr(self, "_context_locks", None) or {}
                locks.setdefault(key, threading.Lock())
                self._context_locks = locks
        return locks[key]

    def _call_cached_op(self, *args):
        if self._cached_op is None:
            with SETUP_LOCK:
                # HybridBlock assigns _cached_op last, once everything it needs is set,
                # so a thread that sees it set outside the lock sees a finished build.
                if self._cached_op is None:
                    self._build_cache(*args)
        return super()._call_cached_op(*args)


    def _run_cached_graph(self, context, *args):
        """The built graph on ``args`` (NDArrays or None, in ``forward``'s order), as
        ``HybridBlock.forward`` runs it, without its second pass over the arguments to
        gather their contexts and structure: the caller has checked that every array is
        on ``context`` and that the same arguments are None as when the graph was built.
        At small sizes that pass costs as much as some graphs."""
        if self._callback:  # a monitor: MXNet's own path calls it
            with context:
                return self._call_cached_op(*args)
        if self._cached_op is None:
            with context, SETUP_LOCK:
                if self._cached_op is None:
                    self._build_cache(*args)
        present = [arg for arg in args if arg is not None]
        # detach(): a handle of its own per call, so that threads recording on the same
        # parameter array never share its autograd entry (see the module docstring).
        out = self._cached_op(*[present[i] if is_arg else i.data(context).detach()
                                for is_arg, i in self._cached_op_args])
        if isinstance(out, NDArray):
            return out
        from mxnet.gluon.block import _regroup
        return _regroup(out, self._out_format)


# ---------------------------------------------------------------- blocks
def is_hybridized(block):
    """Whether ``block.hybridize()`` is on (its calls build and run a graph)."""
    return block._active


def built_graph(block):
    """``(inputs, outputs)`` symbols of the graph ``block`` built on its last hybridized
    call, or ``()`` before one (or after :func:`clear_graph`)."""
    return block._cached_graph


def clear_graph(block):
    """Drop ``block``'s built graph, so that its next hybridized call builds anew."""
    block._clear_cached_op()


def registered_parameters(block):
    """``{attribute name: Parameter}`` of the parameters ``block`` itself holds."""
    return block._reg_params


# ---------------------------------------------------------------- parameters and arrays
def needs_initialize(param):
    """Whether ``param`` was never given to ``initialize`` (not even deferred)."""
    return param._data is None and not param._deferred_init


def grad_stype(param):
    """The storage type of ``param``'s gradient: ``'default'`` or ``'row_sparse'``."""
    return param._grad_stype


def averaged_value(param):
    """``param``'s value on the CPU, averaged over its contexts (what ``save`` writes)."""
    return param._reduce()


def grad_is_fresh(array):
    """Whether a backward pass wrote ``array``'s gradient since :func:`mark_grad_used`."""
    return array._fresh_grad


def mark_grad_used(array):
    """Mark ``array``'s gradient consumed, as ``Trainer.step`` does."""
    array._fresh_grad = False


def set_rows(target, rows, values):
    """``target[rows] = values`` in place, for an int ``rows`` vector of indices along
    axis 0: the op ``NDArray.__setitem__`` runs for an index array, called directly so
    that it writes only those rows."""
    nd._internal._scatter_set_nd(lhs=target, rhs=values, indices=rows.reshape((1, -1)),
                                 shape=target.shape, out=target)


# ---------------------------------------------------------------- operator libraries
def load_operator_library(path, op_name):
    """Register the library at ``path`` (an absolute path) with MXNet and bind
    ``mx.nd.<op_name>`` and ``mx.sym.<op_name>`` (and their ``.op`` twins) for its one
    operator: what ``mx.library.load`` does, without regenerating the functions of
    every other operator, which takes about a second."""
    from mxnet.base import _LIB, OpHandle, c_str, check_call, mx_uint
    from mxnet.ndarray.register import _make_ndarray_function
    from mxnet.symbol.register import _make_symbol_function
    import mxnet as mx
    check_call(_LIB.MXLoadLib(c_str(path), mx_uint(0)))
    handle = OpHandle()
    check_call(_LIB.NNGetOpHandle(c_str(op_name), ctypes.byref(handle)))
    for package, make_function in ((mx.ndarray, _make_ndarray_function),
                                   (mx.symbol, _make_symbol_function)):
        function = make_function(handle, op_name, op_name)
        for module in (package, package.op):
            setattr(module, op_name, function)


# ---------------------------------------------------------------- Module's update
def devices_updated_without_kvstore():
    """How many devices MXNet's Module is updating without a kvstore, when called from
    inside that update (an optimizer's ``update``); 0 elsewhere or with a kvstore.

    Module with ``kvstore=None`` runs ``mxnet.model._update_params``, which updates each
    device's copy from that device's own gradient; its arguments ``kvstore`` and
    ``num_device`` are read from the calling frames (MXNet 1.9.1).
    """
    frame = sys._getframe(1)
    while frame is not None:
        if (frame.f_code.co_name == "_update_params"
                and frame.f_globals.get("__name__") == "mxnet.model"):
            arguments = frame.f_locals
            if arguments.get("kvstore") is None:
                return arguments.get("num_device", 1)
            return 0
        frame = frame.f_back
    return 0


# ---------------------------------------------------------------- datasets
def transformed_dataset_base(dataset):
    """The dataset under ``dataset`` when it is ``base.transform(fn)`` (gluon.data's
    lazy wrapper), else None."""
    from mxnet.gluon.data.dataset import _LazyTransformDataset
    return dataset._data if isinstance(dataset, _LazyTransformDataset) else None
