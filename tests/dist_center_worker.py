"""One worker of the loopback ``dist_sync`` test in ``test_center.py``.

Started by the test with DMLC_ROLE=worker (the scheduler and the server are plain
``python -c "import mxnet"`` processes with their own DMLC_ROLE). Each worker trains
the same CenterLoss on its half of every batch and writes its centers after each step
to ``<out_dir>/centers_rank<r>_step<s>.npy``.

    python -m tests.dist_center_worker OUT_DIR      # from the repository root
"""
import os
import sys

import numpy as np
import mxnet as mx
from mxnet import autograd, gluon, nd

from gluon_losses import CenterLoss

# Shared with the test, which replays the same batches in one process.
NUM_CLASSES, FEATURE_DIM, BATCH, STEPS, ALPHA, SEED = 40, 4, 48, 4, 0.6, 3


def batches():
    rng = np.random.RandomState(SEED)
    for step in range(STEPS):
        x = rng.randn(BATCH, FEATURE_DIM).astype(np.float32)
        # A few classes first, then up to 30 (more rows than the smallest summed
        # block holds); classes 30..39 stay absent; -1 is ignored.
        y = rng.randint(-1, 5 if step == 0 else 30, size=BATCH).astype(np.float32)
        yield x, y


def network_trainer(net, kv):
    """SGD on the workers over the shared dist_sync kvstore, weights broadcast now.

    gluon.Trainer broadcasts its parameters lazily inside the first step(), and on CPU
    the dist kvstore lets that step's gradient push overtake the broadcast's pull, so a
    worker can start from the summed gradient instead of the weights (MXNet 1.9,
    kvstore_dist.h reuses the push buffer without waiting). Broadcast up front and
    wait. CenterTrainer broadcasts when created, before any push.
    """
    trainer = gluon.Trainer(net.collect_params(), "sgd", {"learning_rate": 0.1},
                            kvstore=kv, update_on_kvstore=False)
    trainer._init_kvstore()
    trainer._init_params()
    mx.nd.waitall()
    return trainer


def main(out_dir):
    kv = mx.kv.create("dist_sync")
    rank, workers = kv.rank, kv.num_workers
    loss = CenterLoss(NUM_CLASSES, FEATURE_DIM, alpha=ALPHA, ignore_label=-1)
    loss.initialize(ctx=mx.cpu())
    if rank == 1:
        # Worker 0's centers win at the first step; this start must not matter.
        loss.centers.set_data(nd.ones(loss.centers.shape))
    # A process holds one dist_sync kvstore: the network's trainer shares it (its keys
    # 0, 1 must not meet the center trainer's), updating on the workers so that the
    # servers only sum (an optimizer on the servers would apply to every key).
    net = gluon.nn.Dense(3, in_units=FEATURE_DIM)
    net.initialize(mx.init.Constant(0.1))
    net_trainer = network_trainer(net, kv)
    trainer = loss.trainer(kvstore=kv)
    part = BATCH // workers
    for step, (x, y) in enumerate(batches()):
        xs = nd.array(x[rank * part:(rank + 1) * part])
        ys = nd.array(y[rank * part:(rank + 1) * part])
        with autograd.record():
            out = loss(xs, ys)
            other = net(xs).sum(axis=1)
        autograd.backward([out, other])
        net_trainer.step(BATCH)
        trainer.step(BATCH)
        np.save(os.path.join(out_dir, "centers_rank%d_step%d.npy" % (rank, step)),
                loss.centers.data().asnumpy())
    np.save(os.path.join(out_dir, "counts_rank%d.npy" % rank),
            loss.center_counts.data().asnumpy())
    np.save(os.path.join(out_dir, "net_rank%d.npy" % rank), net.weight.data().asnumpy())


if __name__ == "__main__":
    main(sys.argv[1])
