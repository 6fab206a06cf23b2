"""Softmax vs softmax + center loss on 2-D features, trained side by side in one run.

Trains a LeNets++-style network (conv stages with PReLU, a 2-D feature layer, a
bias-free classifier) twice from the same initial weights: once with
``WeightedSoftmaxCELoss`` alone and once with ``WeightedSoftmaxCELoss + CenterLoss``
(Wen et al., ECCV 2016). Both see the same batches in the same order. The run folder
gets feature scatter plots, loss curves, ``metrics.json`` and the parameters.

    python -m examples.center_loss --out runs/demo            # digits, about 2 min on 2 CPU cores
    python -m examples.center_loss --lambda 0.003 --alpha 0.5  # the paper's setting
    python -m examples.center_loss --dataset mnist --data-dir ~/data/mnist
    python -m examples.center_loss --resume runs/demo --epochs 40
    python -m examples.center_loss --imbalance 10              # class weights switch on

See the README (section "Softmax vs softmax + center loss") for every flag and the results.
"""
import argparse
import os
import platform
import sys
import time


import numpy as np
import mxnet as mx
from mxnet import autograd, gluon
from mxnet.gluon import nn

import gluon_losses
from gluon_losses import class_weights as cw
from examples.center_loss import data as center_data
from examples.common import (get_logger, load_checkpoint, parse_contexts, read_json,
                          save_checkpoint, set_seed, write_json)

MODELS = ("softmax", "center")           # softmax alone; softmax + center loss
LABELS = {"softmax": "softmax only", "center": "softmax + center loss"}
COLORS = {"softmax": "tab:blue", "center": "tab:red"}
CHECKPOINT_DIR = "checkpoints"

DEFAULTS = dict(
    dataset="digits", data_dir=None, size=None, channels=None, convs_per_stage=2,
    feature_dim=2, epochs=None, batch_size=64, optimizer="adam", lr=0.003, momentum=0.9,
    wd=0.0, lr_steps=None, lam=0.01, alpha=0.5, imbalance=1.0, minority="5,6,7,8,9",
    class_weight="auto", beta=0.999, seed=0, ctx="cpu", gpus="", kvstore="device",
    hybridize=True, quiet=False, out=None, resume=None, max_batches=0,
)
# Per data set: input size, channels per conv stage, epochs, epochs where lr drops 10x.
DATASET_DEFAULTS = {
    "digits": dict(size=16, channels="16,32,64", epochs=24, lr_steps="16,21"),
    "mnist": dict(size=28, channels="32,64,128", epochs=12, lr_steps="8,11"),
    "fashion-mnist": dict(size=28, channels="32,64,128", epochs=12, lr_steps="8,11"),
}
# Flags that only change how a run is watched or where it runs; everything else is
# part of the experiment and a resumed run takes it from the saved args.json.
RUNTIME_FLAGS = ("epochs", "ctx", "gpus", "kvstore", "hybridize", "quiet", "max_batches",
                 "resume", "out", "data_dir")


# --------------------------------------------------------------------------- network
class PReLU(gluon.HybridBlock):
    """Channel-wise PReLU, ``max(x, 0) + alpha * min(x, 0)``, alpha over axis 1.

    Written out instead of ``nn.PReLU`` because MXNet 1.9.1's fused op
    (``LeakyReLU(act_type='prelu')``) gets the gradient of alpha wrong inside a
    hybridized LeNets++ on CPU: it comes out multiplied by alpha (checked against finite
    differences; tests/test_train_center.py keeps the check).
    """

    def __init__(self, channels, spatial, **kwargs):
        super().__init__(**kwargs)
        self._shape = (1, channels) + (1,) * spatial
        with self.name_scope():
            self.alpha = self.params.get("alpha", shape=(channels,),
                                         init=mx.init.Constant(0.25))

    def hybrid_forward(self, F, x, alpha):
        return F.relu(x) + F.broadcast_mul(F.reshape(alpha, shape=self._shape),
                                           F.minimum(x, 0))


