"""``CenterTrainer``: the trainer that moves CenterLoss centers by Eq. 4.

It sums the center statistics (gradients) over contexts and workers through a
kvstore, or through a user's allreduce (Horovod), then applies the kernels of
:mod:`gluon_losses.center_update` to every copy, so all copies stay identical.
"""
import itertools
import json

import mxnet as mx
from mxnet import nd

from .center_update import apply_center_update, apply_dense_center_update
from .checks import check_float
from .mxnet_internals import grad_is_fresh, grad_stype, mark_grad_used, set_rows

__all__ = ["CenterTrainer"]

# A process holds one dist_sync kvstore, which the network's gluon.Trainer (keys 0,
# 1, ... for its parameters) and CenterTrainer then share. CenterTrainer keys start
# far above those, in a block of _KEYS_PER_TRAINER per trainer; the trainers that may
# share a kvstore (a dist type, or a KVStore object passed in) are numbered in creation
# order, which is the same on every worker. Not higher: ps-lite picks a key's server
# with int arithmetic (key * 9973), which must not overflow, so the keys end at
# _MAX_KEY and a process can create at most MAX_SHARED_TRAINERS such trainers.
_KEY_BASE = 100000
_KEYS_PER_TRAINER = 64
_FIRST_SUM_KEY = 2  # after centers (0) and counts (1)
_MAX_KEY = (2 ** 31 - 1) // 9973
MAX_SHARED_TRAINERS = (_MAX_KEY + 1 - _KEY_BASE) // _KEYS_PER_TRAINER
_TRAINER_NUMBERS = itertools.count()


def _shared_key_base():
    """First kvstore key of a new trainer that may share its kvstore."""
    number = next(_TRAINER_NUMBERS)
    if number >= MAX_SHARED_TRAINERS:
        raise RuntimeError(
            "this process has created %d CenterTrainers on a dist or shared kvstore, the "
            "most that ps-lite's key range holds (keys up to %d); reuse a trainer (set "
            "trainer.alpha to change the rate) instead of creating one per step or run"
            % (MAX_SHARED_TRAINERS, _MAX_KEY))
    return _KEY_BASE + _KEYS_PER_TRAINER * number


