"""Concurrent first calls of a fresh hybridized loss, as GluonCV's threaded trainers make them.

``DataParallelCriterion(..., sync=True)`` and ``Parallel`` call one loss object from
one thread per context at once. Before the fix this failed in ``block.name_scope``
(``'NoneType' object has no attribute '__exit__'``) in a large share of first calls.
"""
import contextlib
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import mxnet as mx

from gluon_losses import CenterLoss, MixWeightedSoftmaxCELoss, WeightedSoftmaxCELoss
from gluon_losses import mxnet_internals
from reference import run_loss

CONTEXTS = [mx.cpu(0), mx.cpu(1)]
RNG = np.random.RandomState(0)
LOGITS = RNG.randn(4, 5).astype(np.float32)
FEATURES = RNG.randn(4, 3).astype(np.float32)
MAPS = RNG.randn(2, 5, 3, 4).astype(np.float32)
MASKS = RNG.randint(-1, 5, (2, 3, 4)).astype(np.float32)


def _softmax():
    return WeightedSoftmaxCELoss(class_weight=[1, 2, 3, 4, 5]), [LOGITS, np.array([0, 1, -1, 4])]


def _softmax_unweighted():
    return WeightedSoftmaxCELoss(), [LOGITS, np.array([0, 1, -1, 4])]


def _center():
    loss = CenterLoss(num_classes=5, feature_dim=3)
    loss.initialize(ctx=CONTEXTS)
    return loss, [FEATURES, np.array([0, 1, 2, 4])]


def _mix():
    return MixWeightedSoftmaxCELoss(class_weight=[1, 2, 3, 4, 5]), [MAPS, MAPS[:, ::-1], MASKS]


CASES = {"softmax": _softmax, "softmax-unweighted": _softmax_unweighted, "center": _center,
         "mix": _mix}


def _first_calls_at_once(make_case, pool):
    """One fresh hybridized loss, first called on every context at the same moment."""
    loss, arrays = make_case()
    loss.hybridize()
    barrier = threading.Barrier(len(CONTEXTS))

    def call(ctx):
        barrier.wait()
        return run_loss(loss, *arrays, ctx=ctx)
    futures = [pool.submit(call, ctx) for ctx in CONTEXTS]
    return [f.exception() or f.result() for f in futures]


@pytest.fixture(scope="module")
def pool():
    # Long-lived threads: a new OS thread's first MXNet call is slow to set up, and
    # the race is in the loss, not in thread start-up.
    with ThreadPoolExecutor(len(CONTEXTS)) as executor:
        yield executor


@pytest.mark.parametrize("case, repeats", [("softmax", 200), ("center", 200),
                                           ("softmax-unweighted", 20), ("mix", 20)])
def test_concurrent_first_calls_never_fail_and_equal_a_serial_call(case, repeats, pool):
    loss, arrays = CASES[case]()
    expected = run_loss(loss, *arrays, ctx=mx.cpu(0))
    failures = []
    for _ in range(repeats):
        for result in _first_calls_at_once(CASES[case], pool):
            if isinstance(result, Exception):
                failures.append(repr(result))
                continue
            np.testing.assert_allclose(result[0], expected[0], rtol=1e-6)
            np.testing.assert_allclose(result[1], expected[1], rtol=1e-6, atol=1e-8)
    assert failures == []


def _overlapping_builds(pool):
    """Make two threads' graph builds overlap if anything lets them, and report what happened.

    The loss's ``hybrid_forward`` runs inside ``block.name_scope`` when the graph is
    built. Each thread that gets there waits up to 0.5 s for the other to arrive too,
    so unserialized builds overlap every time, not by chance.
    """
    loss, arrays = _softmax()
    loss.hybridize()
    inside, most_inside = [0], [0]
    arrived = threading.Barrier(2)
    lock = threading.Lock()
    build = loss.hybrid_forward

    def rendezvous_build(F, *args, **kwargs):
        if F is mx.sym:
            with lock:
                inside[0] += 1
                most_inside[0] = max(most_inside[0], inside[0])
            try:
                arrived.wait(timeout=0.5)
            except threading.BrokenBarrierError:
                pass
            with lock:
                inside[0] -= 1
        return build(F, *args, **kwargs)
    loss.hybrid_forward = rendezvous_build
    futures = [pool.submit(run_loss, loss, *arrays, ctx=ctx) for ctx in CONTEXTS]
    return [f.exception() for f in futures], most_inside[0]


def test_graph_builds_never_overlap(pool):
    errors, most_inside = _overlapping_builds(pool)
    assert errors == [None, None]
    assert most_inside == 1


def test_without_the_lock_overlapping_builds_fail(pool, monkeypatch):
    # The control for the test above: the same rendezvous, with the serialization
    # removed, reproduces the reported failure.
    monkeypatch.setattr(mxnet_internals, "SETUP_LOCK", contextlib.nullcontext())
    errors, most_inside = _overlapping_builds(pool)
    assert most_inside == 2
    assert any(isinstance(e, AttributeError) and "__exit__" in str(e) for e in errors), errors


def test_class_weights_reach_every_new_context_at_once():
    contexts = [mx.cpu(i) for i in range(1, 5)]
    for _ in range(20):
        loss = WeightedSoftmaxCELoss(class_weight=[1, 2, 3, 4, 5])  # lives on cpu(0)
        barrier = threading.Barrier(len(contexts))

        def call(ctx):
            barrier.wait()
            return loss(mx.nd.array(LOGITS, ctx=ctx), mx.nd.array([0, 1, -1, 4], ctx=ctx))
        with ThreadPoolExecutor(len(contexts)) as executor:
            outputs = [f.result() for f in [executor.submit(call, c) for c in contexts]]
        assert set(loss.class_weight.list_ctx()) == {mx.cpu(0)} | set(contexts)
        for out in outputs[1:]:
            np.testing.assert_allclose(out.asnumpy(), outputs[0].asnumpy(), rtol=1e-6)
