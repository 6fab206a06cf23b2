"""Command lines of the Faster R-CNN example: training (``python -m examples.faster_rcnn``),
inference (``python -m examples.faster_rcnn.infer``) and the run summary
(``python -m examples.faster_rcnn.summarize``). Each parses its flags and calls the
functions the tests call; nothing else here."""
import argparse
import os
import sys

from examples import common
from examples.faster_rcnn import train as T

_DEFAULTS = T.Config()
# the shared flags (examples.common.add_common_arguments) with this example's defaults
_SHARED = ("out", "epochs", "batch_size", "optimizer", "lr", "momentum", "wd", "lr_decay",
           "lr_decay_epochs", "seed", "ctx", "gpus", "kvstore", "hybridize",
           "class_weighting", "beta", "max_iters", "quiet")


def _add(group, flag, help, **kwargs):
    """``add_argument`` with the :class:`train.Config` default, shown in the help."""
    dest = kwargs.setdefault("dest", flag.lstrip("-").replace("-", "_"))
    kwargs.setdefault("default", getattr(_DEFAULTS, dest))
    if kwargs["default"] is not None and not isinstance(kwargs["default"], bool):
        help += " (default %s)" % (",".join(map(str, kwargs["default"]))
                                   if isinstance(kwargs["default"], tuple) else "%(default)s")
    group.add_argument(flag, help=help, **kwargs)


def build_parser():
    """The training flags; every one is the :class:`train.Config` field of its name."""
    p = argparse.ArgumentParser(
        prog="python -m examples.faster_rcnn",
        description="Faster R-CNN (GluonCV) with a class-weighted RCNN classification loss.")
    g = p.add_argument_group("data")
    _add(g, "--dataset", choices=T.data.SOURCES,
         help="'shapes': generated, imbalanced; 'voc': VOCdevkit under --data-root; "
              "'lst': GluonCV LstDetection on --lst-train / --lst-test")
    _add(g, "--lst-train", metavar="FILE", help="lst: training .lst file")
    _add(g, "--lst-test", metavar="FILE", help="lst: test .lst file (none: no evaluation)")
    _add(g, "--data-root", help="voc: folder holding VOC2007/ (and VOC2012/); lst: image root "
                                "(default: the .lst file's folder); shapes: cache folder "
                                "(default data/shapes)")
    _add(g, "--voc-train", help="comma-separated YEAR/SPLIT list for VOC training")
    _add(g, "--voc-test", help="YEAR/SPLIT for VOC testing")
    _add(g, "--classes", type=common.comma_list(str),
         help="lst: comma-separated class names (default class0..classK)")
    _add(g, "--shapes-train", type=int, help="shapes: training images")
    _add(g, "--shapes-test", type=int, help="shapes: test images")
    _add(g, "--shapes-size", type=int, help="shapes: image side, pixels")
    _add(g, "--shapes-freq", type=common.comma_list(float),
         help="shapes: relative training frequencies of circle,square,triangle,star")
    _add(g, "--num-workers", type=int, help="DataLoader worker processes")

    g = p.add_argument_group("model")
    _add(g, "--network", choices=T.model.NETWORKS,
         help="'tiny': 4 conv stages, stride 16, for CPUs; the ResNet-50 variants are "
              "GluonCV's Faster R-CNN for real hardware")
    _add(g, "--pretrained-base", action="store_true",
         help="ResNet-50: load ImageNet weights already present in --model-root "
              "(never downloads)")
    _add(g, "--model-root", help="where --pretrained-base looks")
    _add(g, "--short", type=int, help="image short side (default: the network's)")
    _add(g, "--max-size", type=int, help="image long side cap (default: the network's)")

    g = p.add_argument_group("loss and schedule (see also the shared flags)")
    _add(g, "--rcnn-cls-loss", choices=("weighted", "softmax"),
         help="'weighted': gluon_losses.WeightedSoftmaxCELoss; 'softmax': gluon's "
              "SoftmaxCrossEntropyLoss with GluonCV's masking (the baseline)")
    _add(g, "--background-weight", type=float,
         help="weight of class 0 (background) in the RCNN classification loss")
    _add(g, "--weight-scale", choices=("counted-mean", "library"),
         help="'counted-mean': foreground weights rescaled to mean 1 over training "
              "instances; 'library': as gluon_losses.class_weights returns them")
    _add(g, "--lr-warmup", type=int, help="linear warm-up iterations")
    _add(g, "--clip-gradient", type=float, help="gradient clipping, 0 for none")

    g = p.add_argument_group("devices and output (see also the shared flags)")
    _add(g, "--horovod", action="store_true", help="distributed training with horovod")
    _add(g, "--stall-timeout", type=float, metavar="SECONDS",
         help="with --horovod or a dist kvstore: exit with status 75 when no training step "
              "completes for SECONDS (a dead process of the job); 0 = never")
    _add(g, "--amp", action="store_true", help="automatic mixed precision")
    _add(g, "--val-interval", type=int, help="evaluate every N epochs and after the last")
    _add(g, "--save-interval", type=int, help="checkpoint every N epochs and after the last")
    _add(g, "--no-export", dest="export", action="store_false",
         help="skip export() at the end")
    common.add_common_arguments(p, **{k: getattr(_DEFAULTS, k) for k in _SHARED})
    return p


