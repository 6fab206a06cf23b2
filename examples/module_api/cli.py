"""Command line of ``python -m examples.module_api``: flags -> ``train.run`` keyword arguments.

    python -m examples.module_api --out runs/module_api                  # both, under a minute
    python -m examples.module_api --task center --ctx cpu:0,cpu:1 --kvstore local
    python -m examples.module_api --task rcnn --class-weighting median --epochs 12
    python -m examples.module_api --resume runs/module_api --epochs 20
"""
import argparse
import os
import time

from examples.common import get_logger, parse_contexts, read_json, write_json

from .train import TASKS, WEIGHTINGS, run

RUNTIME_FLAGS = ("out", "resume", "epochs", "ctx", "gpus", "kvstore", "hybridize",
                 "max_iters", "quiet")


def build_parser():
    p = argparse.ArgumentParser(prog="python -m examples.module_api",
                                description=__doc__.split("\n")[0])
    g = p.add_argument_group("shared by every example")
    g.add_argument("--out", metavar="DIR", help="run folder (default runs/module_api-<time>)")
    g.add_argument("--resume", metavar="DIR",
                   help="continue the run in DIR from its last checkpoints; flags not given "
                        "come from DIR/args.json")
    g.add_argument("--epochs", type=int, default=16, help="total epochs, from 1 (default 16)")
    g.add_argument("--batch-size", type=int, default=None,
                   help="default 16 RoI images (rcnn), 64 digits (center)")
    g.add_argument("--optimizer", default="sgd", help="any mxnet optimizer name (default sgd)")
    g.add_argument("--lr", type=float, default=0.1, help="learning rate (default 0.1)")
    g.add_argument("--momentum", type=float, default=0.9, help="default 0.9")
    g.add_argument("--wd", type=float, default=1e-4, help="weight decay (default 1e-4)")
    g.add_argument("--lr-decay", type=float, default=0.1, help="default 0.1")
    g.add_argument("--lr-decay-epochs", default="12", metavar="E1,E2",
                   help="epochs after which lr is multiplied by --lr-decay (default 12)")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--ctx", default="cpu", help="cpu, gpu:0, or a list such as cpu:0,cpu:1")
    g.add_argument("--gpus", default="", help="e.g. 0,1; wins over --ctx")
    g.add_argument("--kvstore", default="device", help="device | local | dist_sync")
    g.add_argument("--hybridize", action=argparse.BooleanOptionalAction, default=True,
                   help="accepted for uniformity; Module graphs are always static")
    g.add_argument("--class-weighting", choices=WEIGHTINGS, default="inverse",
                   help="class weights of the softmax from gluon_losses.class_weights "
                        "(default inverse)")
    g.add_argument("--beta", type=float, default=0.999, help="beta of 'effective'")
    g.add_argument("--max-iters", type=int, default=0, metavar="N",
                   help="iterations per epoch, 0 = all (smoke tests)")
    g.add_argument("--quiet", action="store_true", help="no console lines")
    e = p.add_argument_group("this example")
    e.add_argument("--task", choices=TASKS + ("both",), default="both")
    e.add_argument("--lambda", dest="weight", type=float, default=0.01,
                   help="center-loss weight lambda (default 0.01)")
    e.add_argument("--alpha", type=float, default=0.5, help="Eq. 4 center rate (default 0.5)")
    e.add_argument("--feature-dim", type=int, default=2, help="center-loss features (default 2)")
    return p


def parse(argv=None):
    """Flags as a dict; with ``--resume`` the saved ``args.json`` fills the flags not given."""
    parser = build_parser()
    args = vars(parser.parse_args(argv))
    if args["resume"]:
        saved = read_json(os.path.join(args["resume"], "args.json"))
        given = vars(parser.parse_args(argv, argparse.Namespace(**dict.fromkeys(args))))
        changed = sorted(k for k, v in given.items() if v is not None and k in saved
                         and k not in RUNTIME_FLAGS and saved[k] != v)
        if changed:
            parser.error("--resume continues the saved experiment; these flags differ from "
                         "it: %s" % ", ".join(changed))
        args = dict(saved, **{k: v for k, v in given.items() if v is not None})
        args["out"] = args.get("out") or args["resume"]
    args["out"] = args["out"] or os.path.join("runs", time.strftime("module_api-%Y%m%d-%H%M%S"))
    return args


def main(argv=None):
    args = parse(argv)
    out = args["out"]
    log = get_logger(out, quiet=args["quiet"])
    write_json(os.path.join(out, "args.json"), {k: v for k, v in args.items() if k != "resume"})
    tasks = TASKS if args["task"] == "both" else (args["task"],)
    decay_epochs = [int(e) for e in str(args["lr_decay_epochs"]).split(",") if e.strip()]
    settings = dict(contexts=parse_contexts(args["ctx"], args["gpus"]), kvstore=args["kvstore"],
                    epochs=args["epochs"], optimizer=args["optimizer"], lr=args["lr"],
                    momentum=args["momentum"], wd=args["wd"], lr_decay=args["lr_decay"],
                    lr_decay_epochs=decay_epochs, class_weighting=args["class_weighting"],
                    beta=args["beta"], max_iters=args["max_iters"], seed=args["seed"],
                    resume=bool(args["resume"]), weight=args["weight"], alpha=args["alpha"],
                    feature_dim=args["feature_dim"])
    if args["batch_size"]:
        settings["batch_size"] = args["batch_size"]
    return run(out, tasks, log=log, **settings)
