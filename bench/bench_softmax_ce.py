"""Forward+backward time and memory of WeightedSoftmaxCELoss against the usual alternatives.

Every contender is hybridized where it can be and timed in the same process,
interleaved round-robin so that machine noise hits all of them alike; each turn starts
with discarded calls, so that every contender is timed warm, as in a training loop.
Printed ratios are medians over the rounds, relative to gluon's unweighted
SoftmaxCrossEntropyLoss; the graph is also compared with the loss as it was before the
fused operator (bench/pre_fused_graph.py). PyTorch is not timed here, where it would
share MXNet's process, cores and thread pools: bench/bench_vs_torch.py runs each
framework in a process of its own. The peak extra memory of one
forward + backward is measured per contender in a fresh process (peak resident set
size during the first call, minus the size before it).

    OMP_NUM_THREADS=2 python -m bench.bench_softmax_ce [--rounds 30] [--quick] [--no-memory]
"""
import argparse
import functools
import os
import subprocess
import sys

import numpy as np
import mxnet as mx
from mxnet import gluon

from gluon_losses import WeightedSoftmaxCELoss, fused
from bench.pre_fused_graph import PreFusedGraph
from bench import softmax_cases
from bench.softmax_cases import CASES, IGNORE
from bench.timing import forward_backward_seconds, interleave

TURN_WARMUP_SECONDS = 0.02
MEMORY_CASE = ("(4, 21, 256, 256) axis=1", (4, 21, 256, 256), 1)
BASELINE = "gluon SoftmaxCELoss (unweighted)"
FUSED = "WeightedSoftmaxCELoss, fused"
GRAPH = "WeightedSoftmaxCELoss, graph (fused=False)"
BEFORE = "graph before the fused operator"


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
    pred, label, class_weight = softmax_cases.make_inputs(shape, axis, seed)
    return mx.nd.array(pred), mx.nd.array(label), class_weight


def contenders(shape, axis, class_weight):
    ours = dict(class_weight=class_weight, axis=axis, ignore_label=IGNORE, normalization="valid")
    blocks = {
        BASELINE: gluon.loss.SoftmaxCrossEntropyLoss(axis=axis),
        FUSED: WeightedSoftmaxCELoss(**ours),
        GRAPH: WeightedSoftmaxCELoss(fused=False, **ours),
        "SoftmaxOutput": SoftmaxOutputLoss(axis, len(shape)),
    }
    blocks[BEFORE] = PreFusedGraph(**ours)
    blocks["NumPy CustomOp"] = NumpyCustomOpLoss(class_weight, axis)
    if not fused.available():
        del blocks[FUSED]
    for block in blocks.values():
        block.hybridize(static_alloc=True, static_shape=True)
    return blocks


def run_case(shape, axis, rounds, warmup=3, calls_per_turn=1):
    pred, label, class_weight = make_inputs(shape, axis)
    pred.attach_grad()
    blocks = contenders(shape, axis, class_weight)
    calls = {name: functools.partial(forward_backward_seconds, block, pred, label)
             for name, block in blocks.items()}
    # Each turn starts with discarded calls: between two turns of one contender the
    # machine may reclaim its idle memory, and a training loop never pays for that.
    result = interleave(calls, rounds, warmup_rounds=warmup, block=calls_per_turn,
                        warmup_seconds=TURN_WARMUP_SECONDS)
    return {name: float(np.median(r["turns"])) for name, r in result.items()}


def _status_kib(field):
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def measure_peak_extra_mib(name, shape, axis):
    """Peak resident memory added by the first forward + backward of one contender (MiB).

    Linux only: the peak resident set size (VmHWM) is reset just before the call, so
    the transient arrays that made the inputs do not hide what the step allocates.
    """
    pred, label, class_weight = make_inputs(shape, axis)
    block = contenders(shape, axis, class_weight)[name]
    step = functools.partial(forward_backward_seconds, block, pred, label)
    mx.nd.waitall()
    with open("/proc/self/clear_refs", "w") as clear_refs:
        clear_refs.write("5")  # resets VmHWM to the current resident size
    before = _status_kib("VmRSS")
    pred.attach_grad()  # the gradient buffer counts
    step()
    mx.nd.waitall()
    return (_status_kib("VmHWM") - before) / 1024.0


def peak_memory_table(case):
    """{contender: peak extra MiB} for ``case``, each measured in a fresh process."""
    case_name, shape, axis = case
    names = list(contenders(shape, axis, np.ones(shape[axis])))
    table = {}
    for name in names:
        output = subprocess.run(
            [sys.executable, "-m", "bench.bench_softmax_ce", "--memory-of", name,
             "--memory-case", repr((shape, axis))], stdout=subprocess.PIPE, check=True,
            universal_newlines=True).stdout
        table[name] = float(output.strip().splitlines()[-1])
    return table


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--quick", action="store_true", help="5 rounds, for a smoke run")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory table")
    parser.add_argument("--memory-of", help=argparse.SUPPRESS)
    parser.add_argument("--memory-case", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.memory_of:
        import ast
        shape, axis = ast.literal_eval(args.memory_case)
        print("%.1f" % measure_peak_extra_mib(args.memory_of, tuple(shape), axis))
        return None
    rounds = 5 if args.quick else args.rounds
    print("forward+backward, hybridized, median of %d interleaved rounds, each turn after "
          "%d ms of discarded calls; ratio = time / %s; OMP_NUM_THREADS=%s" % (
              rounds, TURN_WARMUP_SECONDS * 1e3, BASELINE,
              os.environ.get("OMP_NUM_THREADS", "unset")))
    print("peak MiB: resident memory added by the first forward+backward, in a fresh process")
    print("| shape | loss | ms | ratio | peak MiB |")
    print("|---|---|---:|---:|---:|")
    results = {}
    for case in CASES:
        case_name, shape, axis = case
        # Small calls take turns 15 at a time, as a training loop makes them.
        medians = run_case(shape, axis, rounds, calls_per_turn=softmax_cases.calls_per_turn(shape))
        memory = {} if args.no_memory else peak_memory_table(case)
        results[case_name] = {"seconds": medians, "peak_mib": memory}
        for name, seconds in medians.items():
            print("| %s | %s | %.3f | %.2fx | %s |" % (
                case_name, name, seconds * 1e3, seconds / medians[BASELINE],
                "%.1f" % memory[name] if name in memory else ""))
        print("| %s | graph / graph before the fused operator | | %.2fx | |" % (
            case_name, medians[GRAPH] / medians[BEFORE]))
    if not args.no_memory:
        print("\npeak extra memory of the first forward+backward, %s, each in a fresh process"
              % MEMORY_CASE[0])
        print("| loss | MiB |")
        print("|---|---:|")
        memory = peak_memory_table(MEMORY_CASE)
        for name, mib in memory.items():
            print("| %s | %.1f |" % (name, mib))
        results["memory"] = memory
    return results


if __name__ == "__main__":
    main()
