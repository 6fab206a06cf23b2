"""Module training iteration: gluon_losses.symbol.weighted_softmax_output vs SoftmaxOutput.

One iteration is ``mod.forward_backward(batch); mod.update()`` on a Module whose only
difference between contenders is the loss layer: ``mx.sym.SoftmaxOutput`` or the
class-weighted drop-in with the same arguments. Contenders are timed in one process,
interleaved (ABBA order); the printed ratio is the median of the per-round ratios
(drop-in / SoftmaxOutput), so drift in machine load cancels, and the milliseconds are
each contender's best round (a round: the median of its iterations in that turn).

    python -m bench.bench_symbol [--rounds 30] [--quick]
"""
import argparse

import numpy as np
import mxnet as mx

from gluon_losses.symbol import weighted_softmax_output
from bench.timing import interleave, timed

LOSS_ARGS = dict(ignore_label=-1, use_ignore=True, normalization="valid")
# (name, data shape, label shape, network, classes, multi_output)
CASES = [
    ("Fast R-CNN classifier: 256 RoIs x 1024 -> FC 512 -> FC 21",
     (256, 1024), (256,), "fc", 21, False),
    ("RPN objectness: (1, 128, 38, 50) -> 3x3 conv 128 -> 1x1 conv 2x9, multi_output",
     (1, 128, 38, 50), (1, 9 * 38 * 50), "rpn", 2, True),
    ("segmentation: (4, 64, 32, 32) -> 3x3 conv 64 -> 1x1 conv 21, multi_output",
     (4, 64, 32, 32), (4, 32, 32), "conv", 21, True),
    ("loss-dominated: (8, 21, 1024) -> 1x1 conv 21, multi_output",
     (8, 21, 1024), (8, 1024), "conv1x1", 21, True),
]
ANCHORS = 9


def build(loss, network, num_classes, multi_output):
    """The network named by ``network``, then the loss layer."""
    data, label = mx.sym.var("data"), mx.sym.var("softmax_label")
    if network == "fc":
        hidden = mx.sym.FullyConnected(data, num_hidden=512, name="fc1")
        scores = mx.sym.FullyConnected(mx.sym.Activation(hidden, act_type="relu"),
                                       num_hidden=num_classes, name="cls")
    elif network == "conv1x1":
        scores = mx.sym.Convolution(data, kernel=(1,), num_filter=num_classes, name="cls")
    else:
        hidden = mx.sym.Convolution(data, kernel=(3, 3), pad=(1, 1),
                                    num_filter=128 if network == "rpn" else 64, name="conv1")
        outputs = num_classes * (ANCHORS if network == "rpn" else 1)
        scores = mx.sym.Convolution(mx.sym.Activation(hidden, act_type="relu"), kernel=(1, 1),
                                    num_filter=outputs, name="cls")
        if network == "rpn":
            # As MXNet's RCNN example: (1, 2A, H, W) -> (1, 2, A * H, W), labels (1, A*H*W).
            scores = mx.sym.reshape(scores, shape=(0, 2, -1, 0))
    if loss == "SoftmaxOutput":
        return mx.sym.SoftmaxOutput(scores, label, multi_output=multi_output, **LOSS_ARGS)
    return weighted_softmax_output(scores, label, class_weight=np.linspace(0.5, 2.0, num_classes),
                                   multi_output=multi_output, **LOSS_ARGS)


def iteration(loss, data_shape, label_shape, network, num_classes, multi_output, seed=0):
    """A callable timing one Module training iteration on a fixed batch."""
    rng = np.random.RandomState(seed)
    batch = mx.io.DataBatch(
        [mx.nd.array(rng.randn(*data_shape))],
        [mx.nd.array(rng.randint(-1, num_classes, size=label_shape))])
    mod = mx.mod.Module(build(loss, network, num_classes, multi_output), context=mx.cpu())
    mod.bind(data_shapes=[("data", data_shape)], label_shapes=[("softmax_label", label_shape)])
    mx.random.seed(seed)
    mod.init_params(mx.init.Xavier())
    mod.init_optimizer(optimizer="sgd", optimizer_params={"learning_rate": 1e-3,
                                                          "momentum": 0.9})

    def step():
        mod.forward_backward(batch)
        mod.update()

    return lambda: timed(step)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--block", type=int, default=5, help="timed iterations per turn")
    parser.add_argument("--quick", action="store_true", help="3 rounds, for smoke tests")
    args = parser.parse_args(argv)
    rounds = 3 if args.quick else args.rounds
    print("Module training iteration (forward_backward + update, SGD), CPU, median of %d "
          "interleaved rounds of %d iterations" % (rounds, args.block))
    print("| case | SoftmaxOutput ms (best) | drop-in ms (best) | ratio (median) |")
    print("|---|---:|---:|---:|")
    ratios = {}
    for name, data_shape, label_shape, network, num_classes, multi_output in CASES:
        contenders = {loss: iteration(loss, data_shape, label_shape, network, num_classes,
                                      multi_output)
                      for loss in ("SoftmaxOutput", "weighted_softmax_output")}
        result = interleave(contenders, rounds, warmup_rounds=2, block=args.block,
                            alternate=True)
        per_round = {loss: np.array([np.median(turn) for turn in result[loss]["turns"]])
                     for loss in contenders}
        ratio = float(np.median(per_round["weighted_softmax_output"]
                                / per_round["SoftmaxOutput"]))
        ratios[name] = ratio
        print("| %s | %.3f | %.3f | %.3fx |" % (
            name, per_round["SoftmaxOutput"].min() * 1e3,
            per_round["weighted_softmax_output"].min() * 1e3, ratio))
    return ratios


if __name__ == "__main__":
    main()
