"""Training with ``mx.mod.Module.fit``: the RCNN-style head and the center-loss network.

Functions take explicit arguments (tests call them directly); ``cli.py`` maps flags to them.
"""
import glob
import logging
import os
import re

import numpy as np
import mxnet as mx

from gluon_losses.symbol import WeightedCrossEntropy, center_state_name, with_center_update
from examples.common import (CHECKPOINTS, RESULTS, atomic_write, class_weight_vector,
                             lr_scheduler, set_seed, write_json)

from . import data as datasets

from .model import lenet_center, rcnn_head
from .report import center_metrics, classification_metrics

TASKS = ("rcnn", "center")


def checkpoint_epochs(prefix):
    """The epochs saved under ``prefix`` (``<prefix>-NNNN.params``), oldest first."""
    matches = (re.match(r".*-(\d{4})\.params$", path)
               for path in glob.glob(prefix + "-*.params"))
    return sorted(int(m.group(1)) for m in matches if m)


def last_checkpoint(prefix):
    """The newest epoch saved under ``prefix``, or 0."""
    return max(checkpoint_epochs(prefix), default=0)


def save_checkpoint(mod, prefix, epoch, optimizer_states=True):
    """Module's checkpoint files (what ``Module.load`` reads), each written by an atomic
    rename, parameters last; then the files of earlier epochs are deleted."""
    atomic_write("%s-symbol.json" % prefix, mod.symbol.save)
    if optimizer_states:
        atomic_write("%s-%04d.states" % (prefix, epoch), mod.save_optimizer_states)
    atomic_write("%s-%04d.params" % (prefix, epoch), mod.save_params)
    for old in checkpoint_epochs(prefix):
        for suffix in ("params", "states"):
            path = "%s-%04d.%s" % (prefix, old, suffix)
            if old != epoch and os.path.exists(path):
                os.remove(path)


def fit(symbol, train, contexts, kvstore, optimizer, epochs, prefix, eval_metric,
        initializer, resume=False, log=None, optimizer_params=()):
    """``mod.fit`` for ``epochs`` epochs (numbered from 1) with a checkpoint after each.

    With ``resume``, the newest checkpoint under ``prefix`` (parameters and, but for
    ``dist_sync`` runs, optimizer states; see :func:`save_checkpoint`) is loaded and
    training continues from the epoch after it. Returns the Module.
    """
    log = log or logging.getLogger(__name__)
    begin = last_checkpoint(prefix) if resume else 0
    if begin:
        states = os.path.exists("%s-%04d.states" % (prefix, begin))
        mod = mx.mod.Module.load(prefix, begin, load_optimizer_states=states, context=contexts,
                                 label_names=["softmax_label"])
        log.info("%s: resumed from epoch %d", os.path.basename(prefix), begin)
    else:
        mod = mx.mod.Module(symbol, context=contexts, label_names=["softmax_label"])
    os.makedirs(os.path.dirname(prefix), exist_ok=True)

    distributed = isinstance(kvstore, mx.kv.KVStore)

    def save(epoch, sym, arg, aux):
        # dist_sync workers hold the same parameters, and the optimizer states live on
        # the servers, where a worker cannot save them.
        if worker_rank(kvstore) == 0:
            save_checkpoint(mod, prefix, epoch + 1, optimizer_states=not distributed)

    mod.fit(train, eval_metric=eval_metric, kvstore=kvstore, optimizer=optimizer,
            optimizer_params=optimizer_params, initializer=initializer, begin_epoch=begin,
            num_epoch=epochs,
            epoch_end_callback=save,
            batch_end_callback=mx.callback.Speedometer(train.batch_size, 50))
    return mod


def worker_rank(kvstore):
    """This process's rank in a ``dist`` kvstore, 0 otherwise."""
    return kvstore.rank if isinstance(kvstore, mx.kv.KVStore) else 0


def kvstore_and_shard(kvstore, x, y):
    """The kvstore to give Module and this worker's share of ``(x, y)``.

    A ``dist`` kvstore is created here, so that its rank picks the shard (every
    ``num_workers``-th sample) and its size scales ``rescale_grad``; the others are
    passed to Module by name. Returns ``(kvstore, x, y, num_workers)``.
    """
    if "dist" not in str(kvstore):
        return kvstore, x, y, 1
    kv = mx.kv.create(kvstore)
    part = slice(kv.rank, None, kv.num_workers)
    return kv, x[part], y[part], kv.num_workers


def iterator(x, y, batch_size, shuffle, max_iters=0):
    it = mx.io.NDArrayIter(x, y, batch_size=batch_size, shuffle=shuffle,
                           last_batch_handle="discard" if shuffle else "pad")
    return mx.io.ResizeIter(it, max_iters) if max_iters else it


