"""Softmax vs softmax + center loss on 2-D features, trained side by side in one run.

:func:`run` trains a LeNets++-style network twice from the same initial weights: once
with ``WeightedSoftmaxCELoss`` alone and once with ``WeightedSoftmaxCELoss + CenterLoss``
(Wen et al., ECCV 2016). Both see the same batches in the same order. The run folder
gets ``args.json``, ``train.log``, ``results.json``, feature scatter plots, loss curves,
the parameters and ``checkpoints/``.
"""
import os
import platform
import time

import numpy as np
import mxnet as mx
from mxnet import autograd, gluon

import gluon_losses
from examples import common
from examples.center_loss import data as center_data
from examples.center_loss import report
from examples.center_loss.model import LeNetsPP
from examples.center_loss.report import MODELS

# Per data set: input size, channels per conv stage, epochs, epochs after which lr drops.
DATASET_DEFAULTS = {
    "digits": dict(size=16, channels=[16, 32, 64], epochs=24, lr_decay_epochs="16,21"),
    "mnist": dict(size=28, channels=[32, 64, 128], epochs=12, lr_decay_epochs="8,11"),
    "fashion-mnist": dict(size=28, channels=[32, 64, 128], epochs=12, lr_decay_epochs="8,11"),
}
# Settings a resumed run may change (where it runs, how it is watched, how long).
RUNTIME = common.RUNTIME_FLAGS + ("data_dir", "stall_timeout")


def make_kvstores(kind):
    """``(network kvstore, center kvstore, rank, workers)`` for ``--kvstore kind``."""
    if "dist" not in kind:
        return kind, kind, 0, 1
    # A process can hold only one dist_sync kvstore: the network trainer and the
    # CenterTrainer share it (CenterTrainer keeps its keys apart from gluon.Trainer's).
    kv = mx.kv.create(kind)
    return kv, kv, kv.rank, kv.num_workers


def build_models(num_classes, feature_dim, channels, convs_per_stage, size, class_weight,
                 alpha, lam, ctx):
    """The two networks (same initial weights), one softmax loss each, the CenterLoss."""
    nets = {}
    for model in MODELS:
        nets[model] = LeNetsPP(num_classes, feature_dim, channels, convs_per_stage,
                               size=size, prefix="%s_" % model)
        nets[model].initialize(mx.init.Xavier(magnitude=2.24), ctx=ctx)
    # both models start from the same weights, so the loss is the only difference
    for p_s, p_c in zip(nets["softmax"].collect_params().values(),
                        nets["center"].collect_params().values()):
        p_c.set_data(p_s.data(ctx[0]))
    # one loss block per model: a hybridized block with static memory shared by two
    # graphs in one backward pass would hand both the same buffers
    ce = {m: gluon_losses.WeightedSoftmaxCELoss(class_weight=class_weight) for m in MODELS}
    center_loss = gluon_losses.CenterLoss(num_classes, feature_dim, alpha=alpha, weight=lam)
    center_loss.initialize(ctx=ctx)
    return nets, ce, center_loss


def resolve_config(settings):
    """``run``'s arguments with the data set's defaults filled in; with ``resume``, checked
    against the resumed run's ``args.json`` (ValueError naming what differs)."""
    config = dict(settings)
    for key, value in DATASET_DEFAULTS[config["dataset"]].items():
        if config[key] is None:
            config[key] = value
    if config["class_weighting"] is None:
        config["class_weighting"] = "inverse" if config["imbalance"] > 1 else "none"
    config["channels"], config["minority"] = list(config["channels"]), list(config["minority"])
    common.check_resume(config, RUNTIME)
    return config


def make_trainers(nets, center_loss, optimizer, optimizer_params, net_kv, center_kv,
                  distributed):
    """One ``gluon.Trainer`` for both networks and the ``CenterTrainer`` of the centers.

    One trainer for both networks (their parameters are disjoint, so this is two
    independent optimisations), so that dist_sync needs a single kvstore. Updates run on
    the workers (``update_on_kvstore=False``), where the lr schedule lives.
    """
    net_params = nets["softmax"].collect_params()
    net_params.update(nets["center"].collect_params())
    net_trainer = gluon.Trainer(net_params, optimizer, optimizer_params, kvstore=net_kv,
                                update_on_kvstore=False)
    if distributed:
        # gluon.Trainer broadcasts lazily inside its first step(), and on CPU the dist
        # kvstore can let that step's gradient push overtake the broadcast's pull (MXNet
        # 1.9; see docs/distributed.md). Broadcast now and wait.
        net_trainer._init_kvstore()
        net_trainer._init_params()
        mx.nd.waitall()
    return net_trainer, center_loss.trainer(kvstore=center_kv)


