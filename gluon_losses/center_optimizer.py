"""The optimizer that applies Eq. 4 to :func:`gluon_losses.symbol.center_loss` states.

A ``dist_sync`` kvstore pickles the optimizer to its parameter servers, and a server
started by ``import mxnet`` unpickles it while that import is still running, before
``mxnet.gluon`` or the ``mx.nd``/``mx.sym`` aliases exist. So this module uses only
MXNet submodules that are loaded by then, and ``gluon_losses/__init__.py`` loads
nothing else in that situation. Keep it that way: anything more here breaks
``dist_sync`` training silently (MXNet swallows the server's unpickling error, and a
server without an optimizer sums gradients into the weights).
"""
import copy
from collections import OrderedDict

import mxnet.optimizer as optimizer_api
import mxnet.symbol as sym

from .center_update import _cached, _graph_op, eq4_rows

__all__ = ["with_center_update", "apply_center_state_update", "center_state_name",
           "CENTER_STATE_SUFFIX"]

# Every center-loss state variable's name ends with this; with_center_update's optimizer
# recognizes the states by it.
CENTER_STATE_SUFFIX = "center_state"


def center_state_name(name):
    """The name of the state variable that :func:`center_loss` ``name=name`` creates."""
    return name + "_state" if name.endswith("center") else "%s_%s" % (name, CENTER_STATE_SUFFIX)



_STATE_INPUTS = ("pairs", "steps")
_STATE_UPDATE_OPS = OrderedDict()


def _state_update_op(shape, dtype):
    """(CachedOp, input order): Eq. 4 on (M, 2) pairs of (center element, count),
    alpha-free, one per shape (bounded like center_update's caches)."""
    def build():
        pairs, steps = (sym.var(name) for name in _STATE_INPUTS)

        def column(array, index):
            return sym.slice_axis(array, axis=1, begin=index, end=index + 1)

        # alpha is already in the gradient (see center_loss).
        new_values, new_counts = eq4_rows(sym, column(pairs, 0), column(pairs, 1),
                                          column(steps, 0), column(steps, 1), 1.0)
        return _graph_op(sym.concat(new_values, new_counts, dim=1), _STATE_INPUTS,
                         [("static_alloc", True), ("static_shape", True)])
    return _cached(_STATE_UPDATE_OPS, (shape, dtype), build)


def apply_center_state_update(state, grad):
    """Eq. 4 in place on a :func:`center_loss` state, from its summed gradient.

    ``state`` and ``grad`` share one shape: ``(K, D, 2)``, or any layout of the same
    (value, count) pairs, such as the flat copy a parameter server holds. Elements
    whose step is not finite keep their values (see ``center_update.eq4_rows``).
    """
    if grad.context != state.context:
        # kvstore 'device' on CPU keeps its copy in pinned memory.
        grad = grad.as_in_context(state.context)
    args = (state.reshape((-1, 2)), grad.reshape((-1, 2)))
    op, order = _state_update_op(args[0].shape, args[0].dtype)
    op(*[args[i] for i in order], out=[args[0]])


class _CenterUpdateMixin:
    """Routes the center-loss states to Eq. 4 and everything else to the optimizer."""

    def _is_center_state(self, index):
        name = index if isinstance(index, str) else self.idx2name.get(index, "")
        return name.endswith(CENTER_STATE_SUFFIX)

    def create_state(self, index, weight):
        return None if self._is_center_state(index) else super().create_state(index, weight)

    def create_state_multi_precision(self, index, weight):
        if self._is_center_state(index):
            return None
        return super().create_state_multi_precision(index, weight)

    def update(self, index, weight, grad, state):
        self._route(super().update, index, weight, grad, state)

    def update_multi_precision(self, index, weight, grad, state):
        self._route(super().update_multi_precision, index, weight, grad, state)

    def _route(self, delegate, index, weight, grad, state):
        if not isinstance(index, (list, tuple)):
            if self._is_center_state(index):
                apply_center_state_update(weight, grad)
            else:
                delegate(index, weight, grad, state)
            return
        # An aggregated call (lists): the center states leave the group.
        rest = []
        for item in zip(index, weight, grad, state):
            if self._is_center_state(item[0]):
                apply_center_state_update(item[1], item[2])
            else:
                rest.append(item)
        if rest:
            delegate(*(list(column) for column in zip(*rest)))

    def __reduce__(self):
        # The class is made at run time; pickle (a dist kvstore sends the optimizer to
        # its servers) rebuilds it from the optimizer class it extends.
        return _rebuild_center_update, (self._base_optimizer_class, self.__getstate__())


_CENTER_UPDATE_CLASSES = {}


def _center_update_class(base):
    cls = _CENTER_UPDATE_CLASSES.get(base)
    if cls is None:
        cls = _CENTER_UPDATE_CLASSES[base] = type(
            "CenterUpdate" + base.__name__, (_CenterUpdateMixin, base),
            {"__module__": __name__, "_base_optimizer_class": base})
    return cls


def _rebuild_center_update(base, state):
    optimizer = object.__new__(_center_update_class(base))
    optimizer.__setstate__(state)
    return optimizer


def with_center_update(optimizer, **optimizer_params):
    """An optimizer that applies Eq. 4 to every :func:`center_loss` state.

    Parameters whose name ends with ``'center_state'`` move by Eq. 4 from their summed
    gradient (see :func:`center_loss`); every other parameter is updated by
    ``optimizer``, unchanged. Pass the result to ``mod.fit(optimizer=...)`` or
    ``mod.init_optimizer(optimizer=...)``. It works with every kvstore Module offers
    (none, ``'local'``, ``'device'``, ``'dist_sync'``) and either value of
    ``update_on_kvstore``: the gradient of a state arrives summed over devices and
    workers wherever the update runs, so all copies stay identical. The optimizer
    pickles, as a ``dist_sync`` kvstore needs (servers must be able to import
    ``gluon_losses``).

    As for any optimizer instance given to Module, pass
    ``rescale_grad=1.0 / batch_size`` (Module sets it only for optimizer names, and
    warns otherwise); Eq. 4 does not use it.

    Parameters
    ----------
    optimizer : str or mx.optimizer.Optimizer
        An optimizer name (``'sgd'``, ``'adam'``, ...) or instance (copied, not changed).
    **optimizer_params
        Arguments of the named optimizer (``learning_rate``, ``momentum``,
        ``rescale_grad``, ...); none with an instance.

    Returns
    -------
    mx.optimizer.Optimizer
        An instance of a subclass of the chosen optimizer's class.
    """
    if isinstance(optimizer, optimizer_api.Optimizer):
        if optimizer_params:
            raise ValueError("optimizer_params must be empty when optimizer is an instance, "
                             "got %s" % sorted(optimizer_params))
        base = getattr(optimizer, "_base_optimizer_class", type(optimizer))
        wrapped = copy.copy(optimizer)
        wrapped.__class__ = _center_update_class(base)
        return wrapped
    registry = optimizer_api.Optimizer.opt_registry
    if not isinstance(optimizer, str) or optimizer.lower() not in registry:
        raise ValueError("optimizer must be an mx.optimizer.Optimizer or one of %s, got %r"
                         % (", ".join(sorted(registry)), optimizer))
    return _center_update_class(registry[optimizer.lower()])(**optimizer_params)
