"""Train GluonCV's Faster R-CNN with a class-weighted RCNN classification loss.

The RCNN classification loss is ``gluon_losses.WeightedSoftmaxCELoss`` with
``ignore_label=-1`` (GluonCV marks unsampled proposals with -1 in ``cls_targets``)
and ``normalization='valid'``, called as ``loss(cls_pred, cls_targets)``. The RPN
losses and the RCNN box loss are GluonCV's, with GluonCV's normalization. With
``rcnn_cls_loss='softmax'`` the step uses gluon's unweighted ``SoftmaxCrossEntropyLoss``
with GluonCV's mask-and-rescale arithmetic instead, so that the two can be compared
under one seed and schedule.

:func:`train` runs a whole experiment described by a :class:`Config`; ``cli.py``
builds that config from the command line. See docs/examples/faster_rcnn.md.
"""
import dataclasses
import json
import logging
import os
import sys
import time
from typing import Optional, Tuple

import numpy as np
import mxnet as mx
from mxnet import autograd, gluon

from gluon_losses import class_weights

from examples import common
from examples.faster_rcnn import data, model
from examples.faster_rcnn.evaluate import evaluate
from examples.faster_rcnn.export import export_detector

# The quantities GluonCV's FasterRCNN returns in training mode, in order.
TRAIN_OUTPUTS = ("cls_pred", "box_pred", "rpn_box_proposals", "samples", "matches",
                 "rpn_score", "rpn_box", "anchors", "cls_targets", "box_targets", "box_masks",
                 "indices")
LOSS_NAMES = ("rpn_cls", "rpn_box", "rcnn_cls", "rcnn_box")
# Settings that change how or where a run executes, not what it computes: a resumed run
# may change them; any other must equal the resumed run's (OUT/args.json).
RUNTIME = common.RUNTIME_FLAGS + ("data_root", "model_root", "num_workers", "val_interval",
                                  "save_interval", "export", "stall_timeout")


