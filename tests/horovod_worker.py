"""One rank of the Horovod tests in ``test_horovod.py``, started by ``horovodrun``.

Each rank trains on its half of every global batch and writes what it ends with to
``OUT_DIR``; the test compares the ranks with each other and with float64 references
over the global batches.

    python -m tests.horovod_worker OUT_DIR           # from the repository root

* CenterLoss through ``center.trainer(allreduce=horovod_allreduce())``, for every
  ``CENTER_RUNS`` entry: ``center_<name>_rank<r>_step<s>.npy``. The ``dist_center`` run
  replays the batches of ``tests/dist_center_worker.py`` (the dist_sync test), so the
  two ways of distributing can be compared.
* WeightedSoftmaxCELoss with a Dense layer under ``hvd.DistributedTrainer``, stepped
  with the per-worker batch: ``softmax_rank<r>.npz``.
"""
import os
import sys

import numpy as np
import mxnet as mx
from mxnet import autograd, gluon, nd

from gluon_losses import CenterLoss, WeightedSoftmaxCELoss
from gluon_losses.distributed import horovod_allreduce

try:
    from tests import dist_center_worker      # run as python -m tests.horovod_worker
except ImportError:
    import dist_center_worker                 # imported by the tests (tests/ on sys.path)

# horovod.mxnet is imported in main() only: the tests import this module for its batches,
# and Horovod's library (loaded with RTLD_GLOBAL) must stay out of the test process.
hvd = None

ALPHA, STEPS = 0.5, 3
# name: (num_classes, feature_dim, dense, global batch)
CENTER_RUNS = {"dense_100k": (100000, 2, True, 64), "sparse_100k": (100000, 8, False, 64),
               "dist_center": (dist_center_worker.NUM_CLASSES, dist_center_worker.FEATURE_DIM,
                               None, dist_center_worker.BATCH)}
SOFTMAX = dict(classes=5, features=6, batch=32, steps=3, lr=0.5, seed=7,
               class_weight=[1.0, 2.0, 0.5, 3.0, 1.5],
               # 'valid' divides by each worker's own count of labelled positions, which
               # differ between workers: 'batch' is what sums over workers exactly.
               normalization="batch")


def center_alpha(name):
    return dist_center_worker.ALPHA if name == "dist_center" else ALPHA


def center_batches(name):
    """The global batches of run ``name``: [(features, labels)], -1 ignored."""
    if name == "dist_center":
        return list(dist_center_worker.batches())
    num_classes, dim, _, batch = CENTER_RUNS[name]
    rng = np.random.RandomState(len(name))
    # Classes spread over the whole table, a few repeated, some on one rank only.
    classes = np.concatenate([[0, num_classes - 1], rng.randint(0, num_classes, size=20)])
    return [(rng.randn(batch, dim).astype(np.float32),
             np.concatenate([rng.choice(classes, size=batch - 2), [-1, -1]]).astype(np.float32))
            for _ in range(STEPS)]


def softmax_batches():
    rng = np.random.RandomState(SOFTMAX["seed"])
    return [(rng.randn(SOFTMAX["batch"], SOFTMAX["features"]).astype(np.float32),
             rng.randint(-1, SOFTMAX["classes"], size=SOFTMAX["batch"]).astype(np.float32))
            for _ in range(SOFTMAX["steps"])]


def softmax_net():
    net = gluon.nn.Dense(SOFTMAX["classes"], in_units=SOFTMAX["features"], prefix="net_")
    net.initialize(mx.init.Xavier(rnd_type="gaussian"))
    return net


def run_center(name, rank, size, out_dir):
    num_classes, dim, dense, batch = CENTER_RUNS[name]
    loss = CenterLoss(num_classes, dim, alpha=center_alpha(name), ignore_label=-1, dense=dense)
    loss.initialize(ctx=mx.cpu())
    if rank == 1:
        loss.centers.set_data(nd.ones(loss.centers.shape))  # rank 0's start must win
    hvd.broadcast_parameters(loss.collect_params(), root_rank=0)
    trainer = loss.trainer(allreduce=horovod_allreduce())
    part = batch // size
    for step, (x, y) in enumerate(center_batches(name)):
        with autograd.record():
            out = loss(nd.array(x[rank * part:(rank + 1) * part]),
                       nd.array(y[rank * part:(rank + 1) * part]))
        out.backward()
        trainer.step(part)
        np.save(os.path.join(out_dir, "center_%s_rank%d_step%d.npy" % (name, rank, step)),
                loss.centers.data().asnumpy())


def run_softmax(rank, size, out_dir):
    mx.random.seed(rank)  # different starts: the broadcast must make them equal
    net = softmax_net()
    loss = WeightedSoftmaxCELoss(class_weight=SOFTMAX["class_weight"],
                                 normalization=SOFTMAX["normalization"])
    net(nd.zeros((1, SOFTMAX["features"])))
    initial = net.weight.data().asnumpy() if rank == 0 else None
    hvd.broadcast_parameters(net.collect_params(), root_rank=0)
    trainer = hvd.DistributedTrainer(net.collect_params(), "sgd", {"learning_rate": SOFTMAX["lr"]})
    part = SOFTMAX["batch"] // size
    for x, y in softmax_batches():
        with autograd.record():
            out = loss(net(nd.array(x[rank * part:(rank + 1) * part])),
                       nd.array(y[rank * part:(rank + 1) * part]))
        out.backward()
        trainer.step(part)
    arrays = {name: p.data().asnumpy() for name, p in net.collect_params().items()}
    if initial is not None:
        arrays["initial_weight"] = initial
        arrays["initial_bias"] = np.zeros(SOFTMAX["classes"], np.float32)
    np.savez(os.path.join(out_dir, "softmax_rank%d.npz" % rank), **arrays)


def main(out_dir):
    global hvd
    import horovod.mxnet as hvd
    hvd.init()
    rank, size = hvd.rank(), hvd.size()
    print("rank %d of %d" % (rank, size), flush=True)
    for name in CENTER_RUNS:
        run_center(name, rank, size, out_dir)
    run_softmax(rank, size, out_dir)
    print("rank %d done" % rank, flush=True)


if __name__ == "__main__":
    main(sys.argv[1])
