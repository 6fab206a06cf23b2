"""One training run: a GluonCV FCN, main + aux loss, one class weighting, one seed.

:func:`train_run` takes every setting as an explicit argument, writes its checkpoints
every epoch and its ``results.json``, and continues from the last checkpoint when asked
to. A resumed run ends with the same parameters, bit for bit, as an uninterrupted one:

- batch order is a function of ``(seed, epoch)`` only;
- MXNet's generator (dropout in the FCN heads) is reseeded from ``(seed, epoch)`` at the
  start of every epoch, since its state cannot be saved;
- the learning-rate schedule lives in the optimizer, whose update count and momentum
  travel in the trainer states;
- images are read without random augmentation.
"""
import logging
import os
import time

import numpy as np
import mxnet as mx
from mxnet import autograd, gluon

from gluon_losses import MixWeightedSoftmaxCELoss
from examples import common
from examples.segmentation import evaluate
from examples.segmentation.model import build_fcn, initialize

# GluonCV's segmentation scripts normalise with the ImageNet statistics.
MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)


def to_network_input(images):
    """uint8 ``(N, H, W, 3)`` images to normalised float32 ``(N, 3, H, W)``."""
    scaled = (images.astype(np.float32) / 255.0 - MEAN) / STD
    return np.ascontiguousarray(scaled.transpose(0, 3, 1, 2))


def batch_order(num_images, batch_size, seed, epoch):
    """Shuffled full batches of indices; the order depends on ``seed`` and ``epoch`` only."""
    return common.shuffled_batches(num_images, batch_size, seed, epoch, drop_last=True)


def _epoch_seed(seed, epoch):
    return seed * 1000003 + epoch


def train_epoch(net, criterion, trainer, images, labels, batches, ctx, desc, quiet):
    """One pass over ``batches`` (index arrays); returns the mean loss per image."""
    from tqdm import tqdm
    total, seen = 0.0, 0
    bar = tqdm(batches, desc=desc, leave=False, disable=quiet, dynamic_ncols=True)
    for index in bar:
        xs = gluon.utils.split_and_load(images[index], ctx, even_split=False)
        ys = gluon.utils.split_and_load(labels[index], ctx, even_split=False)
        with autograd.record():
            losses = [criterion(*net(x), y) for x, y in zip(xs, ys)]
        autograd.backward(losses)
        trainer.step(len(index))
        total += sum(float(l.sum().asscalar()) for l in losses)
        seen += len(index)
        bar.set_postfix(loss="%.4f" % (total / seen))
    bar.close()
    return total / max(seen, 1)


