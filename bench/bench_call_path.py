"""What the loss's own call path costs per call, against HybridBlock.forward.

``WeightedSoftmaxCELoss.forward`` runs its built graph through
``SerializedFirstCall._run_cached_graph`` (gluon_losses/mxnet_internals.py). It is there
for threads: each call hands the graph its parameters as handles of its own, which
threads sharing a context need (see that module). It also skips
``HybridBlock.forward``'s second pass over the arguments (their contexts and
structure), which ``_prepare`` has checked. This bench times forward + backward of the
same hybridized loss (``static_alloc``, ``static_shape``, class weights, ignore -1)
both ways, interleaved in one process (ABBA), median of rounds, so the private path
shows what it saves, or that it costs nothing.

    python -m bench.bench_call_path --rounds 30
"""
import argparse
import platform

import numpy as np
import mxnet as mx
from mxnet import autograd, gluon, nd

from bench.timing import interleave, timed
from gluon_losses import WeightedSoftmaxCELoss

SHAPES = [((2, 128, 81), -1), ((4, 21, 64, 64), 1)]


def make_loss(num_classes, axis, fast_path):
    loss = WeightedSoftmaxCELoss(class_weight=list(np.linspace(0.5, 2.0, num_classes)),
                                 axis=axis)
    loss.hybridize(static_alloc=True, static_shape=True)
    if not fast_path:  # the call path every other HybridBlock takes
        loss._run_cached_graph = lambda context, *args: gluon.HybridBlock.forward(loss, *args)
    return loss


def step_timer(loss, pred, label, calls):
    def run():
        for _ in range(calls):
            with autograd.record():
                value = loss(pred, label)
            value.backward()
    return run


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--calls", type=int, default=100, help="calls timed per turn")
    args = parser.parse_args(argv)
    print("MXNet %s, %s, %d rounds of %d calls" % (mx.__version__, platform.processor() or
                                                   platform.machine(), args.rounds, args.calls))
    print("| shape | own call path (ms) | HybridBlock.forward (ms) | saving per call |")
    print("|---|---:|---:|---:|")
    rng = np.random.RandomState(0)
    for shape, axis in SHAPES:
        classes = shape[axis]
        pred = nd.array(rng.randn(*shape))
        pred.attach_grad()
        label_shape = tuple(d for i, d in enumerate(shape) if i != axis % len(shape))
        label = nd.array(rng.randint(-1, classes, size=label_shape))
        calls = {name: step_timer(make_loss(classes, axis, fast), pred, label, args.calls)
                 for name, fast in (("own", True), ("block", False))}
        result = interleave({name: (lambda run=run: timed(run)) for name, run in calls.items()},
                            rounds=args.rounds, warmup_rounds=2, alternate=True)
        own, block = (np.median([t[0] for t in result[name]["turns"]]) / args.calls * 1e3
                      for name in ("own", "block"))
        print("| %s | %.4f | %.4f | %.4f ms (%.1f %%) |"
              % (shape, own, block, block - own, (block - own) / block * 100))


if __name__ == "__main__":
    main()
