"""One worker of the stall and resume tests in ``test_distributed.py``.

A small training loop (a Dense layer and a CenterLoss on a ``dist_sync`` kvstore)
guarded by :class:`gluon_losses.distributed.StallWatchdog`, with a checkpoint every
``CHECKPOINT_EVERY`` steps written by rank 0. Rank ``kill_rank`` kills itself with
SIGKILL when it reaches step ``kill_step`` (-1: never); ``--resume`` starts from the
checkpoint in ``OUT_DIR``. At the end each worker writes its parameters to
``OUT_DIR/final_rank<r>.npz``. ``--linger`` waits a second after each checkpoint and
after the loop, time for a test to kill the server at those points.

    python -m tests.dist_stall_worker OUT_DIR KILL_RANK KILL_STEP STALL_TIMEOUT [--resume] [--linger]
"""
import os
import signal
import sys
import time

import numpy as np
import mxnet as mx
from mxnet import autograd, gluon, nd

from gluon_losses import CenterLoss
from gluon_losses.distributed import StallWatchdog
from examples.common import load_checkpoint, save_checkpoint
from tests.dist_center_worker import network_trainer

NUM_CLASSES, FEATURE_DIM, BATCH, STEPS, CHECKPOINT_EVERY, SEED = 5, 3, 16, 8, 2, 11


def batch(step):
    rng = np.random.RandomState(SEED + step)
    return (rng.randn(BATCH, FEATURE_DIM).astype(np.float32),
            rng.randint(-1, NUM_CLASSES, size=BATCH).astype(np.float32))


def main(out_dir, kill_rank, kill_step, stall_timeout, resume, linger):
    resume_hint = "relaunch every process with --resume (checkpoint in %s)" % out_dir
    with StallWatchdog(stall_timeout, what="the dist_sync kvstore", resume=resume_hint,
                       watch_exit=True) as watchdog:
        watchdog.beat("creating the dist_sync kvstore")
        kv = mx.kv.create("dist_sync")
        rank, workers = kv.rank, kv.num_workers
        print("rank %d" % rank, flush=True)
        net = gluon.nn.Dense(FEATURE_DIM, in_units=FEATURE_DIM, prefix="net_")
        net.initialize(mx.init.Constant(0.1))
        loss = CenterLoss(NUM_CLASSES, FEATURE_DIM, alpha=0.5, weight=0.1, ignore_label=-1,
                          prefix="center_")
        loss.initialize()
        start = 0
        if resume:
            start = load_checkpoint(out_dir, {"net": net, "center": loss}, {}, mx.cpu())["step"]
        net_trainer = network_trainer(net, kv)
        center_trainer = loss.trainer(kvstore=kv)
        part = BATCH // workers
        for step in range(start, STEPS):
            watchdog.beat("step %d (forward, backward, kvstore push/pull)" % step)
            if rank == kill_rank and step == kill_step:
                os.kill(os.getpid(), signal.SIGKILL)
            x, y = batch(step)
            xs = nd.array(x[rank * part:(rank + 1) * part])
            ys = nd.array(y[rank * part:(rank + 1) * part])
            with autograd.record():
                out = loss(net(xs), ys)
            out.backward()
            net_trainer.step(BATCH)
            center_trainer.step(BATCH)
            mx.nd.waitall()
            if rank == 0 and (step + 1) % CHECKPOINT_EVERY == 0:
                save_checkpoint(out_dir, step + 1, {"net": net, "center": loss}, {},
                                meta={"step": step + 1})
                time.sleep(linger)
        np.savez(os.path.join(out_dir, "final_rank%d.npz" % rank),
                 **{name: p.data().asnumpy() for name, p in
                    list(net.collect_params().items()) + list(loss.collect_params().items())})
    time.sleep(linger)   # the kvstore is freed at exit, still watched (watch_exit)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]),
         "--resume" in sys.argv[5:], 1.0 if "--linger" in sys.argv[5:] else 0.0)
