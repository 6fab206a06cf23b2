"""Forward+backward time of WeightedSoftmaxCELoss against the usual alternatives.

Every contender is hybridized where it can be and timed in the same process,
interleaved round-robin so that machine noise hits all of them alike. Printed
ratios are medians over the rounds, relative to gluon's unweighted
SoftmaxCrossEntropyLoss.

    python -m bench.bench_softmax_ce [--rounds 30] [--quick]
"""
import argparse
import functools
import time

import numpy as np
import mxnet as mx
from mxnet import autograd, gluon

from gluon_losses import WeightedSoftmaxCELoss
from bench.timing import interleave

IGNORE = -1
CASES = [  # (name, pred shape, class axis)
    ("(131072, 21)", (131072, 21), -1),
    ("(2, 128, 81)", (2, 128, 81), -1),
    ("(4, 21, 64, 64) axis=1", (4, 21, 64, 64), 1),
]


class SoftmaxOutputLoss(gluon.HybridBlock):
    """mx.sym.SoftmaxOutput as a block: its backward ignores the head gradient."""

    def __init__(self, axis, ndim, **kwargs):
        super().__init__(**kwargs)
        self._multi_output = axis == 1 and ndim > 2
        self._preserve_shape = not self._multi_output and ndim > 2

    def hybrid_forward(self, F, pred, label):
        return F.SoftmaxOutput(pred, label, ignore_label=IGNORE, use_ignore=True,
                               normalization="valid", multi_output=self._multi_output,
                               preserve_shape=self._preserve_shape)


class NumpySoftmaxCE(mx.operator.CustomOp):
    """The common workaround: weighted softmax CE with a NumPy forward and backward."""

    def __init__(self, class_weight, axis):
        super().__init__()
        self.class_weight = class_weight
        self.axis = axis

    def _prob_and_terms(self, pred, label):
        pred = np.moveaxis(pred, self.axis, -1)
        shifted = pred - pred.max(axis=-1, keepdims=True)
        prob = np.exp(shifted)
        prob /= prob.sum(axis=-1, keepdims=True)
        keep = label != IGNORE
        index = np.where(keep, label, 0).astype(np.int64)
        weight = self.class_weight[index] * keep
        return prob, index, weight, max(keep.sum(), 1)

    def forward(self, is_train, req, in_data, out_data, aux):
        pred, label = in_data[0].asnumpy(), in_data[1].asnumpy()
        prob, index, weight, valid = self._prob_and_terms(pred, label)
        picked = np.take_along_axis(prob, index[..., None], axis=-1)[..., 0]
        loss = -weight * np.log(picked) / valid
        self.assign(out_data[0], req[0], mx.nd.array(loss))

    def backward(self, req, out_grad, in_data, out_data, in_grad, aux):
        pred, label = in_data[0].asnumpy(), in_data[1].asnumpy()
        prob, index, weight, valid = self._prob_and_terms(pred, label)
        grad = prob
        np.put_along_axis(grad, index[..., None],
                          np.take_along_axis(grad, index[..., None], axis=-1) - 1, axis=-1)
        grad *= (weight / valid)[..., None] * out_grad[0].asnumpy()[..., None]
        self.assign(in_grad[0], req[0], mx.nd.array(np.moveaxis(grad, -1, self.axis)))
        self.assign(in_grad[1], req[1], mx.nd.zeros_like(in_data[1]))


@mx.operator.register("bench_numpy_softmax_ce")
class NumpySoftmaxCEProp(mx.operator.CustomOpProp):
    def __init__(self, class_weight, axis):
        super().__init__(need_top_grad=True)
        self.class_weight = np.array([float(w) for w in class_weight.split(",")])
        self.axis = int(axis)

    def list_arguments(self):
        return ["pred", "label"]

    def infer_shape(self, in_shape):
        return in_shape, [in_shape[1]], []

    def create_operator(self, ctx, shapes, dtypes):
        return NumpySoftmaxCE(self.class_weight, self.axis)


class NumpyCustomOpLoss(gluon.HybridBlock):
    def __init__(self, class_weight, axis, **kwargs):
        super().__init__(**kwargs)
        self._weights = ",".join("%r" % float(w) for w in class_weight)
        self._axis = axis

    def hybrid_forward(self, F, pred, label):
        return F.Custom(pred, label, op_type="bench_numpy_softmax_ce",
                        class_weight=self._weights, axis=self._axis)


def make_inputs(shape, axis, seed=0):
    rng = np.random.RandomState(seed)
    num_classes = shape[axis]
    label_shape = tuple(s for i, s in enumerate(shape) if i != axis % len(shape))
    label = rng.randint(0, num_classes, size=label_shape).astype(np.float32)
    label[rng.rand(*label_shape) < 0.25] = IGNORE
    pred = rng.randn(*shape).astype(np.float32)
    class_weight = rng.uniform(0.5, 2.0, size=num_classes)
    return mx.nd.array(pred), mx.nd.array(label), class_weight


def contenders(shape, axis, class_weight):
    ours = WeightedSoftmaxCELoss(class_weight=class_weight, axis=axis, ignore_label=IGNORE,
                                 normalization="valid")
    blocks = {
        "gluon SoftmaxCELoss (unweighted)": gluon.loss.SoftmaxCrossEntropyLoss(axis=axis),
        "WeightedSoftmaxCELoss": ours,
        "SoftmaxOutput": SoftmaxOutputLoss(axis, len(shape)),
        "NumPy CustomOp": NumpyCustomOpLoss(class_weight, axis),
    }
    for block in blocks.values():
        block.hybridize(static_alloc=True, static_shape=True)
    return blocks


def time_step(block, pred, label):
    pred.attach_grad()
    start = time.perf_counter()
    with autograd.record():
        loss = block(pred, label)
    loss.backward()
    pred.grad.wait_to_read()
    return time.perf_counter() - start


def run_case(shape, axis, rounds, warmup=3):
    pred, label, class_weight = make_inputs(shape, axis)
    blocks = contenders(shape, axis, class_weight)
    calls = {name: functools.partial(time_step, block, pred, label)
             for name, block in blocks.items()}
    result = interleave(calls, rounds, warmup_rounds=warmup)
    return {name: float(np.median(r["turns"])) for name, r in result.items()}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--quick", action="store_true", help="5 rounds, for a smoke run")
    args = parser.parse_args(argv)
    rounds = 5 if args.quick else args.rounds
    baseline = "gluon SoftmaxCELoss (unweighted)"
    print("forward+backward, hybridized, median of %d interleaved rounds; ratio = time / %s"
          % (rounds, baseline))
    print("| shape | loss | ms | ratio |")
    print("|---|---|---:|---:|")
    results = {}
    for case_name, shape, axis in CASES:
        medians = run_case(shape, axis, rounds)
        results[case_name] = medians
        for name, seconds in medians.items():
            print("| %s | %s | %.3f | %.2fx |" % (case_name, name, seconds * 1e3,
                                                  seconds / medians[baseline]))
    return results


if __name__ == "__main__":
    main()
