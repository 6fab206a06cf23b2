"""Command line of the center-loss example: flags -> the keyword arguments of ``train.run``.

    python -m examples.center_loss --out runs/demo             # digits, no download
    python -m examples.center_loss --lambda 0.003 --alpha 0.5   # the paper's setting
    python -m examples.center_loss --dataset mnist --data-dir ~/data/mnist
    python -m examples.center_loss --resume runs/demo --epochs 40
    python -m examples.center_loss --imbalance 10               # class weights switch on

Every flag and the results: docs/examples/center_loss.md.
"""
import argparse
import inspect
import os
import sys
import time

from examples import common
from examples.center_loss import train

# The defaults live in train.run's signature; the command line shows the same ones.
DEFAULTS = {name: p.default for name, p in inspect.signature(train.run).parameters.items()
            if p.default is not inspect.Parameter.empty}


def build_parser():
    d = DEFAULTS
    p = argparse.ArgumentParser(
        prog="python -m examples.center_loss",
        description="Softmax vs softmax + center loss on 2-D features, trained side by side.",
        epilog="Defaults that depend on --dataset: --size, --channels, --epochs (24 for digits, "
               "12 else) and --lr-decay-epochs (16,21 for digits, 8,11 else). "
               "--class-weighting: inverse under --imbalance, none otherwise.\n\n"
               + __doc__.split("\n\n")[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    g = p.add_argument_group("data")
    g.add_argument("--dataset", choices=sorted(train.DATASET_DEFAULTS), default=d["dataset"],
                   help="digits: scikit-learn's 8x8 digits, no download (default). "
                        "mnist / fashion-mnist: read from --data-dir, never downloaded")
    g.add_argument("--data-dir", default=d["data_dir"],
                   help="folder with the four *-idx?-ubyte.gz files")
    g.add_argument("--size", type=int, default=d["size"],
                   help="input side in pixels (default 16 for digits, 28 else)")
    g.add_argument("--imbalance", type=float, metavar="RATIO", default=d["imbalance"],
                   help="keep only 1/RATIO of the training images of the --minority classes "
                        "(default %(default)s: balanced)")
    g.add_argument("--minority", type=common.int_list, default=list(d["minority"]),
                   help="classes shrunk by --imbalance (default 5,6,7,8,9)")
    g = p.add_argument_group("model and losses")
    g.add_argument("--channels", type=common.int_list, default=d["channels"],
                   help="conv widths per stage (default 16,32,64 for digits, "
                        "32,64,128 = LeNets++ for MNIST)")
    g.add_argument("--convs-per-stage", type=int, default=d["convs_per_stage"],
                   help="default %(default)s")
    g.add_argument("--feature-dim", type=int, default=d["feature_dim"],
                   help="default %(default)s (the plots show the first two)")
    g.add_argument("--lambda", dest="lam", type=float, metavar="LAMBDA", default=d["lam"],
                   help="center loss weight lambda (default %(default)s; the paper's MNIST "
                        "figure uses 0.003)")
    g.add_argument("--alpha", type=float, default=d["alpha"],
                   help="center update rate (default %(default)s)")
    g = p.add_argument_group("distributed")
    g.add_argument("--stall-timeout", type=float, metavar="SECONDS", default=d["stall_timeout"],
                   help="with a dist kvstore: exit with status 75 when no training step "
                        "completes for SECONDS (a dead worker, server or scheduler); above the "
                        "slowest epoch's evaluation; 0 = never (default %(default)s)")
    common.add_common_arguments(
        p, out=None, epochs=None, batch_size=d["batch_size"], optimizer=d["optimizer"],
        lr=d["lr"], momentum=d["momentum"], wd=d["wd"], lr_decay=d["lr_decay"],
        lr_decay_epochs=None, seed=d["seed"], class_weighting=None, beta=d["beta"])
    return p


def parse(argv=None):
    """The keyword arguments of ``train.run`` for the command line ``argv``."""
    args = common.parse_args(build_parser(), argv, runtime=train.RUNTIME)
    if args.out is None:
        args.out = os.path.join("runs", time.strftime("center-%Y%m%d-%H%M%S"))
    return vars(args)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    return train.run(command="python -m examples.center_loss " + " ".join(argv), **parse(argv))
