"""PyTorch's side of bench/bench_vs_torch.py: forward+backward of weighted cross_entropy.

Runs in a process (and a venv) of its own, and never imports MXNet, whose thread pools
and libraries would share the process with PyTorch's. Only NumPy, torch and the
NumPy-only bench modules (softmax_cases, timing) are imported.

``F.cross_entropy(pred, target, weight=w, ignore_index=-1, reduction='mean')``: the
mean divides by the sum of the weights of the non-ignored positions, which is our
``normalization='weight'``; the timed MXNet loss uses ``'valid'`` (the count), a
difference of one scalar that does not change the work. ``(B, N, C)`` inputs are given
as ``(B*N, C)``; NCHW ones as they are (PyTorch's class axis is 1).

    .venv-bench/bin/python -m bench.torch_softmax_ce [--threads N] [--rounds 20]

prints one JSON line: the torch version, its thread count, and per case the median
milliseconds, the loss and the sum of the gradient's magnitudes (for the driver's
check that both frameworks solve the same problem).

``--load-mxnet-from DIR`` imports MXNet from the site-packages folder DIR before
anything is timed, and uses nothing of it: it only shows what a co-resident MXNet does
to PyTorch (``bench_vs_torch --co-resident``, docs/benchmarks.md).
"""
import argparse
import importlib
import json
import sys
import time

import numpy as np
import torch

from bench.softmax_cases import CASES, IGNORE, calls_per_turn, make_inputs
from bench.timing import interleave

TURN_WARMUP_SECONDS = 0.02


class TorchStep:
    """One forward + backward, timed; a fresh gradient buffer per step, as
    ``optimizer.zero_grad()`` (``set_to_none=True``, its default) leaves it."""

    def __init__(self, shape, axis):
        pred, label, class_weight = make_inputs(shape, axis)
        if axis % pred.ndim == pred.ndim - 1:  # PyTorch wants the classes on axis 1
            pred, label = pred.reshape(-1, pred.shape[-1]), label.reshape(-1)
        elif axis % pred.ndim != 1:
            raise ValueError("axis must be 1 or the last axis, got axis=%r for shape %r"
                             % (axis, shape))
        self.pred = torch.from_numpy(np.ascontiguousarray(pred)).requires_grad_()
        self.label = torch.from_numpy(label.astype(np.int64))
        self.weight = torch.from_numpy(class_weight.astype(np.float32))

    def loss(self):
        return torch.nn.functional.cross_entropy(self.pred, self.label, weight=self.weight,
                                                 ignore_index=IGNORE, reduction="mean")

    def __call__(self):
        start = time.perf_counter()
        self.pred.grad = None
        self.loss().backward()
        return time.perf_counter() - start

    def check(self):
        """(loss, sum of |gradient|) of one step, in float64, for the cross-check."""
        self.pred.grad = None
        loss = self.loss()
        loss.backward()
        return loss.item(), self.pred.grad.double().abs().sum().item()


def run(rounds, warmup=3):
    cases = []
    for name, shape, axis in CASES:
        step = TorchStep(shape, axis)
        loss, grad_abs_sum = step.check()
        result = interleave({"torch": step}, rounds, warmup_rounds=warmup,
                            block=calls_per_turn(shape), warmup_seconds=TURN_WARMUP_SECONDS)
        median_ms = float(np.median(result["torch"]["turns"])) * 1e3
        cases.append({"case": name, "ms": {"torch": median_ms}, "loss": loss,
                      "grad_abs_sum": grad_abs_sum})
    return cases


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int,
                        help="torch.set_num_threads(N); left out: PyTorch's default")
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--load-mxnet-from", metavar="DIR",
                        help="import MXNet from this site-packages first, to see what "
                             "sharing a process with it costs PyTorch")
    args = parser.parse_args(argv)
    if args.load_mxnet_from:
        # Appended: this venv's own NumPy and torch stay first on the path.
        sys.path.append(args.load_mxnet_from)
        importlib.import_module("mxnet")
    if args.threads is not None:
        if args.threads < 1:
            parser.error("--threads must be at least 1, got %d" % args.threads)
        torch.set_num_threads(args.threads)
    print(json.dumps({"framework": "torch", "version": torch.__version__,
                      "threads": torch.get_num_threads(),
                      "mxnet_loaded": bool(args.load_mxnet_from), "cases": run(args.rounds)}))


if __name__ == "__main__":
    main()
