"""Step time of CenterLoss against the two usual ways of writing center loss in MXNet.

One step is what a training iteration pays for the loss: forward inside
``autograd.record()``, backward, and the center update. The features are a leaf
array standing in for the network's output, so the network's own cost (the same for
every contender, and independent of K) does not dilute the ratios.

Contenders are timed in one process, interleaved round-robin so that machine noise
hits all of them alike. Each round gives every contender a turn: untimed steps for at
least ``--warmup-ms`` (at least one step), then ``--block`` timed ones (1 at the large
sizes, whose steps take milliseconds to seconds). Every figure is a median (best) over
the timed steps.

* ``CenterLoss``: this package, hybridized, with ``loss.trainer().step``.
* ``loop CustomOp``: the common MXNet recipe, a ``CustomOp`` keeping the centers in
  an auxiliary state and looping over the samples in Python (host sync included).
* ``distance matrix``: ``||x||^2 + ||c||^2 - 2 x c^T`` (B x K), masked by one-hot
  labels, with the centers learned by SGD (lr = alpha) as in the popular PyTorch
  version, hybridized.

Why a warm-up in every turn. A training loop runs the loss every iteration right
after the network's own MXNet work, with MXNet's engine threads busy. In a round-robin,
CenterLoss's turn starts right after half a second of the loop contender's Python:
its first step then costs about twice its steady step, and the next ones stay about
10 % slower for some 25 ms, whatever the loss (the bench prints the cost of one
elementwise op back to back and right after a loop step). That is the
protocol's cost, not the loss's. Every contender gets the same warm-up time, and the
bench prints the first step of each turn, outside the table, so the cold figure is
there to read too.

Why several processes at the MNIST-like size. Step times there are fractions of a
millisecond against tens of milliseconds, and on a shared 2-core machine they move
between processes, not within one: the loop contender runs at about 30 ms in some
processes and about 50 ms in others, for a whole process. So that case runs
``--processes`` times, each in a fresh Python process with its own interleaved rounds,
and the bench prints every process's figures and their median (as pyperf spreads a
benchmark over worker processes). The large sizes run once, in this process.

The MNIST-like case is also timed inside a training iteration of a small model (see
``TrainingIteration``): what each center-loss term adds to the iteration.

    python -m bench.bench_center [--rounds 15] [--processes 5] [--quick]
"""
import argparse
import functools
import json
import os
import subprocess
import sys

import numpy as np
import mxnet as mx
from mxnet import autograd, gluon, nd
from tqdm import tqdm

from gluon_losses import CenterLoss
from bench.timing import interleave, timed

ALPHA = 0.5
CASES = [  # (name, batch, feature_dim, num_classes)
    ("MNIST-like B=256 D=2 K=10", 256, 2, 10),
    ("B=512 D=512 K=10000", 512, 512, 10000),
    ("B=512 D=512 K=100000", 512, 512, 100000),
]
# CenterLoss alone at these K (B=512, D=512): the flatness check of the issue.
SCALE_KS = (1000, 100000)


class LoopCenterLossOp(mx.operator.CustomOp):
    """Center loss the usual CustomOp way: per-sample Python loops over NDArray rows."""

    def __init__(self, alpha):
        super().__init__()
        self.alpha = alpha
        self.diff = None

    def forward(self, is_train, req, in_data, out_data, aux):
        x, center = in_data[0], aux[0]
        labels = in_data[1].asnumpy().astype(int)
        self.diff = nd.zeros_like(x)
        for i, j in enumerate(labels):
            self.diff[i] = x[i] - center[int(j)]
        self.assign(out_data[0], req[0], 0.5 * nd.sum(nd.square(self.diff), axis=1))

    def backward(self, req, out_grad, in_data, out_data, in_grad, aux):
        labels = in_data[1].asnumpy().astype(int)
        center = aux[0]
        self.assign(in_grad[0], req[0], self.diff * out_grad[0].expand_dims(1))
        self.assign(in_grad[1], req[1], nd.zeros_like(in_data[1]))
        sums, counts = {}, {}
        for i, j in enumerate(labels):
            j = int(j)
            sums[j] = sums[j] + self.diff[i] if j in sums else self.diff[i].copy()
            counts[j] = counts.get(j, 0) + 1
        for j, total in sums.items():
            # c_j - alpha * sum(c_j - x_i) / (1 + n_j), with diff = x - c
            center[j] = center[j] + self.alpha * total / (1.0 + counts[j])


