"""Eq. 4 of Wen et al. (ECCV 2016): the center update, as in-place kernels.

.. math:: c_j \\leftarrow c_j - \\alpha \\frac{\\sum_{i: y_i = j} (c_j - x_i)}{1 + n_j}

Two kernels: :func:`apply_center_update` writes only the listed rows (row_sparse
gradients, a cost flat in the number of classes) and :func:`apply_dense_center_update`
rewrites the whole table in one fused graph (small tables). Both take the summed
statistics that :func:`gluon_losses.center.center_loss` routes into gradients, so a
custom data-parallel setup (Horovod, a hand-written allreduce) can call them after
summing those gradients itself. Each kernel is a bare ``CachedOp``, compiled once and
kept in a module-level cache: at small batches, per-call overhead is what a step pays.
"""
import mxnet as mx
# Not "from mxnet import nd": a kvstore server imports this module (through
# center_optimizer) while mxnet is still initializing, before the alias exists.
import mxnet.ndarray as nd

__all__ = ["apply_center_update", "apply_dense_center_update", "eq4_rows"]


def eq4_rows(F, old, old_counts, numerator, batch_counts, alpha):
    """New values of the listed rows of the centers and counts under Eq. 4.

    ``old`` ``(R, D)`` and ``old_counts`` ``(R, 1)`` are the rows' current values,
    ``numerator`` ``(R, D)`` is :math:`\\sum_{i: y_i=j}(c_j - x_i)` and ``batch_counts``
    ``(R, 1)`` is :math:`n_j`. A row whose step is not finite keeps its old value and
    count (a second guard: :func:`center_loss` already leaves non-finite features out,
    so this catches float overflow, or statistics summed by hand).
    """
    step = F.broadcast_mul(numerator, alpha / (batch_counts + 1))
    finite = (F.sum(step, axis=1) * 0) == 0
    return (F.where(finite, old - step, old),
            F.where(finite, old_counts + batch_counts, old_counts))


_EQ4_INPUTS = ("weight", "counts", "rows", "numerator", "batch_counts")
_EQ4_OPS = {}


def _eq4_op(alpha):
    """(CachedOp, input order) computing Eq. 4's new rows, one per alpha.

    One fused graph instead of a dozen imperative calls, and a bare CachedOp instead
    of a HybridBlock: at small batches, per-call overhead is what the step pays for.
    """
    entry = _EQ4_OPS.get(alpha)
    if entry is None:
        weight, counts, rows, numerator, batch_counts = (mx.sym.var(n) for n in _EQ4_INPUTS)
        outputs = eq4_rows(mx.sym, mx.sym.take(weight, rows), mx.sym.take(counts, rows),
                           numerator, batch_counts, alpha)
        graph = mx.sym.Group(list(outputs))
        order = [_EQ4_INPUTS.index(name) for name in graph.list_inputs()]
        entry = _EQ4_OPS[alpha] = (nd.CachedOp(graph, flags=[("static_alloc", True)]), order)
    return entry


_DENSE_EQ4_INPUTS = ("weight", "counts", "numerator", "batch_counts")
_DENSE_EQ4_OPS = {}


def _dense_eq4_op(alpha, shape, dtype):
    """(CachedOp, input order) for Eq. 4 over whole tables, one per alpha and table.

    Static shapes let MXNet plan memory and executors once per table instead of on
    every call: measured here, that nearly halves the cost of a call at small K x D.
    """
    key = (alpha, shape, dtype)
    entry = _DENSE_EQ4_OPS.get(key)
    if entry is None:
        graph = mx.sym.Group(list(eq4_rows(mx.sym, *(mx.sym.var(n) for n in _DENSE_EQ4_INPUTS),
                                           alpha)))
        order = tuple(_DENSE_EQ4_INPUTS.index(name) for name in graph.list_inputs())
        flags = [("static_alloc", True), ("static_shape", True)]
        entry = _DENSE_EQ4_OPS[key] = (nd.CachedOp(graph, flags=flags), order)
    return entry


def apply_dense_center_update(weight, counts, numerator, batch_counts, alpha):
    """Apply Eq. 4 in place to the whole of ``weight`` ``(K, D)`` and ``counts`` ``(K, 1)``.

    ``numerator`` ``(K, D)`` and ``batch_counts`` ``(K, 1)`` are the dense summed
    gradients of the small-table path: zero on the rows of classes absent from the
    batch, whose step is then exactly zero, so those rows keep their values bitwise.
    One fused graph writes straight into ``weight`` and ``counts`` (Eq. 4 is elementwise
    per row, so reading and writing the same array is safe).
    """
    op, order = _dense_eq4_op(float(alpha), weight.shape, weight.dtype)
    args = (weight, counts, numerator, batch_counts)
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
    op, order = _eq4_op(float(alpha))
    args = (weight, counts, rows, numerator, batch_counts)
    new_rows, new_counts = op(*[args[i] for i in order])
    # _scatter_set_nd (what NDArray.__setitem__ uses for index arrays) writes only
    # the listed rows of `out`, in place.
    index = rows.reshape((1, -1))
    nd._internal._scatter_set_nd(lhs=weight, rhs=new_rows, indices=index,
                                 shape=weight.shape, out=weight)
    nd._internal._scatter_set_nd(lhs=counts, rhs=new_counts, indices=index,
                                 shape=counts.shape, out=counts)