@dataclasses.dataclass(frozen=True)
class Config:
    """One training run. Each field is the command-line flag of the same name
    (``lr_decay_epochs`` is ``--lr-decay-epochs``); docs/examples/faster_rcnn.md
    describes them. Invalid values raise ValueError naming the field."""
    # data
    dataset: str = "shapes"
    lst_train: Optional[str] = None
    lst_test: Optional[str] = None
    data_root: Optional[str] = None
    voc_train: str = "2007/trainval"
    voc_test: str = "2007/test"
    classes: Optional[Tuple[str, ...]] = None
    shapes_train: int = 600
    shapes_test: int = 300
    shapes_size: int = 128
    shapes_freq: Tuple[float, ...] = data.DEFAULT_FREQUENCIES
    num_workers: int = 0
    # model
    network: str = "tiny"
    pretrained_base: bool = False
    model_root: str = model.DEFAULT_MODEL_ROOT
    short: Optional[int] = None
    max_size: Optional[int] = None
    # loss
    rcnn_cls_loss: str = "weighted"
    class_weighting: str = "effective"
    beta: float = 0.99
    background_weight: float = 1.0
    weight_scale: str = "counted-mean"
    # optimisation
    epochs: int = 10
    batch_size: int = 2
    optimizer: str = "sgd"
    lr: float = 0.02
    lr_decay: float = 0.1
    lr_decay_epochs: str = "7,9"
    lr_warmup: int = 100
    momentum: float = 0.9
    wd: float = 1e-4
    clip_gradient: float = 10.0
    seed: int = 0
    max_iters: int = 0
    # devices
    ctx: str = "cpu"
    gpus: str = ""
    kvstore: str = "device"
    horovod: bool = False
    stall_timeout: float = 600.0
    amp: bool = False
    hybridize: bool = True
    # output
    out: str = os.path.join("runs", "faster_rcnn")
    resume: Optional[str] = None
    val_interval: int = 2
    save_interval: int = 1
    export: bool = True
    quiet: bool = False

    def __post_init__(self):
        # JSON (args.json) gives lists back; tuples keep the config immutable
        for name in ("classes", "shapes_freq"):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, tuple(value))
        choices = {"dataset": data.SOURCES, "network": model.NETWORKS,
                   "rcnn_cls_loss": ("weighted", "softmax"),
                   "class_weighting": common.WEIGHTINGS,
                   "weight_scale": ("counted-mean", "library")}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError("%s must be one of %s, got %r"
                                 % (name, ", ".join(allowed), getattr(self, name)))
        if self.dataset == "voc" and not self.data_root:
            raise ValueError("dataset 'voc' needs data_root (the folder holding VOC2007/), "
                             "got %r" % (self.data_root,))
        if self.dataset == "lst" and not self.lst_train:
            raise ValueError("dataset 'lst' needs lst_train (a .lst file), got %r"
                             % (self.lst_train,))
        if self.dataset != "lst" and (self.lst_train or self.lst_test):
            raise ValueError("lst_train / lst_test are for dataset 'lst', got dataset %r"
                             % (self.dataset,))
        positive = ("epochs", "batch_size", "shapes_train", "shapes_test", "shapes_size",
                    "val_interval", "save_interval", "lr", "background_weight")
        for name in positive:
            if not getattr(self, name) > 0:
                raise ValueError("%s must be > 0, got %r" % (name, getattr(self, name)))
        for name in ("max_iters", "lr_warmup", "num_workers", "wd", "clip_gradient",
                     "stall_timeout"):
            if getattr(self, name) < 0:
                raise ValueError("%s must be >= 0, got %r" % (name, getattr(self, name)))
        if not 0 < self.lr_decay <= 1:
            raise ValueError("lr_decay must be in (0, 1], got %r" % (self.lr_decay,))
        # the schedule's own check, before any work is done
        common.lr_scheduler(self.lr, self.lr_decay, self.lr_decay_epochs, 1, self.lr_warmup)

    def as_json(self):
        """The fields as ``OUT/args.json`` holds them (tuples become lists)."""
        return json.loads(json.dumps(dataclasses.asdict(self)))


# --------------------------------------------------------------------------- data, weights

def build_datasets(config):
    """``(train, test or None, classes)`` of the configured source."""
    if config.dataset == "shapes":
        return data.shapes_datasets(config.data_root or os.path.join("data", "shapes"),
                                    config.shapes_train, config.shapes_test, config.seed,
                                    config.shapes_freq, config.shapes_size)
    if config.dataset == "voc":
        return data.voc_datasets(config.data_root, config.voc_train, config.voc_test)
    return data.lst_datasets(config.lst_train, config.lst_test, config.data_root,
                             config.classes)


def rcnn_class_weight(counts, weighting, beta, background_weight=1.0,
                      weight_scale="counted-mean"):
    """``(num_fg + 1,)`` float32 weights for GluonCV's ``cls_targets``, background first.

    ``weighting`` names a ``gluon_losses.class_weights`` estimator (``'none'``: ones)
    applied to the foreground ``counts``. ``weight_scale='counted-mean'`` rescales the
    foreground weights ``w`` so that ``sum(counts * w) = sum(counts)``: their mean over
    training instances is 1, so the weight of foreground against background stays as
    unweighted and only the split among foreground classes moves.
    """
    fg = class_weights.from_counts(weighting, counts, beta=beta)
    if weight_scale == "counted-mean":
        counts = np.asarray(counts, dtype=np.float64)
        fg = fg * counts.sum() / max(float(np.dot(counts, fg)), 1e-12)
    return np.concatenate([[background_weight], fg]).astype(np.float32)


# --------------------------------------------------------------------------- losses, step

