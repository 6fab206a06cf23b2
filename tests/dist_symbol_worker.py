"""One worker of the loopback ``dist_sync`` test of ``gluon_losses.symbol`` (test_symbol.py).

Started with DMLC_ROLE=worker by tests/loopback_cluster.py. Each worker trains the
same Module (a softmax head and ``center_loss`` on the inputs) on its half of every
batch, with ``with_center_update`` running on the parameter server, and writes the
center-loss state after each batch to ``<out_dir>/state_rank<r>_step<s>.npy``.

    python -m tests.dist_symbol_worker OUT_DIR      # from the repository root
"""
import os
import sys

import numpy as np
import mxnet as mx

from gluon_losses.symbol import center_loss, center_state_name, with_center_update

# Shared with the test, which replays the same batches in one process.
NUM_CLASSES, FEATURE_DIM, BATCH, STEPS, ALPHA, SEED, LR = 6, 3, 16, 3, 0.5, 5, 0.1
STATE = center_state_name("center")


def build_symbol():
    data, label = mx.sym.var("data"), mx.sym.var("softmax_label")
    logits = mx.sym.FullyConnected(data, num_hidden=NUM_CLASSES, name="fc")
    return mx.sym.Group([
        mx.sym.SoftmaxOutput(logits, label, use_ignore=True, ignore_label=-1, name="softmax"),
        center_loss(data, label, NUM_CLASSES, FEATURE_DIM, alpha=ALPHA, ignore_label=-1)])


def batches():
    rng = np.random.RandomState(SEED)
    for _ in range(STEPS):
        x = rng.randn(BATCH, FEATURE_DIM).astype(np.float32)
        y = rng.randint(-1, NUM_CLASSES, size=BATCH).astype(np.float32)
        yield x, y


def initial_params():
    rng = np.random.RandomState(SEED + 1)
    return {"fc_weight": mx.nd.array(rng.randn(NUM_CLASSES, FEATURE_DIM) * 0.1),
            "fc_bias": mx.nd.zeros((NUM_CLASSES,)),
            STATE: mx.nd.zeros((NUM_CLASSES, FEATURE_DIM, 2))}


def optimizer():
    return with_center_update("sgd", learning_rate=LR, rescale_grad=1.0 / BATCH)


def main(out_dir):
    kv = mx.kv.create("dist_sync")
    rank, workers = kv.rank, kv.num_workers
    part = BATCH // workers
    mod = mx.mod.Module(build_symbol(), context=mx.cpu())
    mod.bind(data_shapes=[("data", (part, FEATURE_DIM))],
             label_shapes=[("softmax_label", (part,))])
    mod.init_params(arg_params=initial_params())
    mod.init_optimizer(kvstore=kv, optimizer=optimizer())
    for step, (x, y) in enumerate(batches()):
        mine = slice(rank * part, (rank + 1) * part)
        mod.forward_backward(mx.io.DataBatch([mx.nd.array(x[mine])], [mx.nd.array(y[mine])]))
        mod.update()
        arg_params, _ = mod.get_params()
        np.save(os.path.join(out_dir, "state_rank%d_step%d.npy" % (rank, step)),
                arg_params[STATE].asnumpy())


if __name__ == "__main__":
    main(sys.argv[1])
