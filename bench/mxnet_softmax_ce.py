"""MXNet's side of bench/bench_vs_torch.py: our loss on both paths, and MXNet's floor.

Runs in a process of its own (PyTorch is never imported here). Per case, interleaved
(bench/timing.py), each hybridized with ``static_alloc=True, static_shape=True``:

- ``fused``: ``WeightedSoftmaxCELoss(class_weight, ignore_label=-1,
  normalization='valid')``, the fused C++ operator (the default path);
- ``graph``: the same loss with ``fused=False`` (MXNet's own operators);
- ``floor``: ``F.identity(pred)``, the cheapest block whose backward writes the
  gradient: one cached-graph call forward, one backward, a logits-sized head gradient
  of ones that ``backward()`` fills and identity's backward copies into ``pred.grad``.
  No loss can take less in MXNet, so ``fused - floor`` is what the loss itself costs.

Every step records with ``autograd.record()``, calls ``backward()`` and waits for
``pred.grad``, which is attached once and overwritten, as in a training loop.

    OMP_NUM_THREADS=2 python -m bench.mxnet_softmax_ce [--rounds 20]

prints one JSON line: MXNet's version, the thread setting, and per case the median
milliseconds of each contender, and the loss with ``normalization='weight'`` (PyTorch's
``reduction='mean'``) and its gradient's magnitude sum, for the driver's cross-check.
"""
import argparse
import functools
import json
import os
import warnings

import numpy as np
import mxnet as mx
from mxnet import autograd, gluon

from gluon_losses import WeightedSoftmaxCELoss, fused
from bench.softmax_cases import CASES, IGNORE, calls_per_turn, make_inputs
from bench.timing import forward_backward_seconds, interleave

TURN_WARMUP_SECONDS = 0.02


class Floor(gluon.HybridBlock):
    """The MXNet floor: identity of the logits; the label is taken and left unused."""

    def hybrid_forward(self, F, pred, label):
        return F.identity(pred)


# Gluon warns that the floor leaves its label unused, which it does on purpose.
warnings.filterwarnings("ignore", message="The 1-th input to HybridBlock is not used")


def check(pred, label, class_weight, axis):
    """(loss, sum of |gradient|) of our loss with PyTorch's normalization, float64."""
    loss_fn = WeightedSoftmaxCELoss(class_weight=class_weight, axis=axis,
                                    ignore_label=IGNORE, normalization="weight")
    with autograd.record():
        out = loss_fn(pred, label)
    out.backward()
    # The output holds one value per sample and its mean is the loss; backward() of
    # the (batch,) output follows the sum, batch times the loss's gradient.
    batch = out.shape[0]
    return (float(out.asnumpy().astype(np.float64).mean()),
            float(np.abs(pred.grad.asnumpy().astype(np.float64)).sum()) / batch)


def run(rounds, warmup=3):
    if not fused.available():
        raise RuntimeError("the fused operator is not built in this checkout; build it with: "
                           "python -m gluon_losses.fused build")
    cases = []
    for name, shape, axis in CASES:
        pred, label, class_weight = make_inputs(shape, axis)
        pred, label = mx.nd.array(pred), mx.nd.array(label)
        pred.attach_grad()
        loss, grad_abs_sum = check(pred, label, class_weight, axis)
        ours = dict(class_weight=class_weight, axis=axis, ignore_label=IGNORE,
                    normalization="valid")
        blocks = {"fused": WeightedSoftmaxCELoss(fused=True, **ours),
                  "graph": WeightedSoftmaxCELoss(fused=False, **ours),
                  "floor": Floor()}
        for block in blocks.values():
            block.hybridize(static_alloc=True, static_shape=True)
        calls = {key: functools.partial(forward_backward_seconds, block, pred, label)
                 for key, block in blocks.items()}
        result = interleave(calls, rounds, warmup_rounds=warmup, block=calls_per_turn(shape),
                            warmup_seconds=TURN_WARMUP_SECONDS)
        cases.append({"case": name,
                      "ms": {key: float(np.median(r["turns"])) * 1e3
                             for key, r in result.items()},
                      "loss": loss, "grad_abs_sum": grad_abs_sum})
    return cases


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=20)
    args = parser.parse_args(argv)
    threads = os.environ.get("OMP_NUM_THREADS") or "default"
    print(json.dumps({"framework": "mxnet", "version": mx.__version__, "threads": threads,
                      "cases": run(args.rounds)}))


if __name__ == "__main__":
    main()