@mx.operator.register("bench_loop_center_loss")
class LoopCenterLossProp(mx.operator.CustomOpProp):
    def __init__(self, num_classes, alpha=ALPHA):
        super().__init__(need_top_grad=True)
        self.num_classes = int(num_classes)
        self.alpha = float(alpha)

    def list_arguments(self):
        return ["data", "label"]

    def list_outputs(self):
        return ["output"]

    def list_auxiliary_states(self):
        return ["center"]

    def infer_shape(self, in_shape):
        data = in_shape[0]
        return in_shape, [(data[0],)], [(self.num_classes, data[1])]

    def create_operator(self, ctx, shapes, dtypes):
        return LoopCenterLossOp(self.alpha)


class Contender:
    """A center-loss contender: ``loss(features, label)`` inside autograd.record(), and
    ``after_backward(batch_size)`` for whatever moves its centers after backward."""

    def after_backward(self, batch_size):
        """Nothing by default."""

    def step(self, x, label):
        """The loss alone: forward in autograd.record(), backward, center update, on
        leaf features ``x``."""
        with autograd.record():
            out = self.loss(x, label)
        out.backward()
        self.after_backward(x.shape[0])


class LoopCenterLoss(Contender):
    """The loop recipe as a contender: the centers live in the op's auxiliary state,
    and its backward moves them."""

    def __init__(self, num_classes, feature_dim):
        self.center = nd.zeros((num_classes, feature_dim))

    def loss(self, features, label):
        return nd.Custom(features, label, self.center, op_type="bench_loop_center_loss",
                         num_classes=self.center.shape[0], alpha=ALPHA)


class DistanceMatrixCenterLoss(gluon.HybridBlock):
    def __init__(self, num_classes, feature_dim, **kwargs):
        super().__init__(**kwargs)
        self._num_classes = num_classes
        with self.name_scope():
            self.centers = self.params.get("centers", shape=(num_classes, feature_dim),
                                           init=mx.init.Zero())

    def hybrid_forward(self, F, x, label, centers):
        dist = F.broadcast_add(
            F.broadcast_add(-2 * F.dot(x, centers, transpose_b=True),
                            F.sum(F.square(x), axis=1, keepdims=True)),
            F.sum(F.square(centers), axis=1).expand_dims(0))
        mask = F.one_hot(label, self._num_classes)
        return 0.5 * F.sum(dist * mask, axis=1)


class HybridContender(Contender):
    """A hybridized loss with centers, and the trainer that updates them."""

    def __init__(self, loss, make_trainer):
        self.loss = loss
        self.loss.initialize()
        self.loss.hybridize(static_alloc=True, static_shape=True)
        self.trainer = make_trainer(loss)

    def after_backward(self, batch_size):
        self.trainer.step(batch_size)


class TrainingIteration:
    """One SGD iteration of a small MNIST-like model, plus a center-loss contender.

    The model: 64 inputs (an 8x8 digit), a 128-unit ReLU layer, 2-D features, a linear
    10-class softmax head. It is deliberately light: the lighter the network, the less
    of a loss's cost hides behind the network's own work, so a loss's addition to
    the iteration is measured at its least flattering.
    """

    def __init__(self, contender=None, seed=0):
        mx.random.seed(seed)
        self.net = gluon.nn.HybridSequential()
        self.net.add(gluon.nn.Dense(128, activation="relu", in_units=64),
                     gluon.nn.Dense(2, in_units=128))
        self.head = gluon.nn.Dense(10, in_units=2)
        self.softmax_ce = gluon.loss.SoftmaxCrossEntropyLoss()
        self.net.initialize(mx.init.Xavier())
        self.head.initialize(mx.init.Xavier())
        for block in (self.net, self.head, self.softmax_ce):
            block.hybridize(static_alloc=True, static_shape=True)
        params = self.net.collect_params()
        params.update(self.head.collect_params())
        self.trainer = gluon.Trainer(params, "sgd", {"learning_rate": 0.01})
        self.contender = contender

    def step(self, x, label):
        with autograd.record():
            features = self.net(x)
            total = self.softmax_ce(self.head(features), label)
            if self.contender is not None:
                total = total + self.contender.loss(features, label)
        total.backward()
        self.trainer.step(x.shape[0])
        if self.contender is not None:
            self.contender.after_backward(x.shape[0])


