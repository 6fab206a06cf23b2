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
import numbers
from collections import OrderedDict

import mxnet.optimizer as optimizer_api
import mxnet.symbol as sym

from .center_update import _cached, _graph_op, eq4_rows
from .mxnet_internals import devices_updated_without_kvstore

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
        if self._is_center_state(index):
            _refuse_unsummed_devices()
            return None
        return super().create_state(index, weight)

    def create_state_multi_precision(self, index, weight):
        if self._is_center_state(index):
            _refuse_unsummed_devices()
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


def _refuse_unsummed_devices():
    """Raise when Module updates several devices without a kvstore.

    With ``kvstore=None`` MXNet sums no gradient across devices, so each copy of the
    centers would move by Eq. 4 over its part of the batch only. The optimizer cannot
    see the kvstore; :func:`mxnet_internals.devices_updated_without_kvstore` reads it
    from MXNet's calling frames.
    """
    devices = devices_updated_without_kvstore()
    if devices > 1:
        raise ValueError(
            "kvstore=None with %d devices: MXNet does not sum gradients across "
            "devices then, so the centers of each device would move by its own "
            "part of the batch. Pass kvstore='device' or 'local' to fit or "
            "init_optimizer." % devices)


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


def _same(first, second):
    """Whether two optimizer settings are the same: numbers, strings and tuples of
    them by value, anything else (a scheduler) by identity."""
    if first is second:
        return True
    plain = (numbers.Number, str, bool, type(None), tuple)
    return isinstance(first, plain) and isinstance(second, plain) and first == second


def _module_default_params():
    """The optimizer_params Module uses when fit or init_optimizer is given none."""
    import inspect
    from mxnet.module import BaseModule
    return dict(inspect.signature(BaseModule.init_optimizer).parameters[
        "optimizer_params"].default)


def _merged_params(name, settings, given):
    """``given`` (what Module passes) overridden by ``settings`` (with_center_update's).

    Module fills in ``rescale_grad`` and, without ``optimizer_params``, its default
    learning rate; any other key given both ways with two values is an error.
    """
    merged = dict(given)
    module_defaults = _module_default_params()
    if "lr_scheduler" in settings and "learning_rate" not in settings and _same(
            merged.get("learning_rate"), module_defaults.get("learning_rate")):
        # Module's default learning rate, which would overwrite the scheduler's base_lr
        # (optimizer='sgd' with a scheduler in optimizer_params gets no such default).
        del merged["learning_rate"]
    for key, value in settings.items():
        if key in merged and not _same(merged[key], value) and key != "rescale_grad" \
                and not (key in module_defaults and _same(merged[key], module_defaults[key])):
            raise ValueError(
                "optimizer_params sets %s=%r, but with_center_update gave %r for the "
                "optimizer %r: set it in one place" % (key, merged[key], value, name))
        merged[key] = value
    return merged


# (base optimizer class, settings, registered name) of every with_center_update(name, ...).
_NAMED = []


def _registered_name(base, settings):
    """The name under which ``mx.optimizer.create`` makes ``base`` with ``settings`` and
    Eq. 4 for the center states; registered on first use."""
    for known_base, known_settings, name in _NAMED:
        if known_base is base and known_settings.keys() == settings.keys() and all(
                _same(known_settings[key], value) for key, value in settings.items()):
            return name
    name = "center_update_%s_%d" % (base.__name__.lower(), len(_NAMED) + 1)
    generic = _center_update_class(base)

    def __init__(self, **given):
        generic.__init__(self, **_merged_params(name, settings, given))

    optimizer_api.Optimizer.register(type(name, (generic,), {
        "__module__": __name__, "__init__": __init__,
        "__doc__": "%s with %r, and Eq. 4 for the center states." % (base.__name__, settings)}))
    _NAMED.append((base, dict(settings), name))
    return name


def with_center_update(optimizer, **optimizer_params):
    """``optimizer``, with Eq. 4 for every :func:`center_loss` state.

    Parameters whose name ends with ``'center_state'`` move by Eq. 4 from their summed
    gradient (see :func:`center_loss`); every other parameter is updated by
    ``optimizer``, unchanged. Pass the result where ``optimizer`` would go:
    ``mod.fit(optimizer=...)`` or ``mod.init_optimizer(optimizer=...)``.

    Given a name, it returns a name: that of an optimizer registered with
    ``mx.optimizer`` (once per name and settings), which Module creates as it creates
    any named optimizer, with the symbol and parameter names. So every other
    parameter trains exactly as with ``optimizer=name, optimizer_params=params``:
    ``lr_mult``/``wd_mult`` attributes, no weight decay on biases and BatchNorm
    ``beta``, and ``rescale_grad = 1/batch_size`` set by Module unless given here.
    ``optimizer_params`` of ``fit`` still apply to settings not given here; a setting
    given both ways with two values raises. Given an instance, it returns a copy of
    it, which Module treats as it treats that instance (no symbol: pass
    ``rescale_grad`` yourself, and biases get weight decay).

    It works with every kvstore Module offers that sums gradients across devices
    (``'local'``, ``'device'``, ``'dist_sync'``, and none on a single device) and
    either value of ``update_on_kvstore``: the gradient of a state arrives summed over
    devices and workers wherever the update runs, so all copies stay identical.
    ``kvstore=None`` with several devices raises at the first update. The optimizer
    pickles, as a ``dist_sync`` kvstore needs (servers must be able to import
    ``gluon_losses``).

    Parameters
    ----------
    optimizer : str or mx.optimizer.Optimizer
        An optimizer name (``'sgd'``, ``'adam'``, ...) or instance (copied, not changed).
    **optimizer_params
        Arguments of the named optimizer (``learning_rate``, ``momentum``, ``wd``,
        ``lr_scheduler``, ...); none with an instance.

    Returns
    -------
    str or mx.optimizer.Optimizer
        A registered optimizer name for a name; an instance of a subclass of the
        instance's class for an instance.
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
        names = sorted(name for name in registry if not name.startswith("center_update_"))
        raise ValueError("optimizer must be an mx.optimizer.Optimizer or one of %s, got %r"
                         % (", ".join(names), optimizer))
    base = registry[optimizer.lower()]
    for known_base, known_settings, name in _NAMED:
        if name == optimizer.lower():   # already with_center_update's: add the settings
            base, optimizer_params = known_base, dict(known_settings, **optimizer_params)
    return _registered_name(getattr(base, "_base_optimizer_class", base), optimizer_params)