class LeNetsPP(gluon.HybridBlock):
    """LeNets++ (Wen et al. 2016, Table 1), width and depth as arguments.

    ``len(channels)`` stages of ``convs_per_stage`` 5x5 convolutions with PReLU, each
    stage followed by 2x2 max pooling; a fully connected feature layer of
    ``feature_dim`` units with PReLU; a bias-free linear classifier. Returns
    ``(logits, features)``.
    """

    def __init__(self, num_classes=10, feature_dim=2, channels=(32, 64, 128),
                 convs_per_stage=2, in_channels=1, size=28, **kwargs):
        super().__init__(**kwargs)
        with self.name_scope():
            self.body = nn.HybridSequential(prefix="body_")
            prev = in_channels
            for width in channels:
                for _ in range(convs_per_stage):
                    self.body.add(nn.Conv2D(width, 5, padding=2, in_channels=prev),
                                  PReLU(width, spatial=2))
                    prev = width
                self.body.add(nn.MaxPool2D(2, 2))
                size //= 2
            self.body.add(nn.Flatten(),
                          nn.Dense(feature_dim, in_units=prev * size * size),
                          PReLU(feature_dim, spatial=0))
            self.classifier = nn.Dense(num_classes, use_bias=False, in_units=feature_dim)

    def hybrid_forward(self, F, x):
        feature = self.body(x)
        return self.classifier(feature), feature


# --------------------------------------------------------------------------- args
def build_parser():
    p = argparse.ArgumentParser(
        prog="train_center", argument_default=argparse.SUPPRESS,
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter)
    d = DEFAULTS
    g = p.add_argument_group("data")
    g.add_argument("--dataset", choices=["digits", "mnist", "fashion-mnist"],
                   help="digits: scikit-learn's 8x8 digits, no download (default). "
                        "mnist / fashion-mnist: read from --data-dir, never downloaded")
    g.add_argument("--data-dir", help="folder with the four *-idx?-ubyte.gz files")
    g.add_argument("--size", type=int, help="input side in pixels (default 16 for digits, 28 else)")
    g.add_argument("--imbalance", type=float, metavar="RATIO",
                   help="keep only 1/RATIO of the training images of the --minority classes "
                        "and switch class weights on (default %s: balanced)" % d["imbalance"])
    g.add_argument("--minority", help="classes shrunk by --imbalance (default %s)" % d["minority"])
    g = p.add_argument_group("model and losses")
    g.add_argument("--channels", help="conv widths per stage (default 16,32,64 for digits, "
                                      "32,64,128 = LeNets++ for MNIST)")
    g.add_argument("--convs-per-stage", type=int, help="default %d" % d["convs_per_stage"])
    g.add_argument("--feature-dim", type=int,
                   help="default %d (the plots show the first two)" % d["feature_dim"])
    g.add_argument("--lambda", dest="lam", type=float, metavar="LAMBDA",
                   help="center loss weight lambda (default %s, the MNIST example's; the "
                        "paper's MNIST figure uses 0.003)" % d["lam"])
    g.add_argument("--alpha", type=float, help="center update rate (default %s)" % d["alpha"])
    g.add_argument("--class-weight", choices=["auto", "none", "inverse", "median", "effective"],
                   help="per-class weights of the softmax loss from gluon_losses.class_weights; "
                        "auto = inverse under --imbalance, none otherwise (default)")
    g.add_argument("--beta", type=float,
                   help="beta of --class-weight effective (default %s)" % d["beta"])
    g = p.add_argument_group("optimisation")
    g.add_argument("--epochs", type=int, help="default 24 for digits, 12 for MNIST")
    g.add_argument("--batch-size", type=int, help="default %d" % d["batch_size"])
    g.add_argument("--optimizer",
                   help="any mxnet optimizer, e.g. sgd (default %s)" % d["optimizer"])
    g.add_argument("--lr", type=float, help="default %s" % d["lr"])
    g.add_argument("--momentum", type=float, help="sgd only, default %s" % d["momentum"])
    g.add_argument("--wd", type=float, help="default %s" % d["wd"])
    g.add_argument("--lr-steps",
                   help="epochs after which lr drops 10x (default 16,21 for digits)")
    g.add_argument("--seed", type=int, help="seeds init and batch order (default %d)" % d["seed"])
    g = p.add_argument_group("devices")
    g.add_argument("--ctx", help="cpu, gpu:0 or a list such as cpu:0,cpu:1 (default cpu)")
    g.add_argument("--gpus", help="e.g. 0,1; wins over --ctx")
    g.add_argument("--kvstore", help="device | local | dist_sync (default device)")
    g.add_argument("--hybridize", action=argparse.BooleanOptionalAction,
                   help="hybridize network and losses (default on)")
    g = p.add_argument_group("run")
    g.add_argument("--out", help="run folder (default runs/center-<time>)")
    g.add_argument("--resume", metavar="DIR",
                   help="continue the run in DIR from its last saved epoch")
    g.add_argument("--quiet", action="store_true", help="no progress bars (for log files); "
                   "the one-line epoch summaries stay")
    g.add_argument("--max-batches", type=int, help="stop each epoch after N batches (smoke tests)")
    return p


