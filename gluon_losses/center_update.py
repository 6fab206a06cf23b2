"""Eq. 4 of Wen et al. (ECCV 2016): the center update, as in-place kernels.

.. math:: c_j \\leftarrow c_j - \\alpha \\frac{\\sum_{i: y_i = j} (c_j - x_i)}{1 + n_j}

Two kernels: :func:`apply_center_update` writes only the listed rows (row_sparse
gradients, a cost flat in the number of classes) and :func:`apply_dense_center_update`
rewrites the whole table in one fused graph (small tables). Both take the summed
statistics that :func:`gluon_losses.center.center_loss` routes into gradients, so a
custom data-parallel setup (Horovod, a hand-written allreduce) can call them after
summing those gradients itself. Each kernel is a bare ``CachedOp``, compiled once and
kept in a module-level cache: at small batches, per-call overhead is what a step pays.
``alpha`` is an input of those graphs, not a constant baked into them, so a schedule
that changes it every step reuses one graph; the caches are bounded all the same.
"""
from collections import OrderedDict

import mxnet as mx
# Not "from mxnet import nd": a kvstore server imports this module (through
# center_optimizer) while mxnet is still initializing, before the alias exists.
import mxnet.ndarray as nd

from .mxnet_internals import set_rows

__all__ = ["apply_center_update", "apply_dense_center_update", "eq4_rows"]


def eq4_rows(F, old, old_counts, numerator, batch_counts, alpha):
    """New values of the listed rows of the centers and counts under Eq. 4.

    ``old`` ``(R, D)`` and ``old_counts`` ``(R, 1)`` are the rows' current values,
    ``numerator`` ``(R, D)`` is :math:`\\sum_{i: y_i=j}(c_j - x_i)` and ``batch_counts``
    ``(R, 1)`` is :math:`n_j`. ``alpha`` is a number or a ``(1,)`` array. A row whose
    step is not finite keeps its old value and count (a second guard:
    :func:`center_loss` already leaves non-finite features out, so this catches float
    overflow, or statistics summed by hand).
    """
    if isinstance(alpha, (int, float)):
        rate = alpha / (batch_counts + 1)
    else:
        rate = F.broadcast_div(alpha, batch_counts + 1)
    step = F.broadcast_mul(numerator, rate)
    finite = (F.sum(step, axis=1) * 0) == 0
    return (F.where(finite, old - step, old),
            F.where(finite, old_counts + batch_counts, old_counts))


# Bound of every cache below; least recently used entries go first. A process rarely
# holds more than a few tables or contexts, so this is never reached in practice.
CACHE_SIZE = 32


def _cached(cache, key, build):
    """``cache[key]``, built by ``build()`` when missing; at most CACHE_SIZE entries."""
    entry = cache.get(key)
    if entry is None:
        entry = cache[key] = build()
        if len(cache) > CACHE_SIZE:
            cache.popitem(last=False)
    else:
        cache.move_to_end(key)
    return entry


_ALPHAS = OrderedDict()


def _alpha_array(alpha, ctx, dtype):
    """``alpha`` as the ``(1,)`` input of the cached graphs, made once per value and device."""
    return _cached(_ALPHAS, (alpha, ctx, dtype),
                   lambda: nd.full((1,), alpha, ctx=ctx, dtype=dtype))


def _graph_op(graph, input_names, flags):
    """(CachedOp, input order) of ``graph`` over the inputs named ``input_names``."""
    order = tuple(input_names.index(name) for name in graph.list_inputs())
    return nd.CachedOp(graph, flags=flags), order


_EQ4_INPUTS = ("weight", "counts", "rows", "numerator", "batch_counts", "alpha")
_EQ4_OPS = OrderedDict()


def _eq4_op():
    """(CachedOp, input order) computing Eq. 4's new rows.

    One fused graph instead of a dozen imperative calls, and a bare CachedOp instead
    of a HybridBlock: at small batches, per-call overhead is what the step pays for.
    """
    def build():
        weight, counts, rows, numerator, batch_counts, alpha = (
            mx.sym.var(n) for n in _EQ4_INPUTS)
        outputs = eq4_rows(mx.sym, mx.sym.take(weight, rows), mx.sym.take(counts, rows),
                           numerator, batch_counts, alpha)
        return _graph_op(mx.sym.Group(list(outputs)), _EQ4_INPUTS, [("static_alloc", True)])
    return _cached(_EQ4_OPS, None, build)


_DENSE_EQ4_INPUTS = ("weight", "counts", "numerator", "batch_counts", "alpha")
_DENSE_EQ4_OPS = OrderedDict()


def _dense_eq4_op(shape, dtype):
    """(CachedOp, input order) for Eq. 4 over whole tables, one per table shape.

    Static shapes let MXNet plan memory and executors once per table instead of on
    every call: measured here, that nearly halves the cost of a call at small K x D.
    """
    def build():
        graph = mx.sym.Group(list(eq4_rows(mx.sym, *(mx.sym.var(n) for n in _DENSE_EQ4_INPUTS))))
        return _graph_op(graph, _DENSE_EQ4_INPUTS, [("static_alloc", True),
                                                    ("static_shape", True)])
    return _cached(_DENSE_EQ4_OPS, (shape, dtype), build)


def apply_dense_center_update(weight, counts, numerator, batch_counts, alpha):
    """Apply Eq. 4 in place to the whole of ``weight`` ``(K, D)`` and ``counts`` ``(K, 1)``.

    ``numerator`` ``(K, D)`` and ``batch_counts`` ``(K, 1)`` are the dense summed
    gradients of the small-table path: zero on the rows of classes absent from the
    batch, whose step is then exactly zero, so those rows keep their values bitwise.
    One fused graph writes straight into ``weight`` and ``counts`` (Eq. 4 is elementwise
    per row, so reading and writing the same array is safe).
    """
    op, order = _dense_eq4_op(weight.shape, weight.dtype)
    args = (weight, counts, numerator, batch_counts,
            _alpha_array(float(alpha), weight.context, weight.dtype))
    op(*[args[i] for i in order], out=[weight, counts])


def apply_center_update(weight, counts, rows, numerator, batch_counts, alpha):
    """Apply Eq. 4 in place to the rows ``rows`` of ``weight`` and count them in ``counts``.

    ``weight`` ``(K, D)`` and ``counts`` ``(K, 1)`` are dense NDArrays; ``rows`` ``(R,)``
    holds distinct class ids, ``numerator`` ``(R, D)`` and ``batch_counts`` ``(R, 1)``
    their summed gradients (see :func:`eq4_rows`). Only the listed rows are read or
    written, so the cost does not depend on the number of classes. This is the whole
    update; a custom data-parallel setup (e.g. Horovod) can call it after summing the
    two gradients itself.
    """
    op, order = _eq4_op()
    args = (weight, counts, rows, numerator, batch_counts,
            _alpha_array(float(alpha), weight.context, weight.dtype))
    new_rows, new_counts = op(*[args[i] for i in order])
    set_rows(weight, rows, new_rows)
    set_rows(counts, rows, new_counts)
