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
import logging
import os
import sys
import time

from gluon_losses import class_weights
from examples import common
from examples.segmentation import data, report
from examples.segmentation.train import train_run

# What this example sets differently from examples.common's shared defaults.
SHARED_DEFAULTS = dict(epochs=10, batch_size=16, lr=0.05, wd=1e-4, lr_decay_epochs="7,9",
                       beta=0.99999)
DEFAULT_WEIGHTINGS = "none,median,effective"
# Besides the shared runtime flags, where the generated set is cached may change.
RUNTIME_FLAGS = common.RUNTIME_FLAGS + ("data_dir",)


def weighting_list(text):
    """``--class-weighting`` value: one weighting or a comma list of them."""
    methods = common.comma_list()(text)
    unknown = [m for m in methods if m not in common.WEIGHTINGS]
    if unknown or not methods:
        raise argparse.ArgumentTypeError("expected a comma list of %s, got %r"
                                         % ("/".join(common.WEIGHTINGS), text))
    return ",".join(methods)


def build_parser():
    # "resolve" lets --class-weighting take a list here instead of the shared single choice
    p = argparse.ArgumentParser(prog="python -m examples.segmentation",
                                description=__doc__.split("\n\n")[0],
                                conflict_handler="resolve")
    shared = common.add_common_arguments(p, **SHARED_DEFAULTS)
    shared.add_argument("--class-weighting", type=weighting_list, default=DEFAULT_WEIGHTINGS,
                        help="weightings to compare, a comma list of %s (default %%(default)s)"
                        % "/".join(common.WEIGHTINGS))
    g = p.add_argument_group("this example")
    g.add_argument("--seeds", type=int, default=3,
                   help="runs per weighting, seeds SEED .. SEED+N-1 (default %(default)s)")
    g.add_argument("--data-dir", default=None,
                   help="where the generated VOC2012 folder is cached (default OUT/data)")
    g.add_argument("--num-train", type=int, default=640,
                   help="training images (default %(default)s)")
    g.add_argument("--num-test", type=int, default=160,
                   help="held-out test images (default %(default)s)")
    g.add_argument("--image-size", type=int, default=64,
                   help="image side in pixels (default %(default)s)")
    g.add_argument("--data-seed", type=int, default=0,
                   help="seed of the generated set (default %(default)s)")
    g.add_argument("--aux-weight", type=float, default=0.2,
                   help="weight of the aux head's loss (default %(default)s)")
    g.add_argument("--normalization", choices=("valid", "batch", "weight"), default="weight",
                   help="divisor of each loss term (default %(default)s: the weighted mean, so "
                        "every weighting trains with the same step size)")
    g.add_argument("--widths", default="16,32,64,96",
                   help="channels of the four base stages (default %(default)s)")
    return p


def resolve_args(argv=None):
    """Flags, with ``--resume DIR`` applying examples.common's resume rule."""
    args = common.parse_args(build_parser(), argv, runtime=RUNTIME_FLAGS)
    if args.out is None:
        args.out = os.path.join("runs", time.strftime("segment-%Y%m%d-%H%M%S"))
    return args


def run_sweep(out, methods, seeds, data_dir=None, num_train=640, num_test=160, image_size=64,
              data_seed=0, beta=0.99999, epochs=10, resume=False, quiet=False, log=None,
              **train_args):
    """Every weighting in ``methods`` x every seed in ``seeds``, then the summary.

    ``train_args`` go to :func:`train_run` (epochs, batch_size, optimizer, lr, ...).
    Finished runs are skipped on ``resume``; an interrupted one continues from its
    last checkpoint. Returns the summary written to ``out/results.json``.
    """
    log = log or logging.getLogger(__name__)
    for method in methods:
        if method not in common.WEIGHTINGS:
            raise ValueError("class weighting must be one of %s, got %r"
                             % (", ".join(common.WEIGHTINGS), method))
    data_dir = data_dir or os.path.join(out, "data")
    root = os.path.join(data_dir, data.dataset_name(num_train, num_test, image_size, data_seed))
    data.generate(root, num_train, num_test, image_size, data_seed)
    train_set, test_set = data.voc_dataset(root, "train"), data.voc_dataset(root, "test")
    train_data, test_data = data.load_arrays(train_set), data.load_arrays(test_set)
    shares = data.pixel_shares(train_data[1])
    log.info("data %s: %d train / %d test images; train pixel shares %s",
             root, len(train_data[1]), len(test_data[1]),
             ", ".join("%s %.2f%%" % (n, 100 * s) for n, s in zip(data.CLASSES, shares)))
    display = report.display_indices(test_data[1], data.CLASSES.index("speck"))

    runs = {}
    for method in methods:
        # from the mask files only, void skipped; 'median' counts per image
        weight = class_weights.for_segmentation(train_set, method=method, beta=beta,
                                                num_class=data.NUM_CLASS)
        log.info("class weights %s: %s", method, " ".join("%.4f" % w for w in weight))
        for seed in seeds:
            name = report.run_name(method, seed)
            run_dir = os.path.join(out, "runs", name)
            done = os.path.join(run_dir, "results.json")
            finished = common.read_json(done) if resume and os.path.exists(done) else None
            if finished is not None and finished["epochs"] == epochs:
                runs[name] = finished
                log.info("%s: finished earlier, kept", name)
                continue
            common.set_seed(seed)
            runs[name] = train_run(run_dir, train_data, test_data, data.NUM_CLASS, weight,
                                   seed=seed, epochs=epochs, resume=resume, quiet=quiet, log=log,
                                   display_indices=display, **train_args)
    summary = report.summarize(runs, methods, seeds, data.CLASSES)
    summary["train_pixel_shares"] = [float(s) for s in shares]
    common.write_results(out, summary)
    report.write_table(os.path.join(out, "summary.md"), summary, data.CLASSES)
    report.plot_curves(os.path.join(out, "segmentation_curves.png"), runs, methods, seeds)
    report.plot_masks(os.path.join(out, "segmentation_masks.png"), out, test_data, methods,
                      seeds[0], display, data.CLASSES)
    return summary


def main(argv=None):
    args = resolve_args(argv)
    os.makedirs(args.out, exist_ok=True)
    common.write_json(os.path.join(args.out, common.ARGS), vars(args))
    log = common.get_logger(args.out, quiet=args.quiet, name="segmentation")
    log.info("python -m examples.segmentation %s",
             " ".join(sys.argv[1:] if argv is None else argv))
    tic = time.time()
    summary = run_sweep(
        args.out, common.comma_list()(args.class_weighting), list(range(args.seed, args.seed + args.seeds)),
        data_dir=args.data_dir, num_train=args.num_train, num_test=args.num_test,
        image_size=args.image_size, data_seed=args.data_seed, beta=args.beta,
        resume=bool(args.resume), quiet=args.quiet, log=log,
        epochs=args.epochs, batch_size=args.batch_size, optimizer=args.optimizer, lr=args.lr,
        momentum=args.momentum, wd=args.wd, lr_decay=args.lr_decay,
        lr_decay_epochs=common.int_list(args.lr_decay_epochs), aux_weight=args.aux_weight,
        normalization=args.normalization, widths=tuple(common.int_list(args.widths)),
        ctx=common.parse_contexts(args.ctx, args.gpus), kvstore=args.kvstore,
        hybridize=args.hybridize, max_iters=args.max_iters)
    log.info("summary (test split, final epoch, mean ± std over seeds):\n%s",
             report.format_table(summary, data.CLASSES))
    log.info("wrote %s in %.0fs", os.path.join(args.out, common.RESULTS), time.time() - tic)
    return summary