def resolve_args(argv=None):
    """Defaults < saved args of ``--resume DIR`` < flags given on this command line."""
    given = vars(build_parser().parse_args(argv))
    args = dict(DEFAULTS)
    if given.get("resume"):
        saved_path = os.path.join(given["resume"], "args.json")
        if not os.path.exists(saved_path):
            raise SystemExit("--resume %s: no args.json there (not a train_center run folder)"
                             % given["resume"])
        saved = read_json(saved_path)
        changed = sorted(k for k, v in given.items()
                         if k not in RUNTIME_FLAGS and k in saved and saved[k] != v)
        if changed:
            raise SystemExit(
                "--resume continues the experiment saved in %s; these flags differ from it: %s "
                "(start a new run with --out to change them)" % (saved_path, ", ".join(
                    "--%s %s (saved: %s)" % ("lambda" if k == "lam" else k.replace("_", "-"),
                                             given[k], saved[k]) for k in changed)))
        args.update({k: v for k, v in saved.items() if k in DEFAULTS})
        args["out"] = given.get("out", given["resume"])
    args.update(given)
    for key, value in DATASET_DEFAULTS[args["dataset"]].items():
        if args[key] is None:
            args[key] = value
    if args["out"] is None:
        args["out"] = os.path.join("runs", time.strftime("center-%Y%m%d-%H%M%S"))
    if args["class_weight"] == "auto":
        args["class_weight"] = "inverse" if args["imbalance"] > 1 else "none"
    return argparse.Namespace(**args)


# --------------------------------------------------------------------------- helpers
def make_kvstores(kind):
    """``(network kvstore, center kvstore, rank, workers)`` for ``--kvstore kind``."""
    if "dist" not in kind:
        return kind, kind, 0, 1
    # A process can hold only one dist_sync kvstore: the network trainer and the
    # CenterTrainer share it (CenterTrainer keeps its keys apart from gluon.Trainer's).
    kv = mx.kv.create(kind)
    return kv, kv, kv.rank, kv.num_workers


def make_class_weight(kind, counts, beta):
    """Per-class weight vector from ``gluon_losses.class_weights``, or None."""
    if kind == "none":
        return None
    if kind == "inverse":
        return np.asarray(cw.inverse_frequency(counts), dtype=np.float32)
    if kind == "median":
        return np.asarray(cw.median_frequency(counts), dtype=np.float32)
    return np.asarray(cw.effective_number(counts, beta=beta), dtype=np.float32)


def lr_at(args, epoch):
    steps = [int(s) for s in str(args.lr_steps).split(",") if s.strip()]
    return args.lr * 0.1 ** sum(epoch >= s for s in steps)


def batches(n, batch_size, seed, epoch):
    """Shuffled index batches; the order depends only on ``seed`` and ``epoch``."""
    order = np.random.RandomState([seed, epoch]).permutation(n)
    return [order[i:i + batch_size] for i in range(0, n, batch_size)]


def forward_all(net, images, ctx, batch_size=256):
    """Logits and features of ``images`` (NumPy) as NumPy, on the first context."""
    logits, feats = [], []
    for i in range(0, len(images), batch_size):
        out, feat = net(mx.nd.array(images[i:i + batch_size], ctx=ctx[0]))
        logits.append(out.asnumpy())
        feats.append(feat.asnumpy())
    return np.concatenate(logits), np.concatenate(feats)


