"""Module training iteration: gluon_losses.symbol.weighted_softmax_output vs SoftmaxOutput.

One iteration is ``mod.forward_backward(batch); mod.update()`` on a Module whose only
difference between contenders is the loss layer: ``mx.sym.SoftmaxOutput`` or the
class-weighted drop-in with the same arguments. Contenders are timed in one process,
interleaved (ABBA order); the printed ratio is the median of the per-round ratios
(drop-in / SoftmaxOutput), so drift in machine load cancels.

    python -m bench.bench_symbol [--rounds 30] [--quick]
"""
import argparse

import numpy as np
import mxnet as mx

from gluon_losses.symbol import weighted_softmax_output
from bench.timing import interleave, timed

LOSS_ARGS = dict(ignore_label=-1, use_ignore=True, normalization="valid")
# (name, data shape, label shape, hidden units, multi_output)
CASES = [
    ("RCNN head: 512 RoIs x 21 classes", (512, 256), (512,), 256, False),
    ("RPN-like multi_output: (8, 21, 1024)", (8, 64, 1024), (8, 1024), 64, True),
]


def build(loss, data_shape, hidden, num_classes, multi_output):
    """Two layers then the loss: FC-ReLU-FC, or 1x1 convolutions for multi_output."""
    data, label = mx.sym.var("data"), mx.sym.var("softmax_label")
    if multi_output:
        features = mx.sym.Activation(mx.sym.Convolution(data, kernel=(1,), num_filter=hidden,
                                                        name="conv1"), act_type="relu")
        scores = mx.sym.Convolution(features, kernel=(1,), num_filter=num_classes, name="cls")
    else:
        features = mx.sym.Activation(mx.sym.FullyConnected(data, num_hidden=hidden, name="fc1"),
                                     act_type="relu")
        scores = mx.sym.FullyConnected(features, num_hidden=num_classes, name="cls")
    if loss == "SoftmaxOutput":
        return mx.sym.SoftmaxOutput(scores, label, multi_output=multi_output, **LOSS_ARGS)
    weights = np.linspace(0.5, 2.0, num_classes)
    return weighted_softmax_output(scores, label, class_weight=weights,
                                   multi_output=multi_output, **LOSS_ARGS)


def iteration(loss, data_shape, label_shape, hidden, multi_output, num_classes=21, seed=0):
    """A callable timing one Module training iteration on a fixed batch."""
    rng = np.random.RandomState(seed)
    batch = mx.io.DataBatch(
        [mx.nd.array(rng.randn(*data_shape))],
        [mx.nd.array(rng.randint(-1, num_classes, size=label_shape))])
    mod = mx.mod.Module(build(loss, data_shape, hidden, num_classes, multi_output),
                        context=mx.cpu())
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
    print("| case | SoftmaxOutput ms | drop-in ms | ratio |")
    print("|---|---:|---:|---:|")
    ratios = {}
    for name, data_shape, label_shape, hidden, multi_output in CASES:
        contenders = {loss: iteration(loss, data_shape, label_shape, hidden, multi_output)
                      for loss in ("SoftmaxOutput", "weighted_softmax_output")}
        result = interleave(contenders, rounds, warmup_rounds=2, block=args.block,
                            alternate=True)
        per_round = {loss: np.array([np.median(turn) for turn in result[loss]["turns"]])
                     for loss in contenders}
        ratio = float(np.median(per_round["weighted_softmax_output"]
                                / per_round["SoftmaxOutput"]))
        ratios[name] = ratio
        print("| %s | %.3f | %.3f | %.3fx |" % (
            name, np.median(per_round["SoftmaxOutput"]) * 1e3,
            np.median(per_round["weighted_softmax_output"]) * 1e3, ratio))
    return ratios


if __name__ == "__main__":
    main()