class L2LossFloor(Contender):
    """gluon's L2Loss to zero targets, hybridized, no centers: the least any
    hybridized loss step (forward + backward) costs in MXNet here."""

    def __init__(self, batch, feature_dim):
        self.block = gluon.loss.L2Loss()
        self.block.hybridize(static_alloc=True, static_shape=True)
        self.target = nd.zeros((batch, feature_dim))

    def loss(self, features, label):
        return self.block(features, self.target)


def make_distance_matrix(num_classes, feature_dim):
    return HybridContender(DistanceMatrixCenterLoss(num_classes, feature_dim),
                           lambda loss: gluon.Trainer(loss.collect_params(), "sgd",
                                                      {"learning_rate": ALPHA}))


def make_ours(num_classes, feature_dim):
    return HybridContender(CenterLoss(num_classes, feature_dim, alpha=ALPHA),
                           lambda loss: loss.trainer())


def _batch(batch, feature_dim, num_classes, seed=0):
    rng = np.random.RandomState(seed)
    x = nd.array(rng.randn(batch, feature_dim))
    x.attach_grad()
    return x, nd.array(rng.randint(0, num_classes, batch))


def _timed(step, x, label):
    return timed(functools.partial(step, x, label))


def run_interleaved(contenders, rounds, block=1, warmup=0.0):
    """contenders: {name: (step, x, label)} -> {name: timings in s}.

    One untimed step each, then ``rounds`` rounds in which every contender takes a
    turn: untimed steps for at least ``warmup`` seconds, then ``block`` timed ones
    (see ``bench.timing.interleave``). Timings: ``median`` and ``best`` over all timed
    steps, ``rounds`` the median of each round's turn, ``first`` the median over
    turns of their first step.
    """
    calls = {name: functools.partial(_timed, step, x, label)
             for name, (step, x, label) in contenders.items()}
    result = interleave(calls, rounds, warmup_rounds=1, block=block, warmup_seconds=warmup)
    return {name: {"median": float(np.median(r["turns"])), "best": float(np.min(r["turns"])),
                   "rounds": [float(np.median(t)) for t in r["turns"]],
                   "first": float(np.median(r["firsts"]))}
            for name, r in result.items()}


def one_op_cost(loop_step, x, label, rounds):
    """(back to back, right after a loop step): median s of ``(x + 1).wait_to_read()``."""
    def one_op():
        return timed(lambda: x + 1)

    one_op()
    hot = [one_op() for _ in range(rounds)]
    cold = []
    for _ in range(rounds):
        loop_step(x, label)
        x.grad.wait_to_read()
        cold.append(one_op())
    return float(np.median(hot)), float(np.median(cold))


def _ms(timing):
    return "%.2f (%.2f)" % (timing["median"] * 1e3, timing["best"] * 1e3)


def _ratio(timing, ours, digits=0):
    return "%.*fx (%.*fx)" % (digits, timing["median"] / ours["median"],
                              digits, timing["best"] / ours["best"])


def _digits_batch(batch):
    """The first ``batch`` 8x8 digits of scikit-learn's copy, (batch, 64) in [0, 1]."""
    from sklearn.datasets import load_digits
    digits = load_digits()
    return (nd.array(digits.data[:batch] / 16.0),
            nd.array(digits.target[:batch].astype(np.float32)))


def small_case_worker(rounds, block, warmup):
    """Both protocols at the MNIST-like size in this process -> dict (seconds)."""
    _, batch, dim, classes = CASES[0]
    x, label = _batch(batch, dim, classes)
    contenders = {"ours": (make_ours(classes, dim).step, x, label),
                  "loop": (LoopCenterLoss(classes, dim).step, x, label),
                  "matrix": (make_distance_matrix(classes, dim).step, x, label),
                  "floor": (L2LossFloor(batch, dim).step, x, label)}
    loss_only = run_interleaved(contenders, rounds, block, warmup)
    one_op = one_op_cost(contenders["loop"][0], x, label, rounds)
    data, target = _digits_batch(batch)
    models = {"none": TrainingIteration(),
              "ours": TrainingIteration(make_ours(classes, dim)),
              "loop": TrainingIteration(LoopCenterLoss(classes, dim)),
              "matrix": TrainingIteration(make_distance_matrix(classes, dim))}
    in_training = run_interleaved({k: (m.step, data, target) for k, m in models.items()},
                                  rounds, block, warmup)
    return {"loss_only": loss_only, "in_training": in_training, "one_op": one_op}


