"""``python -m examples.segmentation``: class weighting for an imbalanced segmentation set.

Trains GluonCV's FCN (small dilated ResNet base, aux head on) on a generated set in the
VOC2012 layout whose rarest class covers about 0.6% of the pixels, once per class
weighting and seed, and writes per-class IoU / mIoU with their spread over seeds, a
summary table, training curves and predicted masks.

    python -m examples.segmentation --out runs/segment          # 3 weightings x 3 seeds
    python -m examples.segmentation --class-weighting none,median --seeds 5
    python -m examples.segmentation --resume runs/segment         # continue an interrupted sweep

See docs/examples/segmentation.md for the flags and the results.
"""
import argparse
import os
import sys
import time

from gluon_losses import class_weights
from examples.common import get_logger, parse_contexts, read_json, set_seed, write_json
from examples.segmentation import data, report
from examples.segmentation.train import train_run

WEIGHTINGS = ("none", "inverse", "median", "effective")
DEFAULTS = dict(
    out=None, resume=None, data_dir=None, num_train=640, num_test=160, image_size=64,
    data_seed=0, class_weighting="none,median,effective", beta=0.99999, seed=0, seeds=3,
    epochs=10, batch_size=16, optimizer="sgd", lr=0.05, momentum=0.9, wd=1e-4,
    lr_decay=0.1, lr_decay_epochs="7,9", aux_weight=0.2, normalization="weight",
    widths="16,32,64,96", ctx="cpu", gpus="", kvstore="device", hybridize=True,
    max_iters=0, quiet=False,
)
# Flags that change how a sweep is run or watched, not its results; a resumed sweep
# takes every other setting from its args.json.
RUNTIME_FLAGS = ("out", "resume", "data_dir", "ctx", "gpus", "kvstore", "hybridize", "quiet")


def build_parser():
    d = DEFAULTS
    p = argparse.ArgumentParser(prog="python -m examples.segmentation",
                                description=__doc__.split("\n\n")[0],
                                argument_default=argparse.SUPPRESS)
    g = p.add_argument_group("data")
    g.add_argument("--data-dir", help="where the generated VOC2012 folder is cached "
                                      "(default OUT/data)")
    g.add_argument("--num-train", type=int, help="training images (default %d)" % d["num_train"])
    g.add_argument("--num-test", type=int, help="held-out test images (default %d)" % d["num_test"])
    g.add_argument("--image-size", type=int, help="image side in pixels (default %d)"
                   % d["image_size"])
    g.add_argument("--data-seed", type=int, help="seed of the generated set (default %d)"
                   % d["data_seed"])
    g = p.add_argument_group("model and loss")
    g.add_argument("--class-weighting", help="comma list of %s (default %s)"
                   % ("/".join(WEIGHTINGS), d["class_weighting"]))
    g.add_argument("--beta", type=float, help="beta of the effective-number weights over "
                   "pixel counts (default %g)" % d["beta"])
    g.add_argument("--aux-weight", type=float, help="weight of the aux head's loss (default %g)"
                   % d["aux_weight"])
    g.add_argument("--normalization", choices=("valid", "batch", "weight"),
                   help="divisor of WeightedSoftmaxCELoss (default %s: the weighted mean, so "
                        "every weighting trains with the same step size)" % d["normalization"])
    g.add_argument("--widths", help="channels of the four base stages (default %s)" % d["widths"])
    g = p.add_argument_group("optimisation")
    g.add_argument("--epochs", type=int, help="default %d" % d["epochs"])
    g.add_argument("--batch-size", type=int, help="default %d" % d["batch_size"])
    g.add_argument("--optimizer", help="any mxnet optimizer (default %s)" % d["optimizer"])
    g.add_argument("--lr", type=float, help="default %g" % d["lr"])
    g.add_argument("--momentum", type=float, help="sgd/nag only (default %g)" % d["momentum"])
    g.add_argument("--wd", type=float, help="default %g" % d["wd"])
    g.add_argument("--lr-decay", type=float, help="lr factor (default %g)" % d["lr_decay"])
    g.add_argument("--lr-decay-epochs", help="epochs after which lr *= --lr-decay "
                                             "(default %s)" % d["lr_decay_epochs"])
    g.add_argument("--seed", type=int, help="first seed (default %d)" % d["seed"])
    g.add_argument("--seeds", type=int, help="seeds per weighting: SEED .. SEED+N-1 "
                                             "(default %d)" % d["seeds"])
    g.add_argument("--max-iters", type=int, help="cap iterations per epoch (smoke tests)")
    g = p.add_argument_group("devices")
    g.add_argument("--ctx", help="cpu, gpu:0 or a list such as cpu:0,cpu:1 (default cpu)")
    g.add_argument("--gpus", help="e.g. 0,1; wins over --ctx")
    g.add_argument("--kvstore", help="gluon.Trainer kvstore (default device)")
    g.add_argument("--hybridize", action=argparse.BooleanOptionalAction,
                   help="hybridize the FCN and the losses (default on)")
    g = p.add_argument_group("run")
    g.add_argument("--out", help="sweep folder (default runs/segment-<time>)")
    g.add_argument("--resume", metavar="DIR", help="continue the sweep in DIR")
    g.add_argument("--quiet", action="store_true", help="no console lines, no progress bars")
    return p