def train_epoch(nets, ce, center_loss, net_trainer, center_trainer, x_train, y_train, order,
                ctx, rank=0, workers=1, progress=None, beat=None):
    """One pass over the index batches ``order``; returns ``{model: {metric: value}}``.

    Each batch is split over the workers (``rank`` of ``workers``), then over ``ctx``.
    ``progress``, if given, is a tqdm bar advanced once per batch; ``beat(i)``, if given,
    is called before batch ``i`` (a StallWatchdog's beat).
    """
    meters = {m: {"ce": mx.metric.Loss("ce"), "center": mx.metric.Loss("center"),
                  "train_accuracy": mx.metric.Accuracy(axis=1)} for m in MODELS}
    for i, idx in enumerate(order):
        if beat is not None:
            beat(i)
        batch_size = len(idx)                       # the global batch: all workers
        idx = np.array_split(idx, workers)[rank]    # this worker's part of it
        xs = gluon.utils.split_and_load(x_train[idx], ctx, even_split=False)
        ys = gluon.utils.split_and_load(y_train[idx].astype(np.float32), ctx, even_split=False)
        with autograd.record():
            out_s = [nets["softmax"](x) for x in xs]
            loss_s = [ce["softmax"](o, y) for (o, _), y in zip(out_s, ys)]
        with autograd.record():
            out_c = [nets["center"](x) for x in xs]
            loss_ce = [ce["center"](o, y) for (o, _), y in zip(out_c, ys)]
            loss_center = [center_loss(f, y) for (_, f), y in zip(out_c, ys)]
            loss_c = [a + b for a, b in zip(loss_ce, loss_center)]
        autograd.backward(loss_s + loss_c)
        net_trainer.step(batch_size)
        center_trainer.step(batch_size)
        for model, outs, ces in (("softmax", out_s, loss_s), ("center", out_c, loss_ce)):
            meters[model]["ce"].update(None, ces)
            meters[model]["train_accuracy"].update(ys, [o for o, _ in outs])
        meters["center"]["center"].update(None, loss_center)
        if progress is not None:
            progress.set_postfix(ce=_fmt(meters["softmax"]["ce"]), ce_c=_fmt(meters["center"]["ce"]),
                                 center=_fmt(meters["center"]["center"]))
            progress.update()
    return {m: {name: float(meter.get()[1]) if meter.num_inst else 0.0
                for name, meter in meters[m].items()} for m in MODELS}


def _fmt(meter):
    return "%.3f" % meter.get()[1] if meter.num_inst else "-"