def run_small_case(processes, rounds, block, warmup_ms):
    """small_case_worker in ``processes`` fresh Python processes, one after another."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    command = [sys.executable, "-m", "bench.bench_center", "--small-case-worker",
               "--rounds", str(rounds), "--block", str(block), "--warmup-ms", str(warmup_ms)]
    runs = []
    for _ in tqdm(range(processes), desc="MNIST-like case, fresh processes", unit="process",
                  file=sys.stderr, leave=False):
        done = subprocess.run(command, cwd=root, capture_output=True, text=True,
                              check=True)
        runs.append(json.loads(done.stdout.strip().splitlines()[-1]))
    return runs


def _over_processes(runs, protocol, name):
    """Median over processes of each one's median; best of all bests."""
    timings = [run[protocol][name] for run in runs]
    return {"median": float(np.median([t["median"] for t in timings])),
            "best": float(np.min([t["best"] for t in timings]))}


def per_process_ratios(runs, other):
    """Per process: median loss-only step of ``other`` / that of CenterLoss."""
    return [run["loss_only"][other]["median"] / run["loss_only"]["ours"]["median"]
            for run in runs]


def print_small_case_row(runs):
    steady = {k: _over_processes(runs, "loss_only", k) for k in ("ours", "loop", "matrix")}
    cells = [_ms(steady[k]) for k in ("ours", "loop", "matrix")]
    cells += ["%.0fx (%.0fx)" % (np.median(per_process_ratios(runs, k)),
                                 steady[k]["best"] / steady["ours"]["best"])
              for k in ("loop", "matrix")]
    print("| %s, median of %d process%s | %s |" % (
        CASES[0][0], len(runs), "" if len(runs) == 1 else "es", " | ".join(cells)))


def print_small_case_details(runs):
    loss_only = [run["loss_only"] for run in runs]
    print("\n%s, each process (median ms per step): CenterLoss %s; loop CustomOp %s; "
          "loop / ours %s" % (
              CASES[0][0], " ".join("%.2f" % (r["ours"]["median"] * 1e3) for r in loss_only),
              " ".join("%.1f" % (r["loop"]["median"] * 1e3) for r in loss_only),
              " ".join("%.0fx" % r for r in per_process_ratios(runs, "loop"))))
    print("MXNet's floor, gluon L2Loss forward + backward (no centers, no update): %.2f ms "
          "(median over processes)" % (_over_processes(runs, "loss_only", "floor")["median"]
                                       * 1e3))
    first = {k: float(np.median([r[k]["first"] for r in loss_only])) for k in ("ours", "loop")}
    print("First step of each turn (cold, not in the table), median over processes: "
          "CenterLoss %.2f ms, loop CustomOp %.2f ms; loop / ours: %.0fx"
          % (first["ours"] * 1e3, first["loop"] * 1e3, first["loop"] / first["ours"]))
    hot, cold = np.median([run["one_op"] for run in runs], axis=0)
    print("One elementwise op + wait (x + 1 at B=256 D=2): %.3f ms back to back, %.3f ms "
          "right after a loop CustomOp step" % (hot * 1e3, cold * 1e3))