def train_run(out, train_data, test_data, num_class, class_weight, seed=0, epochs=10,
              batch_size=16, optimizer="sgd", lr=0.05, momentum=0.9, wd=1e-4, lr_decay=0.1,
              lr_decay_epochs=(), aux_weight=0.2, normalization="weight",
              widths=(16, 32, 64, 96), ctx=(mx.cpu(),), kvstore="device", hybridize=True,
              max_iters=0, resume=False, quiet=False, log=None, display_indices=()):
    """Train one FCN and evaluate it on the test split after every epoch.

    Parameters
    ----------
    out : str
        Run folder: ``results.json``, ``predictions.npz``, ``checkpoints/``.
    train_data, test_data : (images, labels)
        uint8 ``(N, H, W, 3)`` images and int ``(N, H, W)`` labels, void -1.
    num_class : int
        Classes, void excluded.
    class_weight : array of shape (C,) or None
        Weights of both heads' losses (``MixWeightedSoftmaxCELoss``).
    resume : bool
        Continue from ``out/checkpoints`` when it holds a checkpoint.
    log : logging.Logger or None
        Receives one line per epoch.
    display_indices : sequence of int
        Test images whose predicted masks are kept in ``predictions.npz``.
    seed, epochs, batch_size, optimizer, lr, momentum, wd, lr_decay, lr_decay_epochs,
    aux_weight, normalization, widths, ctx, kvstore, hybridize, max_iters, quiet
        As the command-line flags of the same names (``cli.py``); ``ctx`` is a list of
        contexts, each batch split over them.

    Returns
    -------
    dict, the content of ``results.json``: ``history`` (per epoch: mean training
    loss, test pixel accuracy, per-class IoU, mIoU, seconds) and ``final``.
    """
    log = log or logging.getLogger(__name__)
    ctx = list(ctx)
    x_train, y_train = to_network_input(train_data[0]), train_data[1].astype(np.float32)
    x_test, y_test = to_network_input(test_data[0]), test_data[1]
    size = x_train.shape[-1]

    net = build_fcn(num_class, widths=widths, size=size)
    initialize(net, ctx, seed)
    iters = len(x_train) // batch_size  # full batches only
    iters = min(iters, max_iters) if max_iters else iters
    opt_args = common.optimizer_params(optimizer, lr, wd, momentum, lr_decay, lr_decay_epochs,
                                       iters)
    trainer = gluon.Trainer(net.collect_params(), optimizer, opt_args, kvstore=kvstore)
    criterion = MixWeightedSoftmaxCELoss(class_weight=class_weight, aux=True,
                                         aux_weight=aux_weight, ignore_label=-1,
                                         normalization=normalization)
    if hybridize:
        net.hybridize(static_alloc=True)
        criterion.hybridize(static_alloc=True)

    ckpt_dir = os.path.join(out, common.CHECKPOINTS)
    history, start = [], 1
    if resume and os.path.exists(os.path.join(ckpt_dir, "checkpoint.json")):
        record = common.load_checkpoint(ckpt_dir, {"net": net}, {"trainer": trainer}, ctx)
        history, start = record["history"], record["epoch"] + 1
        log.info("%s: resumed after epoch %d", out, record["epoch"])

    matrix = None  # the test confusion matrix after the last epoch trained here
    with common.console_through_tqdm(log):
        for epoch in range(start, epochs + 1):
            mx.random.seed(_epoch_seed(seed, epoch))
            tic = time.time()
            loss = train_epoch(net, criterion, trainer, x_train, y_train,
                               batch_order(len(x_train), batch_size, seed, epoch)[:iters], ctx,
                               "%s epoch %d/%d" % (os.path.basename(out), epoch, epochs), quiet)
            matrix = evaluate.confusion_matrix_of(net, x_test, y_test, num_class, ctx[0])
            scores = evaluate.scores(matrix)
            history.append({"epoch": epoch, "train_loss": loss, "lr": trainer.learning_rate,
                            "seconds": time.time() - tic, "miou": scores["miou"],
                            "iou": scores["iou"], "pixel_accuracy": scores["pixel_accuracy"]})
            log.info("%s epoch %d: loss %.4f  test mIoU %.4f  IoU %s  (%.1fs)",
                     os.path.basename(out), epoch, loss, scores["miou"],
                     " ".join("%.3f" % v for v in scores["iou"]), history[-1]["seconds"])
            common.save_checkpoint(ckpt_dir, epoch, {"net": net}, {"trainer": trainer},
                                   meta={"history": history})

    if matrix is None:  # resumed after the last epoch
        matrix = evaluate.confusion_matrix_of(net, x_test, y_test, num_class, ctx[0])
    final = evaluate.scores(matrix)
    final["confusion"] = matrix.tolist()
    results = {"history": history, "final": final, "epochs": epochs, "seed": seed,
               "class_weight": None if class_weight is None else
               [float(w) for w in class_weight]}
    indices = np.asarray(display_indices, dtype=np.int64)
    if indices.size:
        predicted = evaluate.predict(net, x_test[indices], ctx[0])
        np.savez_compressed(os.path.join(out, "predictions.npz"), indices=indices,
                            predicted=predicted.astype(np.uint8))
    common.write_results(out, results)
    return results