def run(out, dataset="digits", data_dir=None, size=None, channels=None, convs_per_stage=2,
        feature_dim=2, lam=0.01, alpha=0.5, imbalance=1.0, minority=(5, 6, 7, 8, 9),
        class_weighting=None, beta=0.999, epochs=None, batch_size=64, optimizer="adam",
        lr=0.003, momentum=0.9, wd=0.0, lr_decay=0.1, lr_decay_epochs=None, seed=0,
        ctx="cpu", gpus="", kvstore="device", stall_timeout=600.0, hybridize=True, max_iters=0,
        quiet=False, resume=None, command=None):
    """Train both models and write the run folder ``out``; returns the results dict that
    is also written to ``out/results.json``.

    ``size``, ``channels``, ``epochs`` and ``lr_decay_epochs`` of None take the data set's
    defaults (:data:`DATASET_DEFAULTS`); ``class_weighting`` None is ``inverse`` under
    ``imbalance > 1`` and ``none`` otherwise. With ``resume=DIR`` training continues from
    ``DIR/checkpoints``; every setting outside :data:`RUNTIME` must equal DIR's ``args.json``.
    With a dist ``kvstore``, a process that makes no progress for ``stall_timeout``
    seconds (a dead worker, server or scheduler) exits with status 75 and a message
    saying how to resume (``gluon_losses.distributed.StallWatchdog``; 0: never).
    The other arguments are the command-line flags of the same names (docs/examples/center_loss.md).
    """
    config = resolve_config({k: v for k, v in locals().items() if k != "command"})
    size, epochs = config["size"], config["epochs"]
    class_weighting = config["class_weighting"]
    start_time = time.time()
    # Started before the kvstore: a cluster that never comes up stalls as well.
    watchdog = common.stall_watchdog("dist" in kvstore, stall_timeout,
                                     "the %s kvstore" % kvstore, out)
    watchdog.beat("creating the %s kvstore" % kvstore)
    net_kv, center_kv, rank, workers = make_kvstores(kvstore)
    # with dist_sync, worker 0 writes the run folder; the others only their log
    out_private = out if rank == 0 else os.path.join(out, "worker-%d" % rank)
    os.makedirs(out_private, exist_ok=True)
    log = common.get_logger(out_private, quiet=quiet, name="center_loss")
    watchdog.on_stall = log.error
    contexts = common.parse_contexts(ctx, gpus)
    ckpt_dir = os.path.join(out, common.CHECKPOINTS)
    if not resume and os.path.exists(os.path.join(ckpt_dir, "checkpoint.json")):
        log.info("note: %s holds an earlier run; starting over (use --resume %s to continue it)",
                 out, out)
    if rank == 0:
        common.write_json(os.path.join(out, common.ARGS),
                          {k: v for k, v in config.items() if k != "resume"})
    if command:
        log.info("%s", command)
    log.info("args: %s", " ".join("%s=%s" % kv for kv in sorted(config.items())))

    # ---- data
    common.set_seed(seed)
    (x_train, y_train), (x_test, y_test) = center_data.load(dataset, data_dir, size,
                                                            log=log.info)
    num_classes = center_data.NUM_CLASSES
    keep = center_data.subsample_imbalanced(y_train, imbalance, minority, seed=seed)
    x_train, y_train = x_train[keep], y_train[keep]
    train_counts = np.bincount(y_train, minlength=num_classes)
    test_counts = np.bincount(y_test, minlength=num_classes)
    weight = common.class_weight_vector(class_weighting, train_counts, beta)
    log.info("%s: %d train / %d test images of %dx%d; train counts per class %s",
             dataset, len(y_train), len(y_test), size, size, train_counts.tolist())
    if weight is not None:
        log.info("class weights (%s): %s", class_weighting, np.round(weight, 3).tolist())

    # ---- models, losses, trainers
    nets, ce, center_loss = build_models(num_classes, feature_dim, config["channels"],
                                         convs_per_stage, size, weight, alpha, lam, contexts)
    n_batches = -(-len(y_train) // batch_size)  # the last batch may be smaller
    if max_iters:
        n_batches = min(n_batches, max_iters)
    opt_params = common.optimizer_params(optimizer, lr, wd, momentum, lr_decay,
                                         config["lr_decay_epochs"], n_batches)
    watchdog.beat("broadcasting the parameters")
    net_trainer, center_trainer = make_trainers(nets, center_loss, optimizer, opt_params,
                                                net_kv, center_kv,
                                                workers > 1 or "dist" in kvstore)
    if hybridize:
        for block in (nets["softmax"], nets["center"], ce["softmax"], ce["center"], center_loss):
            block.hybridize(static_alloc=True)
    blocks = {"softmax-net": nets["softmax"], "center-net": nets["center"],
              "center-loss": center_loss}
    trainers = {"net-trainer": net_trainer, "centers-trainer": center_trainer}

    history, done, elapsed_before = [], 0, 0.0
    resume_dir = os.path.join(resume, common.CHECKPOINTS) if resume else None
    if resume and os.path.exists(os.path.join(resume_dir, "checkpoint.json")):
        # --resume A --out B reads A's checkpoint and writes on in B
        record = common.load_checkpoint(resume_dir, blocks, trainers, contexts)
        done, history = record["epoch"], record.get("history", [])
        elapsed_before = record.get("train_seconds", 0.0)
        log.info("resumed %s at the end of epoch %d", resume_dir, done)
    elif resume:
        log.info("--resume %s: no checkpoint yet, starting from epoch 1", resume)

    # ---- training, epochs numbered from 1
    from tqdm import tqdm
    train_start = time.time()
    with common.console_through_tqdm(log), watchdog:
        epoch_bar = tqdm(range(done + 1, epochs + 1), desc="epochs", unit="epoch",
                         disable=quiet, initial=done, total=epochs, dynamic_ncols=True)
        for epoch in epoch_bar:
            tic = time.time()
            order = center_data.batches(len(y_train), batch_size, seed, epoch - 1)[:n_batches]

            def beat(i, epoch=epoch, total=len(order)):
                watchdog.beat("epoch %d, batch %d/%d (forward, backward, kvstore push/pull)"
                              % (epoch, i + 1, total))

            with tqdm(total=len(order), desc="epoch %d" % epoch, unit="batch", leave=False,
                      disable=quiet, dynamic_ncols=True) as batch_bar:
                row = train_epoch(nets, ce, center_loss, net_trainer, center_trainer,
                                  x_train, y_train, order, contexts, rank, workers, batch_bar,
                                  beat)
            watchdog.beat("epoch %d: evaluation and checkpoint" % epoch)
            row = dict(row, epoch=epoch, lr=net_trainer.learning_rate)
            for model in MODELS:
                logits, _ = report.forward_all(nets[model], x_test, contexts)
                row[model]["test_accuracy"] = float((logits.argmax(1) == y_test).mean())
                for name, value in row[model].items():
                    if not np.isfinite(value):
                        raise FloatingPointError("epoch %d: %s %s is %r (lower --lr or --lambda?)"
                                                 % (epoch, model, name, value))
            row["seconds"] = time.time() - tic
            history.append(row)
            if rank == 0:
                common.save_checkpoint(ckpt_dir, epoch, blocks, trainers, meta={
                    "history": history,
                    "train_seconds": elapsed_before + time.time() - train_start})
            s, c = row["softmax"], row["center"]
            log.info("epoch %2d/%d lr %.4g | softmax: ce %.4f train %.3f test %.3f | "
                     "+center: ce %.4f center %.4f train %.3f test %.3f | %.1fs",
                     epoch, epochs, row["lr"], s["ce"], s["train_accuracy"],
                     s["test_accuracy"], c["ce"], c["center"], c["train_accuracy"],
                     c["test_accuracy"], row["seconds"])
        epoch_bar.close()
    train_seconds = elapsed_before + time.time() - train_start

    # ---- evaluation, plots, parameters
    minority = list(minority) if imbalance > 1 else []
    results = {
        "command": command, "dataset": dataset, "seed": seed, "lambda": lam, "alpha": alpha,
        "epochs": epochs, "imbalance": imbalance, "minority_classes": minority,
        "class_weighting": class_weighting,
        "class_weights": None if weight is None else [float(w) for w in weight],
        "train_counts": train_counts.tolist(), "test_counts": test_counts.tolist(),
        "class_names": center_data.CLASS_NAMES[dataset],
        "centers_note": ("'center' uses the CenterLoss centers it learned; 'softmax' has none, "
                         "so its compactness and nearest-center accuracy use the class means "
                         "of its training-set features as centers. Both are also given "
                         "with class means (compactness_class_means)."),
        "hardware": {"cpu_count": os.cpu_count(), "machine": platform.machine(),
                     "processor": platform.processor() or platform.machine(),
                     "contexts": [str(c) for c in contexts], "kvstore": kvstore,
                     "workers": workers, "mxnet": mx.__version__},
        "history": history,
    }
    results.update(report.evaluate_models(
        nets, center_loss.centers.data(contexts[0]).asnumpy(), (x_train, y_train),
        (x_test, y_test), contexts, minority, lam, center_data.CLASS_NAMES[dataset],
        out_private))
    for model in MODELS:
        nets[model].save_parameters(os.path.join(out_private, "%s-net.params" % model))
    center_loss.save_parameters(os.path.join(out_private, "centers.params"))
    if history:
        report.plot_curves(os.path.join(out_private, "loss_curves.png"), history, lam)
    results["train_seconds"] = train_seconds
    results["wall_seconds_this_process"] = time.time() - start_time
    for model in MODELS:
        for key in ("test_accuracy", "compactness", "nearest_center_accuracy"):
            if not np.isfinite(results[model][key]):
                log.info("WARNING: %s %s is %r", model, key, results[model][key])
    common.write_results(out_private, results)
    for line in report.summary_lines(results):
        log.info("%s", line)
    log.info("train counts %s, test counts %s", train_counts.tolist(), test_counts.tolist())
    log.info("training %.1f s, whole run %.1f s; outputs in %s",
             train_seconds, results["wall_seconds_this_process"], out_private)
    return results