def print_training_iteration(runs):
    """What each loss adds to a training iteration, from paired per-round differences."""
    added = {}
    for name in ("ours", "loop", "matrix"):
        added[name] = np.array([
            np.subtract(run["in_training"][name]["rounds"], run["in_training"]["none"]["rounds"])
            for run in runs])
    print("\nInside a training iteration (MNIST-like: 256 8x8 digits, MLP 64-128-2 features, "
          "10-class softmax head, SGD; %d process%s): ms per iteration, median over "
          "processes; added = the median over rounds of (iteration with the loss - "
          "iteration without, same round), median over processes [90th percentile over "
          "all rounds]\n" % (len(runs), "" if len(runs) == 1 else "es"))
    print("| loss term | iteration | added | loop / ours |")
    print("|---|---|---|---|")
    print("| none (softmax only) | %.3f | - | - |"
          % (_over_processes(runs, "in_training", "none")["median"] * 1e3))
    # Per contender: median over processes of the median over rounds, and the 90th
    # percentile over every (process, round) pair; CenterLoss's, floored at 1 us, divide.
    typical = {k: float(np.median(np.median(v, axis=1))) for k, v in added.items()}
    high = {k: float(np.percentile(v, 90)) for k, v in added.items()}
    ours_typical, ours_high = max(typical["ours"], 1e-6), max(high["ours"], 1e-6)
    labels = {"ours": "CenterLoss", "loop": "loop CustomOp", "matrix": "distance matrix"}
    for name in ("ours", "loop", "matrix"):
        ratio = ("%.0fx, or more than %.0fx against the 90th percentile"
                 % (typical[name] / ours_typical, typical[name] / ours_high)
                 if name == "loop" else "-")
        print("| %s | %.3f | %+.3f [%+.3f] | %s |" % (
            labels[name], _over_processes(runs, "in_training", name)["median"] * 1e3,
            typical[name] * 1e3, high[name] * 1e3, ratio))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--block", type=int, default=10,
                        help="timed steps per contender turn at the MNIST-like size")
    parser.add_argument("--warmup-ms", type=float, default=20.0,
                        help="untimed steps for at least this long at the start of every "
                             "turn (at least one step; 0: none)")
    parser.add_argument("--processes", type=int, default=5,
                        help="fresh processes that each time the MNIST-like case")
    parser.add_argument("--quick", action="store_true",
                        help="5 rounds, 2 processes, and the baselines only at the two "
                             "smaller sizes")
    parser.add_argument("--small-case-worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    rounds = 5 if args.quick else args.rounds
    warmup = args.warmup_ms / 1e3
    if args.small_case_worker:
        print(json.dumps(small_case_worker(rounds, args.block, warmup)))
        return
    processes = min(args.processes, 2) if args.quick else args.processes
    if processes < 1:
        parser.error("--processes must be >= 1, got %d" % processes)
    print("mxnet %s, %d interleaved rounds; every turn %g ms of untimed steps, then %d "
          "timed steps (MNIST-like, in %d fresh process%s) or 1 (larger); the loss alone "
          "on leaf features: ms per step (forward + backward + center update), median "
          "(best)\n" % (mx.__version__, rounds, args.warmup_ms, args.block, processes,
                       "" if processes == 1 else "es"))
    print("| case | CenterLoss | loop CustomOp | distance matrix | loop / ours | matrix / ours |")
    print("|" + "---|" * 6)
    small_runs = run_small_case(processes, rounds, args.block, args.warmup_ms)
    print_small_case_row(small_runs)
    for index, (case, batch, dim, classes) in enumerate(CASES[1:], 1):
        x, label = _batch(batch, dim, classes)
        contenders = {"ours": (make_ours(classes, dim).step, x, label)}
        if not (args.quick and index == len(CASES) - 1):
            contenders["loop"] = (LoopCenterLoss(classes, dim).step, x, label)
            contenders["matrix"] = (make_distance_matrix(classes, dim).step, x, label)
        # The slow baselines here get fewer rounds; the ratio needs their order of
        # magnitude, not their third digit.
        timings = run_interleaved(contenders, max(3, rounds // 3), 1, warmup)
        ours = timings["ours"]
        cells = [_ms(timings[k]) if k in timings else "skipped" for k in ("loop", "matrix")]
        ratios = [_ratio(timings[k], ours) if k in timings else "-"
                  for k in ("loop", "matrix")]
        print("| %s |" % " | ".join([case, _ms(ours)] + cells + ratios))
        del contenders
    print_small_case_details(small_runs)
    print_training_iteration(small_runs)

    contenders = {}
    for classes in SCALE_KS:
        x, label = _batch(512, 512, classes, seed=1)
        contenders[classes] = (make_ours(classes, 512).step, x, label)
    timings = run_interleaved(contenders, rounds, 1, warmup)
    low, high = SCALE_KS
    print("\nCenterLoss alone, B=512 D=512: K=%d %s ms, K=%d %s ms; K=%d / K=%d: %s "
          "(target <= 3x)" % (low, _ms(timings[low]), high, _ms(timings[high]), high, low,
                              _ratio(timings[high], timings[low], 2)))


if __name__ == "__main__":
    main()