def resolve_args(argv=None):
    """Defaults < the saved args.json of ``--resume DIR`` < flags given now."""
    given = vars(build_parser().parse_args(argv))
    args = dict(DEFAULTS)
    if given.get("resume"):
        saved_path = os.path.join(given["resume"], "args.json")
        if not os.path.exists(saved_path):
            raise SystemExit("--resume %s: no args.json there" % given["resume"])
        saved = read_json(saved_path)
        changed = sorted(k for k, v in given.items()
                         if k not in RUNTIME_FLAGS and k in saved and saved[k] != v)
        if changed:
            raise SystemExit("--resume continues %s; these flags differ from it: %s"
                             % (saved_path, ", ".join("--%s" % k.replace("_", "-")
                                                      for k in changed)))
        args.update({k: v for k, v in saved.items() if k in DEFAULTS})
        args["out"] = given["resume"]
    args.update(given)
    if args["out"] is None:
        args["out"] = os.path.join("runs", time.strftime("segment-%Y%m%d-%H%M%S"))
    return argparse.Namespace(**args)


def split_list(text, cast=str):
    return [cast(item.strip()) for item in str(text).split(",") if item.strip()]


def run_name(method, seed):
    return "%s-seed%d" % (method, seed)


def run_sweep(out, methods, seeds, data_dir=None, num_train=640, num_test=160, image_size=64,
              data_seed=0, beta=0.99999, epochs=10, resume=False, quiet=False, log=None,
              **train_args):
    """Every weighting in ``methods`` x every seed in ``seeds``, then the summary.

    ``train_args`` go to :func:`train_run` (epochs, batch_size, optimizer, lr, ...).
    Finished runs are skipped on ``resume``; an interrupted one continues from its
    last checkpoint. Returns the summary written to ``out/results.json``.
    """
    log = log or (lambda *a: None)
    for method in methods:
        if method not in WEIGHTINGS:
            raise ValueError("class weighting must be one of %s, got %r"
                             % (", ".join(WEIGHTINGS), method))
    data_dir = data_dir or os.path.join(out, "data")
    root = os.path.join(data_dir, data.dataset_name(num_train, num_test, image_size, data_seed))
    data.generate(root, num_train, num_test, image_size, data_seed)
    train_set, test_set = data.voc_dataset(root, "train"), data.voc_dataset(root, "test")
    train_data, test_data = data.load_arrays(train_set), data.load_arrays(test_set)
    shares = data.pixel_shares(train_data[1])
    log("data %s: %d train / %d test images; train pixel shares %s" % (
        root, len(train_data[1]), len(test_data[1]),
        ", ".join("%s %.2f%%" % (n, 100 * s) for n, s in zip(data.CLASSES, shares))))
    display = report.display_indices(test_data[1], data.CLASSES.index("speck"))

    runs = {}
    for method in methods:
        # from the mask files only, void skipped; 'median' counts per image
        weight = class_weights.for_segmentation(train_set, method=method, beta=beta,
                                                num_class=data.NUM_CLASS)
        log("class weights %s: %s" % (method, " ".join("%.4f" % w for w in weight)))
        for seed in seeds:
            name = run_name(method, seed)
            run_dir = os.path.join(out, "runs", name)
            done = os.path.join(run_dir, "results.json")
            if resume and os.path.exists(done) and read_json(done)["epochs"] == epochs:
                runs[name] = read_json(done)
                log("%s: finished earlier, kept" % name)
                continue
            set_seed(seed)
            runs[name] = train_run(run_dir, train_data, test_data, data.NUM_CLASS, weight,
                                   seed=seed, epochs=epochs, resume=resume, quiet=quiet, log=log,
                                   display_indices=display, **train_args)
    summary = report.summarize(runs, methods, seeds, data.CLASSES)
    summary["train_pixel_shares"] = [float(s) for s in shares]
    write_json(os.path.join(out, "results.json"), summary)
    report.write_table(os.path.join(out, "summary.md"), summary, data.CLASSES)
    report.plot_curves(os.path.join(out, "segmentation_curves.png"), runs, methods, seeds)
    report.plot_masks(os.path.join(out, "segmentation_masks.png"), out, test_data, methods,
                      seeds[0], display, data.CLASSES)
    return summary


def main(argv=None):
    args = resolve_args(argv)
    os.makedirs(args.out, exist_ok=True)
    saved = {k: getattr(args, k) for k in DEFAULTS if k != "resume"}
    write_json(os.path.join(args.out, "args.json"), saved)
    log = get_logger(args.out, quiet=args.quiet, name="segmentation")
    log.info("python -m examples.segmentation %s",
             " ".join(sys.argv[1:] if argv is None else argv))
    tic = time.time()
    summary = run_sweep(
        args.out, split_list(args.class_weighting), list(range(args.seed, args.seed + args.seeds)),
        data_dir=args.data_dir, num_train=args.num_train, num_test=args.num_test,
        image_size=args.image_size, data_seed=args.data_seed, beta=args.beta,
        resume=bool(args.resume), quiet=args.quiet, log=log.info,
        epochs=args.epochs, batch_size=args.batch_size, optimizer=args.optimizer, lr=args.lr,
        momentum=args.momentum, wd=args.wd, lr_decay=args.lr_decay,
        lr_decay_epochs=split_list(args.lr_decay_epochs, int), aux_weight=args.aux_weight,
        normalization=args.normalization, widths=tuple(split_list(args.widths, int)),
        ctx=parse_contexts(args.ctx, args.gpus), kvstore=args.kvstore,
        hybridize=args.hybridize, max_iters=args.max_iters)
    log.info("summary (test split, final epoch, mean ± std over seeds):\n%s",
             report.format_table(summary, data.CLASSES))
    log.info("wrote %s in %.0fs", os.path.join(args.out, "results.json"), time.time() - tic)
    return summary
