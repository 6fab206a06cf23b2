"""Faster R-CNN training-step time: WeightedSoftmaxCELoss vs gluon's unweighted loss.

    python -m bench.bench_faster_rcnn_step [--iters 40] [--hybridize]

One process, one network, one fixed batch from the generated shapes set. The two
RCNN classification losses alternate step by step (ABBA order, so drift in machine
load hits both alike), each step being exactly what examples/faster_rcnn runs:
forward, the four losses, backward, ``trainer.step``, then a wait for the results.
It prints median step times and their ratio, and separately times the two RCNN
classification losses alone (forward + backward on the model's ``cls_pred`` /
``cls_targets``), whose difference over the step time is the weighted loss's
share. Target: the weighted loss costs no more than 2% of the step.
"""
import argparse
import functools
import os
import tempfile

import numpy as np
import mxnet as mx
from gluoncv.utils.random import seed
from mxnet import autograd, gluon

from bench.timing import interleave, timed
from examples.faster_rcnn import data, model
from examples.faster_rcnn import train as T


def _interleave_pair(fns, iters, warmup):
    """{name: fn} -> {name: [seconds of each timed call]}, in ABBA order."""
    calls = {name: functools.partial(timed, fn) for name, fn in fns.items()}
    result = interleave(calls, iters, warmup_rounds=warmup, alternate=True)
    return {name: [t for turn in r["turns"] for t in turn] for name, r in result.items()}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--iters", type=int, default=40, help="timed steps per loss")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--loss-iters", type=int, default=300, help="timed loss-only calls per loss")
    p.add_argument("--batch-size", type=int, default=2)
    p.add_argument("--hybridize", action="store_true", help="hybridize network and losses")
    p.add_argument("--data-root", default=os.path.join(tempfile.gettempdir(), "bench_shapes"))
    args = p.parse_args(argv)

    train_set, _, classes = data.shapes_datasets(args.data_root, 16, 4, seed=0)
    seed(0)
    net = model.build_net("tiny", classes, args.batch_size)
    model.init_net(net, [mx.cpu()])
    weight = T.rcnn_class_weight(data.foreground_counts(train_set, len(classes)),
                                 T.Config.class_weighting, T.Config.beta)
    trainer = gluon.Trainer(net.collect_train_params(), "sgd",
                            {"learning_rate": 1e-4, "momentum": 0.9, "wd": 1e-4})
    steps = {}
    for name in ("weighted", "softmax"):
        losses = T.make_losses(name, weight)
        if args.hybridize:
            for loss in losses.values():
                loss.hybridize(static_alloc=True)
        steps[name] = T.DetectionStep(net, losses, weighted=name == "weighted")
    if args.hybridize:
        net.hybridize(static_alloc=True)
    loader = data.train_loader(train_set, net, args.batch_size, shuffle=False)
    shard = T.shards(next(iter(loader)), [mx.cpu()])[0]

    def run_step(step):
        def fn():
            parts = step.forward_backward(shard)
            trainer.step(args.batch_size)
            for part in parts:
                part.wait_to_read()
        return fn

    order = ["weighted", "softmax"]
    times = _interleave_pair({k: run_step(steps[k]) for k in order}, args.iters, args.warmup)

    # the two losses alone, on the model's own training output
    with autograd.train_mode():
        out = net(shard[0], shard[1][:, :, :4], shard[1][:, :, 4:5])
    cls_pred, cls_targets = out[0].detach(), out[8].detach()
    def run_loss(step):
        def fn():
            pred = cls_pred.copy()
            pred.attach_grad()
            with autograd.record():
                loss = step.rcnn_cls_loss(pred, cls_targets)
            loss.backward()
            pred.grad.wait_to_read()
        return fn

    loss_times = _interleave_pair({k: run_loss(steps[k]) for k in order}, args.loss_iters,
                                  args.warmup)

    med = {k: float(np.median(v)) for k, v in times.items()}
    lmed = {k: float(np.median(v)) for k, v in loss_times.items()}
    print("Faster R-CNN (tiny backbone, %d-px images resized to %dx%d, batch %d, %s, "
          "%d CPUs visible)" % (
        train_set[0][0].shape[0], shard[0].shape[2], shard[0].shape[3], args.batch_size,
        "hybridized" if args.hybridize else "imperative", os.cpu_count()))
    print("cls_pred %s, cls_targets %s (-1 entries: %d)" % (
        cls_pred.shape, cls_targets.shape, int((cls_targets == -1).sum().asscalar())))
    print("%-34s %10s %10s" % ("", "weighted", "softmax"))
    print("%-34s %10.2f %10.2f" % ("training step, median ms", med["weighted"] * 1e3,
                                   med["softmax"] * 1e3))
    print("%-34s %10.2f %10.2f" % ("training step, p25 ms",
                                   np.percentile(times["weighted"], 25) * 1e3,
                                   np.percentile(times["softmax"], 25) * 1e3))
    print("%-34s %10.3f %10.3f" % ("RCNN cls loss alone (fwd+bwd), ms", lmed["weighted"] * 1e3,
                                   lmed["softmax"] * 1e3))
    ratio = med["weighted"] / med["softmax"]
    share = (lmed["weighted"] - lmed["softmax"]) / med["softmax"]
    share_total = lmed["weighted"] / med["softmax"]
    print("step time ratio weighted/softmax: %.4f (%+.2f%%)" % (ratio, (ratio - 1) * 100))
    print("extra cost of the weighted loss over gluon's, share of the step: %+.2f%%" % (share * 100))
    print("whole weighted loss, share of the step: %.2f%%" % (share_total * 100))
    verdict = "PASS" if share <= 0.02 else "FAIL"
    print("target: weighted loss costs <= 2%% of the step -> %s" % verdict)
    return {"step_ms": med, "loss_ms": lmed, "ratio": ratio, "extra_share": share,
            "weighted_share": share_total}


if __name__ == "__main__":
    main()