class CenterTrainer:
    r"""The trainer that moves the centers of a :class:`CenterLoss` by Eq. 4, with
    ``gluon.Trainer``'s ``step``, ``allreduce_grads``, ``update``, ``save_states`` and
    ``load_states``. It has no optimizer: Eq. 4 is the whole update.

    Create it with :meth:`CenterLoss.trainer`. Call ``step(batch_size)`` after every
    backward pass, right after the network's own ``trainer.step``. To accumulate
    several backward passes before one step, set ``grad_req='add'`` on the loss's
    parameters too (dense gradients only): the step then applies Eq. 4 once over the
    union of those batches, and zeroes the two statistics. ``batch_size`` is
    accepted for symmetry with ``gluon.Trainer`` and not used: Eq. 4 normalizes by the
    per-class counts, which the backward pass supplies.

    The gradients of ``centers`` and ``center_counts`` are summed over contexts
    (``kvstore='device'`` or ``'local'``) or over workers (``'dist_sync'``, or
    ``'dist_sync_device'``); then every copy applies the same update, so all copies
    stay bitwise identical. ``dist_async`` is refused: it cannot keep copies equal.

    Parameters
    ----------
    centers, center_counts : Parameter
        ``(K, D)`` and ``(K, 1)``, initialized, both with row_sparse gradients (large
        tables: a row-wise update, flat in K) or both with dense ones (small tables:
        one fused update over the whole table); see :class:`CenterLoss`'s ``dense``.
    alpha : float
        Center learning rate in (0, 1]. Settable later through ``trainer.alpha``.
    kvstore : str or KVStore or None
        As for ``gluon.Trainer``. Used only with several contexts or a ``dist`` type.
        A ``dist_sync`` KVStore can be shared with the network's ``gluon.Trainer``
        (this trainer's keys start at 100000), which must then use
        ``update_on_kvstore=False``: an optimizer on the servers would also apply to
        the center statistics.
    allreduce : callable or None
        For data parallelism outside kvstore (Horovod): ``allreduce(array)`` must sum
        the dense ``array`` over all workers in place, e.g.
        ``lambda a: hvd.allreduce_(a, op=hvd.Sum)``. It is called twice per step, with
        the counts ``(K, 1)`` and then the numerator: the whole ``(K, D)`` gradient with
        dense gradients, or with row_sparse ones a block of numerator rows ``(H, D)``, H
        at most the global batch rounded up to a power of two. One context per
        process; ``kvstore`` is then not used.
    """

    def __init__(self, centers, center_counts, alpha=0.5, kvstore='device',
                 compression_params=None, update_on_kvstore=None, allreduce=None):
        if allreduce is not None and not callable(allreduce):
            raise ValueError("allreduce must be a callable that sums an NDArray over "
                             "workers in place, got %r" % (allreduce,))
        self._allreduce = allreduce
        if update_on_kvstore:
            raise ValueError("update_on_kvstore must be None or False for CenterTrainer: "
                             "Eq. 4 needs the summed gradients on the workers")
        if compression_params is not None:
            raise ValueError("compression_params is not supported by CenterTrainer: "
                             "compressed gradients would make Eq. 4 inexact")
        self.alpha = alpha
        stypes = {grad_stype(centers), grad_stype(center_counts)}
        if len(stypes) != 1 or not stypes <= {"default", "row_sparse"}:
            raise ValueError("centers and center_counts must both have row_sparse or both "
                             "dense gradients, got %s and %s"
                             % (grad_stype(centers), grad_stype(center_counts)))
        self._dense = stypes == {"default"}
        self._key_base = None
        self._params = [centers, center_counts]
        self._contexts = centers.list_ctx()
        if set(center_counts.list_ctx()) != set(self._contexts):
            raise ValueError("centers and center_counts must live on the same contexts, got "
                             "%s and %s" % (self._contexts, center_counts.list_ctx()))
        if allreduce is not None and len(self._contexts) != 1:
            raise ValueError("allreduce needs the centers on one context per process, "
                             "got %s" % (self._contexts,))
        # Copies must agree before the first forward pass, since each computes its
        # part of the numerator against its own centers: start every context and
        # worker from context 0 of worker 0 now, not at the first step.
        self._init_kvstore(kvstore)
        self._init_params()

    @property
    def alpha(self):
        """Center learning rate of Eq. 4, in (0, 1]."""
        return self._alpha

    @alpha.setter
    def alpha(self, value):
        self._alpha = check_float("alpha", value, 0.0, 1.0, low_open=True)

    def _init_kvstore(self, kvstore):
        kvstore = None if self._allreduce else kvstore
        if kvstore is not None and not isinstance(kvstore, (str, mx.kv.KVStore)):
            raise ValueError("kvstore must be a kvstore type name, a KVStore or None, "
                             "got %r" % (kvstore,))
        kv_type = kvstore if isinstance(kvstore, str) else getattr(kvstore, "type", "")
        if "async" in kv_type:
            raise ValueError("kvstore=%r cannot keep the centers identical on every "
                             "worker; use dist_sync" % kv_type)
        if "nccl" in kv_type:
            raise ValueError("kvstore=%r cannot sum row_sparse gradients; use 'device'"
                             % kv_type)
        if self._key_base is None:
            # A kvstore created here from a local type name is this trainer's alone.
            shared = isinstance(kvstore, mx.kv.KVStore) or "dist" in kv_type
            self._key_base = _shared_key_base() if shared else _KEY_BASE
        if isinstance(kvstore, str):
            if "dist" in kvstore or len(self._contexts) > 1:
                kvstore = mx.kv.create(kvstore)
            else:
                kvstore = None
        self._kvstore = kvstore
        self._distributed = kvstore is not None and "dist" in kvstore.type
        self._dense_keys = {}

    def _init_params(self):
        # On this trainer's own keys: copies of centers and counts start from context 0
        # of worker 0.
        if self._kvstore is not None:
            for offset, param in enumerate(self._params):
                arrays = param.list_data()
                self._kvstore.broadcast(self._key_base + offset, arrays[0], arrays)

    def allreduce_grads(self):
        """Sum the center gradients over contexts and workers; see ``update``."""
        self._reduced = self._reduce()

    def update(self, batch_size=None, ignore_stale_grad=False):
        """Apply Eq. 4 with the gradients summed by ``allreduce_grads``."""
        centers, counts = self._params
        stale = [d for d in centers.list_data() if not grad_is_fresh(d)]
        if stale:
            if ignore_stale_grad:
                return
            raise UserWarning(
                "Gradient of %s on %s has not been updated by backward since the last "
                "step: run the loss forward inside autograd.record() and call backward "
                "before CenterTrainer.step" % (centers.name, stale[0].context))
        reduced = getattr(self, "_reduced", None)
        if reduced is None:
            raise RuntimeError("call allreduce_grads() before update(), or use step()")
        self._reduced = None
        for w, c, sums in zip(centers.list_data(), counts.list_data(), reduced):
            if sums is None:
                continue
            rows, numerator, batch_counts = sums
            if rows is None:
                apply_dense_center_update(w, c, numerator, batch_counts, self.alpha)
            else:
                apply_center_update(w, c, rows, numerator, batch_counts, self.alpha)
        for d in centers.list_data() + counts.list_data():
            mark_grad_used(d)
        if centers.grad_req == "add":
            # Accumulated statistics (several backward passes) are spent by this step,
            # and the sums over contexts were written back into them: the next step
            # must start from zero even if the loss's parameters are not zeroed.
            centers.zero_grad()
            counts.zero_grad()

    def step(self, batch_size=None, ignore_stale_grad=False):
        """Sum the gradients over contexts/workers and move the centers by Eq. 4."""
        self.allreduce_grads()
        self.update(batch_size, ignore_stale_grad)

    def save_states(self, fname):
        """Write the trainer's one setting, ``alpha``, to ``fname`` (JSON): the centers
        and their counts are parameters of the loss, saved with it."""
        with open(fname, "w") as handle:
            json.dump({"center_trainer": 1, "alpha": self.alpha}, handle)

    def load_states(self, fname):
        """Read what :meth:`save_states` wrote. A file ``gluon.Trainer.save_states``
        wrote for an earlier version of this trainer holds only its unused optimizer's
        state and leaves the trainer as it is."""
        with open(fname, "rb") as handle:
            raw = handle.read()
        try:
            states = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            return
        if isinstance(states, dict) and states.get("center_trainer") == 1:
            self.alpha = states["alpha"]

    def _reduce(self):
        """Per context: (rows, summed numerator rows, summed counts of those rows).

        With dense gradients, rows is None and the two sums are whole tables.
        """
        centers, counts = self._params
        grads, count_grads = centers.list_grad(), counts.list_grad()
        kv = self._kvstore
        if self._dense:
            # Dense sums of K x D floats, small by construction (DENSE_MAX_ELEMENTS).
            if kv is not None or self._allreduce is not None:
                self._sum_dense("dense counts", count_grads)
                self._sum_dense("dense numerator", grads)
            return [(None, g, n) for g, n in zip(grads, count_grads)]
        if kv is None and self._allreduce is None:
            return [(g.indices, g.data, n.data) for g, n in zip(grads, count_grads)]
        if kv is not None and not self._distributed:
            # Local kvstores sum row_sparse pushes and hand the sum back on pull; both
            # keys receive the same index sets, so the two sums share their rows.
            kv.push(self._key_base, grads, priority=0)
            kv.pull(self._key_base, grads, priority=0, ignore_sparse=False)
            kv.push(self._key_base + 1, count_grads, priority=-1)
            kv.pull(self._key_base + 1, count_grads, priority=-1, ignore_sparse=False)
            return [(g.indices, g.data, n.data) for g, n in zip(grads, count_grads)]
        return self._reduce_across_workers(grads, count_grads)

    def _reduce_across_workers(self, grads, count_grads):
        """dist_sync / allreduce: sums of dense arrays only, none of size K x D.

        MXNet's parameter server sums row_sparse pushes only through an optimizer
        running on the server and cannot hand a summed row_sparse gradient back, and
        Horovod's allreduce is dense. So the counts go first, dense (K floats); their
        nonzero rows U are the union of every worker's classes, the same list on all
        workers. Each worker then writes its numerator rows at their places in U into
        a dense (H, D) block, H = |U| rounded up to a power of two (|U| is at most the
        global batch), and the blocks are summed.
        """
        num_classes = count_grads[0].shape[0]
        counts = [n.tostype("default") for n in count_grads]
        self._sum_dense("counts", counts)
        rows = nd.contrib.boolean_mask(
            nd.arange(num_classes, ctx=counts[0].context, dtype="int64"),
            counts[0].reshape((-1,)) > 0)
        used = rows.shape[0]
        if used == 0:  # every position of the global batch was ignored
            return [None] * len(grads)
        # Blocks come in power-of-two heights so that a handful of keys serve all
        # batches; rows past `used` stay zero.
        height = max(16, 1 << (used - 1).bit_length())
        blocks = []
        for g in grads:
            ctx = g.context
            # place[j] = position of class j in U, or -1.
            place = nd.full((num_classes,), -1, ctx=ctx)
            set_rows(place, rows.as_in_context(ctx), nd.arange(used, ctx=ctx))
            local = nd.take(place, g.indices)
            # Rows this worker saw only as ignored positions are not in U.
            present = local >= 0
            block = nd.zeros((height, g.shape[1]), ctx=ctx, dtype=g.dtype)
            if int(present.sum().asscalar()):
                at = nd.contrib.boolean_mask(local, present).astype("int64")
                set_rows(block, at, nd.contrib.boolean_mask(g.data, present))
            blocks.append(block)
        self._sum_dense(("numerator", height), blocks)
        return [(rows.as_in_context(b.context), nd.slice_axis(b, axis=0, begin=0, end=used),
                 nd.take(n, rows.as_in_context(n.context)))
                for b, n in zip(blocks, counts)]

    def _sum_dense(self, name, arrays):
        """Sum same-shaped dense arrays in place over contexts and workers."""
        if self._allreduce is not None:
            self._allreduce(arrays[0])
            return
        key = self._dense_keys.get(name)
        if key is None:
            # Every worker asks for the same names in the same order, so the keys agree.
            key = _FIRST_SUM_KEY + len(self._dense_keys)
            if key >= _KEYS_PER_TRAINER:
                raise RuntimeError("CenterTrainer ran out of kvstore keys")
            key = self._dense_keys[name] = self._key_base + key
            self._kvstore.init(key, nd.zeros_like(arrays[0]))
        self._kvstore.push(key, arrays, priority=0)
        self._kvstore.pull(key, arrays, priority=0)
