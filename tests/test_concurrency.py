"""Threads sharing one loss: 8 threads on one context (first and warm calls, with and
without class weights, imperative and hybridized with static memory), and one thread
per context, GluonCV's Parallel pattern. Each run is a subprocess, so that a crash
(MXNet's heap corruption, a segfault) fails the test instead of killing the suite."""
import pytest

from gluon_losses import fused
from loopback_cluster import run_python

SCRIPT = """
import threading
import numpy as np, mxnet as mx
from mxnet import autograd
from gluon_losses import WeightedSoftmaxCELoss

contexts = [mx.cpu(i) for i in range(%(contexts)d)]
rng = np.random.RandomState(0)
pred = rng.randn(64, 5).astype(np.float32)
label = rng.randint(-1, 5, 64).astype(np.float32)
failures, rounds = [], 0
for repetition in range(%(repetitions)d):
    for class_weight in (None, [1.0, 2.0, 3.0, 4.0, 5.0]):
        for hybridize in (False, True):
            def make():
                loss = WeightedSoftmaxCELoss(class_weight, fused=%(fused)s)
                if hybridize:
                    loss.hybridize(static_alloc=True, static_shape=True)
                return loss
            x = mx.nd.array(pred)
            x.attach_grad()
            with autograd.record():
                value = make()(x, mx.nd.array(label))
            value.backward()
            expected = value.asnumpy(), x.grad.asnumpy()
            shared = make()
            for warm in (False, True):  # the first calls build the graph, then warm ones
                barrier = threading.Barrier(len(contexts) * %(threads)d)
                def work(ctx):
                    try:
                        x = mx.nd.array(pred, ctx=ctx)
                        x.attach_grad()
                        y = mx.nd.array(label, ctx=ctx)
                        barrier.wait()
                        with autograd.record():
                            value = shared(x, y)
                        value.backward()
                        np.testing.assert_allclose(value.asnumpy(), expected[0], rtol=1e-6)
                        np.testing.assert_allclose(x.grad.asnumpy(), expected[1], rtol=1e-6,
                                                   atol=1e-8)
                    except Exception as error:
                        failures.append(repr(error)[:300])
                threads = [threading.Thread(target=work, args=(ctx,))
                           for ctx in contexts for _ in range(%(threads)d)]
                for thread in threads:
                    thread.start()
                for thread in threads:
                    thread.join()
                rounds += 1
print(rounds, len(failures), failures[:3])
"""

PATHS = [pytest.param("False", id="graph"),
         pytest.param("True", id="fused",
                      marks=pytest.mark.skipif(not fused.available(),
                                               reason="fused operator not built"))]


def _run(fused_choice, contexts, threads, repetitions):
    result = run_python(SCRIPT % dict(fused=fused_choice, contexts=contexts, threads=threads,
                                      repetitions=repetitions), timeout=240)
    assert result.returncode == 0, "exit %d: %s" % (result.returncode, result.stderr[-2000:])
    rounds, failures = result.stdout.split()[:2]
    assert int(rounds) == repetitions * 8 and failures == "0", result.stdout


@pytest.mark.parametrize("fused_choice", PATHS)
def test_eight_threads_on_one_context(fused_choice):
    _run(fused_choice, contexts=1, threads=8, repetitions=20)


@pytest.mark.parametrize("fused_choice", PATHS)
def test_four_threads_on_each_of_two_contexts(fused_choice):
    _run(fused_choice, contexts=2, threads=4, repetitions=5)


def test_one_thread_per_context_on_eight_contexts():
    _run("None", contexts=8, threads=1, repetitions=5)