def make_losses(rcnn_cls_loss, class_weight=None):
    """GluonCV's RPN and box losses, and the RCNN classification loss: ``'weighted'``
    (``WeightedSoftmaxCELoss`` with ``class_weight``) or ``'softmax'`` (gluon's)."""
    losses = {
        "rpn_cls": gluon.loss.SigmoidBinaryCrossEntropyLoss(from_sigmoid=False),
        "rpn_box": gluon.loss.HuberLoss(rho=1.0 / 9),
        "rcnn_box": gluon.loss.HuberLoss(rho=1.0),
    }
    if rcnn_cls_loss == "weighted":
        from gluon_losses import WeightedSoftmaxCELoss
        losses["rcnn_cls"] = WeightedSoftmaxCELoss(class_weight=class_weight, ignore_label=-1,
                                                   normalization="valid")
    else:
        losses["rcnn_cls"] = gluon.loss.SoftmaxCrossEntropyLoss()
    # Losses run hybridized even when the network does not: in imperative mode the
    # weighted loss reads cls_targets back to check them, and here they are an output
    # of the network's forward, so that check would wait for the whole forward pass
    # before Python could queue the backward. Hybridized, a bad label turns the loss
    # NaN instead (a few percent of a CPU step saved; see the step benchmark).
    for loss in losses.values():
        loss.hybridize()
    return losses


class DetectionStep(object):
    """Forward and backward of one device's shard; a GluonCV ``Parallelizable``.

    ``forward_backward`` returns the four per-shard losses (RPN cls, RPN box,
    RCNN cls, RCNN box), each of shape (batch,) and summing to what was
    back-propagated. ``weighted`` selects the call convention of the RCNN
    classification loss: ``loss(cls_pred, cls_targets)`` for the weighted loss,
    GluonCV's mask-and-rescale for gluon's ``SoftmaxCrossEntropyLoss``.
    """

    def __init__(self, net, losses, weighted, trainer=None, amp=False):
        self.net = net
        self.losses = losses
        self.weighted = weighted
        self.trainer = trainer
        self.amp = amp

    def rcnn_cls_loss(self, cls_pred, cls_targets):
        """(B,) loss whose sum over the batch is ``B`` times the valid-normalized loss."""
        if self.weighted:
            return self.losses["rcnn_cls"](cls_pred, cls_targets)
        num_valid = (cls_targets >= 0).sum()
        return self.losses["rcnn_cls"](cls_pred, cls_targets, cls_targets.expand_dims(-1) >= 0) \
            * cls_targets.size / num_valid

    def forward(self, data, label, rpn_cls_targets, rpn_box_targets, rpn_box_masks):
        """Losses of one shard, under ``autograd.record()`` by the caller."""
        gt_box, gt_label = label[:, :, :4], label[:, :, 4:5]
        out = self.net(data, gt_box, gt_label)
        cls_pred, box_pred, rpn_score, rpn_box = out[0], out[1], out[5], out[6]
        cls_targets, box_targets, box_masks = out[8], out[9], out[10]
        # RPN: GluonCV's losses, normalized by the number of sampled anchors
        rpn_score = rpn_score.squeeze(axis=-1)
        num_rpn = (rpn_cls_targets >= 0).sum()
        rpn_cls = self.losses["rpn_cls"](rpn_score, rpn_cls_targets, rpn_cls_targets >= 0) \
            * rpn_cls_targets.size / num_rpn
        rpn_box_l = self.losses["rpn_box"](rpn_box, rpn_box_targets, rpn_box_masks) \
            * rpn_box.size / num_rpn
        # RCNN: the classification loss under test, GluonCV's box loss
        rcnn_cls = self.rcnn_cls_loss(cls_pred, cls_targets)
        num_rcnn = (cls_targets >= 0).sum()
        rcnn_box = self.losses["rcnn_box"](box_pred, box_targets, box_masks) \
            * box_pred.size / num_rcnn
        return rpn_cls, rpn_box_l, rcnn_cls, rcnn_box

    def forward_backward(self, shard):
        with autograd.record():
            parts = self.forward(*shard)
            total = sum(part.sum() for part in parts)
            if self.amp:
                from mxnet.contrib import amp
                with amp.scale_loss(total, self.trainer) as scaled:
                    autograd.backward(scaled)
            else:
                total.backward()
        return parts


