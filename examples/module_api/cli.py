"""Command line of ``python -m examples.module_api``: flags -> ``train.run`` keyword arguments.

    python -m examples.module_api --out runs/module_api                  # both, under a minute
    python -m examples.module_api --task center --ctx cpu:0,cpu:1 --kvstore local
    python -m examples.module_api --task rcnn --class-weighting median
    python -m examples.module_api --resume runs/module_api --epochs 20

Every flag and the results: docs/module_api.md (section "Example").
"""
import argparse
import os
import time

from examples import common

from .train import TASKS, run


def build_parser():
    p = argparse.ArgumentParser(
        prog="python -m examples.module_api",
        description="An RCNN-style multi_output head with class weights and a LeNet-style "
                    "center-loss network, trained with mx.mod.Module.fit.",
        epilog="--batch-size defaults to 16 RoI images (rcnn) and 64 digits (center). "
               "--hybridize has no effect: Module graphs are always static.")
    g = p.add_argument_group("this example")
    g.add_argument("--task", choices=TASKS + ("both",), default="both")
    g.add_argument("--lambda", dest="weight", type=float, default=0.01, metavar="LAMBDA",
                   help="center-loss weight lambda (default %(default)s)")
    g.add_argument("--alpha", type=float, default=0.5,
                   help="Eq. 4 center rate (default %(default)s)")
    g.add_argument("--feature-dim", type=int, default=2,
                   help="center-loss feature dimension (default %(default)s)")
    common.add_common_arguments(p, epochs=16, batch_size=None, lr=0.1, wd=1e-4,
                                lr_decay_epochs="12", class_weighting="inverse")
    return p


def parse(argv=None):
    """The command line ``argv`` as a dict of flags (the resume rule applied)."""
    args = vars(common.parse_args(build_parser(), argv))
    if args["out"] is None:
        args["out"] = os.path.join("runs", time.strftime("module_api-%Y%m%d-%H%M%S"))
    return args


def main(argv=None):
    args = parse(argv)
    out = args["out"]
    log = common.get_logger(out, quiet=args["quiet"])
    common.write_json(os.path.join(out, common.ARGS), args)
    settings = dict(contexts=common.parse_contexts(args["ctx"], args["gpus"]),
                    lr_decay_epochs=common.int_list(args["lr_decay_epochs"]),
                    resume=bool(args["resume"]))
    settings.update((k, args[k]) for k in (
        "kvstore", "epochs", "optimizer", "lr", "momentum", "wd", "lr_decay",
        "class_weighting", "beta", "max_iters", "seed", "weight", "alpha", "feature_dim"))
    if args["batch_size"]:
        settings["batch_size"] = args["batch_size"]
    tasks = TASKS if args["task"] == "both" else (args["task"],)
    return run(out, tasks, log=log, **settings)