def run_rcnn(out, contexts, kvstore="device", epochs=16, batch_size=16, optimizer="sgd", lr=0.1,
             momentum=0.9, wd=1e-4, lr_decay=0.1, lr_decay_epochs=(), class_weighting="inverse",
             beta=0.999, max_iters=0, seed=0, resume=False, log=None):
    """Train the RCNN-style head on generated RoIs; returns its results (a dict)."""
    set_seed(seed)
    (x_train, y_train), (x_test, y_test) = (datasets.roi_batches(256, seed=seed + 1),
                                            datasets.roi_batches(64, seed=seed + 2))
    num_classes = int(y_train.max()) + 1
    counts = datasets.class_counts(y_train, num_classes)
    weights = class_weight_vector(class_weighting, counts, beta)
    kvstore, x_train, y_train, _ = kvstore_and_shard(kvstore, x_train, y_train)
    train = iterator(x_train, y_train, batch_size, True, max_iters)
    steps = max_iters or len(x_train) // batch_size
    # normalization='valid' averages over the kept RoIs already: no 1/batch rescale.
    params = dict(learning_rate=lr, momentum=momentum, wd=wd, rescale_grad=1.0,
                  lr_scheduler=lr_scheduler(lr, lr_decay, lr_decay_epochs, steps))
    # The weighted loss, logged from the probabilities (mx.metric.Accuracy in MXNet 1.9
    # has no ignore label: it would count the -1 RoIs as misses).
    metric = WeightedCrossEntropy(class_weight=weights, ignore_label=datasets.IGNORE)
    mod = fit(rcnn_head(num_classes, weights), train, contexts, kvstore,
              optimizer, epochs,
              os.path.join(out, CHECKPOINTS, "rcnn"), metric, mx.init.Xavier(),
              resume=resume, log=log, optimizer_params=params)
    probabilities = mod.predict(iterator(x_test, y_test, batch_size, False)).asnumpy()
    results = classification_metrics(probabilities, y_test, num_classes, datasets.IGNORE)
    results.update(class_counts=counts.tolist(), worker=worker_rank(kvstore),
                   class_weight=None if weights is None else np.asarray(weights).tolist())
    return results


def run_center(out, contexts, kvstore="device", epochs=16, batch_size=64, optimizer="sgd", lr=0.1,
               momentum=0.9, wd=5e-4, lr_decay=0.1, lr_decay_epochs=(), class_weighting="none",
               beta=0.999, max_iters=0, seed=0, resume=False, weight=0.01, alpha=0.5,
               feature_dim=2, log=None):
    """Train the LeNet-style network with softmax + center loss on digits; returns results."""
    set_seed(seed)
    (x_train, y_train), (x_test, y_test) = datasets.digits()
    num_classes = 10
    counts = datasets.class_counts(y_train, num_classes)
    weights = class_weight_vector(class_weighting, counts, beta)
    kvstore, x_train, y_train, workers = kvstore_and_shard(kvstore, x_train, y_train)
    train = iterator(x_train, y_train, batch_size, True, max_iters)
    steps = max_iters or len(x_train) // batch_size
    # rescale_grad for the global batch (the dist_sync workers together).
    optimizer = with_center_update(
        optimizer, learning_rate=lr, momentum=momentum, wd=wd,
        rescale_grad=1.0 / (batch_size * workers),
        lr_scheduler=lr_scheduler(lr, lr_decay, lr_decay_epochs, steps))
    mod = fit(lenet_center(num_classes, feature_dim, weight, alpha, weights), train, contexts,
              kvstore, optimizer, epochs, os.path.join(out, CHECKPOINTS, "center"),
              # The stock metric, told which of the three outputs to read.
              mx.metric.Accuracy(output_names=["softmax_output"], label_names=["softmax_label"]),
              mx.init.Xavier(), resume=resume, log=log)
    probabilities, _, features = (o.asnumpy() for o in mod.predict(
        iterator(x_test, y_test, batch_size, False)))
    state = mod.get_params()[0][center_state_name("center")].asnumpy()
    results = classification_metrics(probabilities, y_test, num_classes, datasets.IGNORE)
    results.update(center_metrics(features, y_test, state))
    results.update(class_counts=counts.tolist(), worker=worker_rank(kvstore),
                   class_weight=None if weights is None else np.asarray(weights).tolist())
    return results


def run(out, tasks=TASKS, log=None, **settings):
    """Run the ``tasks`` (``'rcnn'``, ``'center'``) with the shared ``settings`` (keyword
    arguments of :func:`run_rcnn` / :func:`run_center`); returns the results,
    ``{task: {...}}``, and writes them to ``OUT/results.json`` (the first ``dist_sync``
    worker only, as it alone writes checkpoints)."""
    center_only = ("weight", "alpha", "feature_dim")
    results = {}
    for task in tasks:
        if task == "rcnn":
            kwargs = {k: v for k, v in settings.items() if k not in center_only}
            results[task] = run_rcnn(out, log=log, **kwargs)
        elif task == "center":
            results[task] = run_center(out, log=log, **settings)
        else:
            raise ValueError("tasks must be taken from %s, got %r" % (TASKS, task))
        if log:
            log.info("%s: accuracy %.4f, balanced accuracy %.4f", task,
                     results[task]["accuracy"], results[task]["balanced_accuracy"])
    if all(task_results["worker"] == 0 for task_results in results.values()):
        write_json(os.path.join(out, RESULTS), results)
    return results