def parse_config(argv=None):
    """The :class:`train.Config` of a command line (``--resume``: see
    ``examples.common.parse_args``)."""
    p = build_parser()
    args = common.parse_args(p, argv, runtime=T.RUNTIME)
    try:
        return T.Config(**vars(args))
    except ValueError as error:
        p.error(str(error))


def main(argv=None):
    """``python -m examples.faster_rcnn [FLAGS]``: train; returns the results."""
    return T.train(parse_config(argv))


def infer_main(argv=None):
    """``python -m examples.faster_rcnn.infer PREFIX IMAGE [--out PNG]``."""
    import mxnet as mx
    from examples.faster_rcnn import infer
    p = argparse.ArgumentParser(prog="python -m examples.faster_rcnn.infer",
                                description=infer.__doc__.split("\n")[0])
    p.add_argument("prefix", help="export prefix, e.g. runs/detect/export/faster_rcnn")
    p.add_argument("image", help="an image file (any format mx.image.imread reads)")
    p.add_argument("--out", default=None, help="output image (default IMAGE-boxes.png)")
    p.add_argument("--threshold", type=float, default=0.5, help="minimum score to draw")
    p.add_argument("--gpu", type=int, default=None, help="GPU id (default CPU)")
    args = p.parse_args(argv)
    ctx = mx.gpu(args.gpu) if args.gpu is not None else mx.cpu()
    net, meta = infer.load_detector(args.prefix, ctx)
    image = mx.image.imread(args.image)
    found = infer.detect(net, meta, image, args.threshold, ctx)
    out = args.out or os.path.splitext(args.image)[0] + "-boxes.png"
    infer.draw(image, found, meta["classes"], out)
    for name, score, box in found:
        print("%-10s %.3f  [%s]" % (name, score, ", ".join("%.1f" % v for v in box)))
    print("%d detection(s) >= %.2f drawn on %s" % (len(found), args.threshold, out),
          file=sys.stderr)
    return found


def summarize_main(argv=None):
    """``python -m examples.faster_rcnn.summarize RUN_DIR... [--plot PNG]``."""
    from examples.faster_rcnn import summarize
    p = argparse.ArgumentParser(prog="python -m examples.faster_rcnn.summarize",
                                description=summarize.__doc__.split("\n")[0])
    p.add_argument("runs", nargs="+", help="training --out folders holding results.json")
    p.add_argument("--plot", default=None, help="also plot test mAP against epoch to this PNG")
    args = p.parse_args(argv)
    runs = summarize.load_runs(args.runs)
    print("\n".join(summarize.table(runs)))
    if args.plot:
        print("plot: %s" % summarize.plot(runs, args.plot))