# --------------------------------------------------------------------------- loop helpers

def shards(batch, ctx):
    """Per-device tuples from a ``data.train_loader`` batch (already cut per device)."""
    per_field = []
    for field in batch:
        if isinstance(field, (list, tuple)):
            per_field.append([x.as_in_context(c) for x, c in zip(field, ctx)])
        else:
            per_field.append(gluon.utils.split_and_load(field, ctx, even_split=True))
    return list(zip(*per_field))


def _stop(executor):
    """End a GluonCV ``Parallel``'s worker threads (they are not daemons)."""
    from gluoncv.utils.parallel import Parallel
    for _ in executor._threads:
        executor._in_queue.put(Parallel._StopSignal("stop"))
    for thread in executor._threads:
        thread.join(10)
    executor._threads = []


def _setup_horovod():
    try:
        import horovod.mxnet as hvd
    except ImportError as error:
        raise ImportError("horovod=True needs horovod built with MXNet support "
                          "(HOROVOD_WITH_MXNET=1 pip install horovod): %s" % error) from error
    hvd.init()
    return hvd


def _epoch_line(entry, classes):
    line = "[epoch %d] lr=%.4g %s %.1fs %.1f img/s" % (
        entry["epoch"], entry["lr"], " ".join("%s=%.4f" % (k, entry[k]) for k in LOSS_NAMES),
        entry["time_s"], entry["images_per_s"])
    if "ap" in entry:
        line += " | mAP=%.4f (%s)" % (entry["ap"]["mAP"], ", ".join(
            "%s=%.3f" % (c, entry["ap"][c]) for c in classes))
    return line


# --------------------------------------------------------------------------- training

def _make_trainer(net, config, iters_per_epoch, hvd=None):
    """The trainer of ``net``'s training parameters, its optimizer holding the schedule."""
    opt_params = common.optimizer_params(
        config.optimizer, config.lr, config.wd, config.momentum, config.lr_decay,
        config.lr_decay_epochs, iters_per_epoch, config.lr_warmup, config.clip_gradient)
    params = net.collect_train_params()
    if hvd is not None:
        hvd.broadcast_parameters(net.collect_params(), root_rank=0)
        trainer = hvd.DistributedTrainer(params, config.optimizer, opt_params)
    else:
        trainer = gluon.Trainer(params, config.optimizer, opt_params, kvstore=config.kvstore,
                                update_on_kvstore=(False if config.amp else None))
    if config.amp:
        from mxnet.contrib import amp
        amp.init_trainer(trainer)
    return trainer


def _train_epoch(epoch, loader, iters, batch_size, step, executor, trainer, ctx,
                 show_progress, beat=None):
    """One epoch of at most ``iters`` steps; returns ``[mx.metric.Loss]`` per loss name,
    each the mean of that loss per image. ``beat(it)``, if given, is called before
    iteration ``it`` (a StallWatchdog's beat)."""
    from tqdm import tqdm
    metrics = [mx.metric.Loss(name) for name in LOSS_NAMES]
    with tqdm(total=iters, desc="epoch %d" % epoch, leave=False, disable=not show_progress,
              file=sys.stderr) as bar:
        for it, batch in enumerate(loader):
            if it >= iters:
                break
            if beat is not None:
                beat(it)
            parts = shards(batch, ctx)
            # The first call of an epoch traces what is hybridized (the losses once, the
            # network after each re-hybridize). Two threads tracing one block collide (a
            # block keeps one name scope for all threads): that call runs here, alone.
            alone = 1 if it == 0 else 0
            losses = [step.forward_backward(shard) for shard in parts[:alone]]
            for shard in parts[alone:]:
                executor.put(shard)
            losses += [executor.get() for _ in parts[alone:]]
            trainer.step(batch_size)
            for k, metric in enumerate(metrics):
                metric.update(None, [shard_losses[k] for shard_losses in losses])
            if not all(np.isfinite(m.sum_metric) for m in metrics):
                raise FloatingPointError(
                    "non-finite loss in epoch %d, iteration %d: running sums %s"
                    % (epoch, it + 1, {m.name: m.sum_metric for m in metrics}))
            bar.update(1)
            bar.set_postfix({m.name: "%.3f" % m.get()[1] for m in metrics})
    return metrics