def feature_metrics(features, labels, centers, num_classes):
    """Compactness and nearest-center accuracy of ``features`` around ``centers``.

    compactness = mean distance of a feature to its own class center divided by the mean
    distance between two different centers (scale free; lower is tighter).
    """
    own = np.linalg.norm(features - centers[labels], axis=1)
    between = np.linalg.norm(centers[:, None] - centers[None], axis=-1)
    between = between[np.triu_indices(num_classes, k=1)]
    dist = np.linalg.norm(features[:, None] - centers[None], axis=-1)
    return {
        "compactness": float(own.mean() / between.mean()),
        "mean_distance_to_own_center": float(own.mean()),
        "mean_distance_between_centers": float(between.mean()),
        "nearest_center_accuracy": float((dist.argmin(1) == labels).mean()),
    }


def class_means(features, labels, num_classes):
    return np.stack([features[labels == k].mean(0) if np.any(labels == k)
                     else np.zeros(features.shape[1]) for k in range(num_classes)])


def per_class_accuracy(pred, labels, num_classes):
    return [float((pred[labels == k] == k).mean()) if np.any(labels == k) else float("nan")
            for k in range(num_classes)]


# --------------------------------------------------------------------------- plots
def plot_features(path, features, labels, centers, title, class_names):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    colors = plt.get_cmap("tab10").colors
    fig, ax = plt.subplots(figsize=(5.2, 5.0), dpi=110)
    order = np.random.RandomState(0).permutation(len(labels))    # no class drawn on top
    ax.scatter(features[order, 0], features[order, 1], s=7, alpha=0.65, linewidths=0,
               c=[colors[k % 10] for k in labels[order]], rasterized=True)
    for k, center in enumerate(centers):
        ax.scatter(center[0], center[1], s=140, marker="X", color=colors[k % 10],
                   edgecolors="black", linewidths=1.2, zorder=3)
        ax.annotate(class_names[k], center[:2], xytext=(6, 6), textcoords="offset points",
                    fontsize=9, fontweight="bold", zorder=4,
                    bbox=dict(boxstyle="round,pad=0.15", fc="white", ec="none", alpha=0.75))
    handles = [plt.Line2D([], [], marker="o", ls="", color=colors[k % 10], label=class_names[k])
               for k in range(len(centers))]
    handles.append(plt.Line2D([], [], marker="X", ls="", color="grey", markeredgecolor="black",
                              markersize=9, label="center"))
    ax.legend(handles=handles, fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5),
              frameon=False)
    ax.set_title(title, fontsize=9)
    ax.set_xlabel("feature 1")
    ax.set_ylabel("feature 2")
    ax.set_aspect("equal", adjustable="datalim")
    ax.grid(alpha=0.25)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_curves(path, history, lam):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    epochs = [h["epoch"] for h in history]
    fig, (left, right) = plt.subplots(1, 2, figsize=(9.5, 3.6), dpi=110)
    left.plot(epochs, [h["softmax"]["ce"] for h in history], "-o", ms=3, color=COLORS["softmax"],
              label="softmax only: CE")
    left.plot(epochs, [h["center"]["ce"] for h in history], "-o", ms=3, color=COLORS["center"],
              label="softmax + center: CE")
    left.plot(epochs, [h["center"]["center"] for h in history], "--s", ms=3,
              color=COLORS["center"], alpha=0.7,
              label="softmax + center: center term (lambda=%g)" % lam)
    left.set_yscale("log")
    left.set_xlabel("epoch")
    left.set_ylabel("training loss (mean per image)")
    left.legend(fontsize=8)
    left.grid(alpha=0.3, which="both")
    for model in MODELS:
        right.plot(epochs, [h[model]["train_accuracy"] for h in history], "--", alpha=0.6,
                   color=COLORS[model], label="%s: train (running)" % LABELS[model])
        right.plot(epochs, [h[model]["test_accuracy"] for h in history], "-o", ms=3,
                   color=COLORS[model], label="%s: test" % LABELS[model])
    right.set_xlabel("epoch")
    right.set_ylabel("accuracy")
    right.set_ylim(max(0.0, min(min(h[m]["test_accuracy"] for h in history for m in MODELS),
                                min(h[m]["train_accuracy"] for h in history for m in MODELS))
                       - 0.05), 1.005)
    right.legend(fontsize=8, loc="lower right")
    right.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


# --------------------------------------------------------------------------- main
def prune_checkpoints(directory, keep_epoch):
    """Delete parameter/state files of epochs other than ``keep_epoch``."""
    suffix = "-%04d." % keep_epoch
    for name in os.listdir(directory):
        if name.endswith((".params", ".states")) and suffix not in name \
                and not name.startswith(".tmp-"):
            os.remove(os.path.join(directory, name))


def main(argv=None):
    """Run the experiment; returns the metrics dict that is also written to metrics.json."""
    args = resolve_args(argv)
    start_time = time.time()
    net_kv, center_kv, rank, workers = make_kvstores(args.kvstore)
    out = args.out
    # with dist_sync, worker 0 writes the run folder; the others only their log
    out_private = out if rank == 0 else os.path.join(out, "worker-%d" % rank)
    os.makedirs(out_private, exist_ok=True)
    log = get_logger(out_private, name="train_center")
    ctx = parse_contexts(args.ctx, args.gpus)
    ckpt_dir = os.path.join(out, CHECKPOINT_DIR)
    resuming = bool(args.resume)
    if not resuming and os.path.exists(os.path.join(ckpt_dir, "checkpoint.json")):
        log.info("note: %s holds an earlier run; starting over (use --resume %s to continue it)",
                 out, out)
    saved_args = {k: getattr(args, k) for k in DEFAULTS if k not in ("resume",)}
    if rank == 0:
        write_json(os.path.join(out, "args.json"), saved_args)
    command = "python -m examples.center_loss " + " ".join(sys.argv[1:] if argv is None else argv)
    log.info("%s", command)
    log.info("args: %s", " ".join("%s=%s" % kv for kv in sorted(saved_args.items())))

    # ---- data
    set_seed(args.seed)
    (x_train, y_train), (x_test, y_test) = center_data.load(
        args.dataset, args.data_dir, args.size, log=log.info)
    num_classes = center_data.NUM_CLASSES
    class_names = center_data.CLASS_NAMES[args.dataset]
    minority = [int(c) for c in str(args.minority).split(",") if c.strip()]
    keep = center_data.subsample_imbalanced(y_train, args.imbalance, minority, seed=args.seed)
    x_train, y_train = x_train[keep], y_train[keep]
    train_counts = np.asarray(cw.class_counts(y_train, num_classes)).astype(np.int64)
    test_counts = np.bincount(y_test, minlength=num_classes)
    weight = make_class_weight(args.class_weight, train_counts, args.beta)
    log.info("%s: %d train / %d test images of %dx%d; train counts per class %s",
             args.dataset, len(y_train), len(y_test), args.size, args.size, train_counts.tolist())
    if weight is not None:
        log.info("class weights (%s): %s", args.class_weight, np.round(weight, 3).tolist())

    # ---- models, losses, trainers
    channels = [int(c) for c in str(args.channels).split(",")]
    nets = {}
    for model in MODELS:
        nets[model] = LeNetsPP(num_classes, args.feature_dim, channels, args.convs_per_stage,
                               size=args.size, prefix="%s_" % model)
        nets[model].initialize(mx.init.Xavier(magnitude=2.24), ctx=ctx)
    # both models start from the same weights, so the loss is the only difference
    for p_s, p_c in zip(nets["softmax"].collect_params().values(),
                        nets["center"].collect_params().values()):
        p_c.set_data(p_s.data(ctx[0]))
    # one loss block per model: a hybridized block with static memory shared by two
    # graphs in one backward pass would hand both the same buffers
    ce = {m: gluon_losses.WeightedSoftmaxCELoss(class_weight=weight) for m in MODELS}
    center_loss = gluon_losses.CenterLoss(num_classes, args.feature_dim, alpha=args.alpha,
                                          weight=args.lam)
    center_loss.initialize(ctx=ctx)
    opt_params = {"learning_rate": args.lr, "wd": args.wd}
    if args.optimizer == "sgd":
        opt_params["momentum"] = args.momentum
    # One trainer for both networks (their parameters are disjoint, so this is two
    # independent optimisations), so that dist_sync needs a single kvstore. Updates run
    # on the workers (update_on_kvstore=False) so that --lr-steps reach them.
    net_params = nets["softmax"].collect_params()
    net_params.update(nets["center"].collect_params())
    net_trainer = gluon.Trainer(net_params, args.optimizer, opt_params, kvstore=net_kv,
                                update_on_kvstore=False)
    if workers > 1 or "dist" in args.kvstore:
        # gluon.Trainer broadcasts lazily inside its first step(), and on CPU the dist
        # kvstore can let that step's gradient push overtake the broadcast's pull (MXNet
        # 1.9; see the README, CenterLoss, dist_sync). Broadcast now and wait.
        net_trainer._init_kvstore()
        net_trainer._init_params()
        mx.nd.waitall()
    center_trainer = center_loss.trainer(kvstore=center_kv)
    if args.hybridize:
        for block in (nets["softmax"], nets["center"], ce["softmax"], ce["center"], center_loss):
            block.hybridize(static_alloc=True)
    blocks = {"softmax-net": nets["softmax"], "center-net": nets["center"],
              "center-loss": center_loss}
    trainer_map = {"net-trainer": net_trainer, "centers-trainer": center_trainer}

    history, start_epoch, elapsed_before = [], 0, 0.0
    resume_dir = os.path.join(args.resume, CHECKPOINT_DIR) if resuming else None
    if resuming and os.path.exists(os.path.join(resume_dir, "checkpoint.json")):
        # --resume A --out B reads A's checkpoint and writes on in B
        record = load_checkpoint(resume_dir, blocks, trainer_map, ctx)
        start_epoch, history = record["epoch"], record.get("history", [])
        elapsed_before = record.get("train_seconds", 0.0)
        log.info("resumed %s at the end of epoch %d", resume_dir, start_epoch)
    elif resuming:
        log.info("--resume %s: no checkpoint yet, starting from epoch 0", args.resume)

    # ---- training
    from tqdm import tqdm
    show = not args.quiet
    n_batches = len(batches(len(y_train), args.batch_size, args.seed, 0))
    if args.max_batches:
        n_batches = min(n_batches, args.max_batches)
    epoch_bar = tqdm(range(start_epoch, args.epochs), desc="epochs", unit="epoch", disable=not show,
                     initial=start_epoch, total=args.epochs, dynamic_ncols=True)
    train_start = time.time()
    for epoch in epoch_bar:
        tic = time.time()
        lr = lr_at(args, epoch)
        net_trainer.set_learning_rate(lr)
        sums = {m: {"ce": 0.0, "center": 0.0, "correct": 0} for m in MODELS}
        seen = 0
        order = batches(len(y_train), args.batch_size, args.seed, epoch)[:n_batches]
        batch_bar = tqdm(order, desc="epoch %d" % (epoch + 1), unit="batch", leave=False,
                         disable=not show, dynamic_ncols=True)
        for idx in batch_bar:
            bs = len(idx)                             # the global batch: all workers
            idx = np.array_split(idx, workers)[rank]  # this worker's part of it
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
            net_trainer.step(bs)
            center_trainer.step(bs)
            for model, outs, ces, cens in (("softmax", out_s, loss_s, None),
                                           ("center", out_c, loss_ce, loss_center)):
                sums[model]["ce"] += sum(l.sum().asscalar() for l in ces)
                if cens is not None:
                    sums[model]["center"] += sum(l.sum().asscalar() for l in cens)
                sums[model]["correct"] += sum(
                    int((o.argmax(axis=1) == y).sum().asscalar()) for (o, _), y in zip(outs, ys))
            seen += len(idx)
            batch_bar.set_postfix(ce="%.3f" % (sums["softmax"]["ce"] / seen),
                                  ce_c="%.3f" % (sums["center"]["ce"] / seen),
                                  center="%.3f" % (sums["center"]["center"] / seen))
        batch_bar.close()
        row = {"epoch": epoch + 1, "lr": lr}
        for model in MODELS:
            logits, _ = forward_all(nets[model], x_test, ctx)
            row[model] = {"ce": sums[model]["ce"] / seen, "center": sums[model]["center"] / seen,
                          "train_accuracy": sums[model]["correct"] / seen,
                          "test_accuracy": float((logits.argmax(1) == y_test).mean())}
        row["seconds"] = time.time() - tic
        history.append(row)
        for model in MODELS:
            for name, value in row[model].items():
                if not np.isfinite(value):
                    raise FloatingPointError("epoch %d: %s %s is %r (lower --lr or --lambda?)"
                                             % (epoch + 1, model, name, value))
        if rank == 0:
            save_checkpoint(ckpt_dir, epoch + 1, blocks, trainer_map,
                            meta={"history": history,
                                  "train_seconds": elapsed_before + time.time() - train_start})
            prune_checkpoints(ckpt_dir, epoch + 1)
        s, c = row["softmax"], row["center"]
        log.info("epoch %2d/%d lr %.4g | softmax: ce %.4f train %.3f test %.3f | "
                 "+center: ce %.4f center %.4f train %.3f test %.3f | %.1fs",
                 epoch + 1, args.epochs, lr, s["ce"], s["train_accuracy"], s["test_accuracy"],
                 c["ce"], c["center"], c["train_accuracy"], c["test_accuracy"], row["seconds"])
    epoch_bar.close()
    train_seconds = elapsed_before + time.time() - train_start

    # ---- evaluation, plots, parameters
    metrics = {
        "command": command, "dataset": args.dataset, "seed": args.seed, "lambda": args.lam,
        "alpha": args.alpha, "epochs": args.epochs, "imbalance": args.imbalance,
        "minority_classes": minority if args.imbalance > 1 else [],
        "class_weight": args.class_weight,
        "class_weights": None if weight is None else [float(w) for w in weight],
        "train_counts": train_counts.tolist(), "test_counts": test_counts.tolist(),
        "class_names": class_names,
        "centers_note": ("'center' uses the CenterLoss centers it learned; 'softmax' has none, "
                         "so its compactness and nearest-center accuracy use the class means "
                         "of its training-set features as centers. Both are also given "
                         "with class means (compactness_class_means)."),
        "hardware": {"cpu_count": os.cpu_count(), "machine": platform.machine(),
                     "processor": platform.processor() or platform.machine(),
                     "contexts": [str(c) for c in ctx], "kvstore": args.kvstore,
                     "workers": workers, "mxnet": mx.__version__},
        "history": history,
    }
    for model in MODELS:
        net = nets[model]
        logits, feat = forward_all(net, x_test, ctx)
        _, feat_train = forward_all(net, x_train, ctx)
        means = class_means(feat_train, y_train, num_classes)
        if model == "center":
            centers = center_loss.centers.data(ctx[0]).asnumpy()
            source = "learned CenterLoss centers"
        else:
            centers, source = means, "class means of training features"
        pred = logits.argmax(1)
        per_class = per_class_accuracy(pred, y_test, num_classes)
        m = {"test_accuracy": float((pred == y_test).mean()),
             "balanced_accuracy": float(np.nanmean(per_class)),
             "per_class_accuracy": per_class, "centers_source": source,
             "centers": centers.tolist()}
        if args.imbalance > 1 and minority:
            m["minority_accuracy"] = float(np.mean([per_class[k] for k in minority]))
        m.update(feature_metrics(feat, y_test, centers, num_classes))
        m["compactness_class_means"] = feature_metrics(feat, y_test, means,
                                                       num_classes)["compactness"]
        metrics[model] = m
        title = "%s (test set)\naccuracy %.3f, compactness %.3f" % (
            LABELS[model], m["test_accuracy"], m["compactness"])
        if model == "center":
            title = title.replace("loss (", "loss, lambda=%g (" % args.lam)
        plot_features(os.path.join(out_private, "features_%s.png" % model), feat, y_test, centers,
                      title, class_names)
        net.save_parameters(os.path.join(out_private, "%s-net.params" % model))
    center_loss.save_parameters(os.path.join(out_private, "centers.params"))
    if history:
        plot_curves(os.path.join(out_private, "loss_curves.png"), history, args.lam)
    metrics["train_seconds"] = train_seconds
    metrics["wall_seconds_this_process"] = time.time() - start_time
    for model in MODELS:
        for key in ("test_accuracy", "compactness", "nearest_center_accuracy"):
            if not np.isfinite(metrics[model][key]):
                log.info("WARNING: %s %s is %r", model, key, metrics[model][key])
    write_json(os.path.join(out_private, "metrics.json"), metrics)

    log.info("%-24s %9s %9s %12s %14s", "", "test acc", "balanced", "compactness",
             "nearest-center")
    for model in MODELS:
        m = metrics[model]
        log.info("%-24s %9.4f %9.4f %12.4f %14.4f", LABELS[model], m["test_accuracy"],
                 m["balanced_accuracy"], m["compactness"], m["nearest_center_accuracy"])
    log.info("train counts %s, test counts %s", train_counts.tolist(), test_counts.tolist())
    log.info("training %.1f s, whole run %.1f s; outputs in %s",
             train_seconds, metrics["wall_seconds_this_process"], out_private)
    return metrics