def train(config):
    """Run the experiment ``config`` describes; returns what ``OUT/results.json`` holds.

    Writes ``OUT/args.json`` (the config), ``OUT/train.log``, ``OUT/checkpoints/``
    (``checkpoint.json`` naming the last epoch's ``net-NNNN.params`` /
    ``trainer-NNNN.states``, which hold the optimizer with its learning-rate schedule),
    ``OUT/export/`` (unless ``config.export`` is False) and ``OUT/results.json``: the
    config, class counts and weights, and per epoch (numbered from 1) the learning rate,
    the four mean losses per image, throughput and, on evaluation epochs, AP per class
    and mAP. With ``config.resume`` every setting outside :data:`RUNTIME` must equal the
    resumed run's (ValueError naming those that differ).
    """
    from gluoncv.utils.parallel import Parallel
    start = time.time()
    settings = config.as_json()
    common.check_resume(settings, RUNTIME)
    # A dead process of a distributed job leaves the others waiting forever; started
    # before horovod/the kvstore, whose start can hang as well.
    watchdog = common.stall_watchdog(
        config.horovod or "dist" in config.kvstore, config.stall_timeout,
        "horovod" if config.horovod else "the %s kvstore" % config.kvstore, config.out)
    watchdog.beat("starting the distributed job")
    hvd = _setup_horovod() if config.horovod else None
    rank0 = hvd is None or hvd.rank() == 0
    if hvd is not None:
        ctx = [mx.gpu(hvd.local_rank())] if config.gpus else [mx.cpu(hvd.local_rank())]
    else:
        ctx = common.parse_contexts(config.ctx, config.gpus)
    log = common.get_logger(config.out, quiet=config.quiet or not rank0, name="faster_rcnn")
    if not rank0:
        log.setLevel(logging.WARNING)
    else:
        common.write_json(os.path.join(config.out, common.ARGS),
                          {k: v for k, v in settings.items() if k != "resume"})
    if config.amp:
        from mxnet.contrib import amp
        amp.init(target_dtype="float16" if ctx[0].device_type == "gpu" else "bfloat16")
    common.set_seed(config.seed)

    train_set, test_set, classes = build_datasets(config)
    counts = data.foreground_counts(train_set, len(classes))
    class_weight = rcnn_class_weight(counts, config.class_weighting, config.beta,
                                     config.background_weight, config.weight_scale)
    weighted = config.rcnn_cls_loss == "weighted"
    log.info("classes %s, training instances %s", list(classes), counts.tolist())
    if weighted:
        log.info("RCNN cls loss: WeightedSoftmaxCELoss, %s weights (background first) %s",
                 config.class_weighting, np.round(class_weight, 4).tolist())
    else:
        log.info("RCNN cls loss: gluon SoftmaxCrossEntropyLoss with GluonCV masking (unweighted)")

    net = model.build_net(config.network, classes, config.batch_size, config.short,
                          config.max_size, config.pretrained_base, config.model_root)
    model.init_net(net, ctx)

    if hvd is not None:
        train_set = train_set.shard(hvd.size(), hvd.rank())
    loader = data.train_loader(train_set, net, config.batch_size, len(ctx),
                               num_workers=config.num_workers)
    iters = min(len(loader), config.max_iters) if config.max_iters else len(loader)
    if iters == 0:
        raise ValueError("batch_size: %d images per step (%d per device) exceed the %d "
                         "training images" % (config.batch_size * len(ctx), config.batch_size,
                                              len(train_set)))

    trainer = _make_trainer(net, config, iters, hvd)

    checkpoints = os.path.join(config.out, common.CHECKPOINTS)
    history, first_epoch = [], 1
    if config.resume:
        record = common.load_checkpoint(os.path.join(config.resume, common.CHECKPOINTS),
                                        {"net": net}, {"trainer": trainer}, ctx)
        first_epoch = record["epoch"] + 1
        history = record["history"]
        log.info("resumed from %s after epoch %d", config.resume, record["epoch"])

    step = DetectionStep(net, make_losses(config.rcnn_cls_loss, class_weight), weighted,
                         trainer, config.amp)
    # One thread per GPU. CPU contexts share one random generator (GluonCV's samplers
    # draw from it), which threads would consume in scheduling order: they run in turn,
    # so that a run repeats.
    threads = len(ctx) if len(ctx) > 1 and ctx[0].device_type == "gpu" else 0
    executor = Parallel(threads, step)
    try:
        show_progress = rank0 and not config.quiet
        with common.console_through_tqdm(log), watchdog:
            for epoch in range(first_epoch, config.epochs + 1):
                # shuffle and flips depend only on (seed, epoch), so a resumed run continues
                # the same sequence (the 0-based epoch index keeps the published runs' seeds)
                common.set_seed(config.seed * 1000 + epoch - 1)
                if config.hybridize:
                    net.hybridize(static_alloc=True)  # re-trace in training mode
                tic = time.time()

                def beat(it, epoch=epoch):
                    watchdog.beat("epoch %d, iteration %d/%d" % (epoch, it + 1, iters))

                metrics = _train_epoch(epoch, loader, iters, config.batch_size * len(ctx),
                                       step, executor, trainer, ctx, show_progress, beat)
                watchdog.beat("epoch %d: evaluation and checkpoint" % epoch)
                elapsed = time.time() - tic
                entry = {"epoch": epoch, "lr": trainer.learning_rate,
                         "time_s": round(elapsed, 2),
                         "images_per_s": round(metrics[0].num_inst / elapsed, 2)}
                entry.update({m.name: float(m.get()[1]) for m in metrics})
                last = epoch == config.epochs
                if rank0 and test_set is not None and (epoch % config.val_interval == 0 or last):
                    entry["ap"] = evaluate(net, test_set, ctx, classes, config.hybridize)
                history.append(entry)
                log.info(_epoch_line(entry, classes))
                if rank0 and (epoch % config.save_interval == 0 or last):
                    common.save_checkpoint(checkpoints, epoch, {"net": net},
                                           {"trainer": trainer},
                                           meta={"history": history, "classes": list(classes)})
    finally:
        _stop(executor)  # its worker threads would otherwise keep a failed run alive

    result = {"config": settings, "classes": list(classes), "train_counts": counts.tolist(),
              "class_weight": class_weight.tolist() if weighted else None,
              "history": history, "final_ap": history[-1].get("ap") if history else None,
              "wall_time_s": round(time.time() - start, 1)}
    if rank0 and config.export:
        result["export"] = export_detector(net, config.out, ctx, classes)
        log.info("exported %s-symbol.json / -0000.params", result["export"])
    if rank0:
        path = os.path.join(config.out, common.RESULTS)
        common.write_results(config.out, result)
        log.info("done in %.1fs; results in %s", result["wall_time_s"], path)
    if hvd is not None:
        # the ranks leave together: one that exits first shuts Horovod down, and rank 0's
        # evaluation or export then fails with "Horovod has been shut down"
        hvd.allreduce(mx.nd.zeros(1, ctx=ctx[0]), name="end_of_training").wait_to_read()
    return result
