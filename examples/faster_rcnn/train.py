"""Train GluonCV's Faster R-CNN with a class-weighted RCNN classification loss.

The RCNN classification loss is ``gluon_losses.WeightedSoftmaxCELoss`` with
``ignore_label=-1`` (GluonCV marks unsampled proposals with -1 in ``cls_targets``)
and ``normalization='valid'``, called as ``loss(cls_pred, cls_targets)``. The RPN
losses and the RCNN box loss are GluonCV's, with GluonCV's normalization. With
``--rcnn-cls-loss softmax`` the script uses gluon's unweighted
``SoftmaxCrossEntropyLoss`` with GluonCV's mask-and-rescale arithmetic instead, so
the two can be compared under one seed and schedule.

Run ``python -m examples.faster_rcnn --help`` for the flags; see
docs/faster_rcnn.md for a walk-through and measured results.
"""
import argparse
import logging
import os
import sys
import time
import warnings


import numpy as np
import mxnet as mx
from mxnet import autograd, gluon
from mxnet.gluon import nn

from examples.common import (get_logger, load_checkpoint, parse_contexts, save_checkpoint,
                          set_seed, write_json)

# The quantities GluonCV's FasterRCNN returns in training mode, in order.
TRAIN_OUTPUTS = ("cls_pred", "box_pred", "rpn_box_proposals", "samples", "matches",
                 "rpn_score", "rpn_box", "anchors", "cls_targets", "box_targets", "box_masks",
                 "indices")

NETWORKS = ("tiny", "resnet50_v1b", "fpn_resnet50_v1b")
WEIGHTINGS = ("inverse", "median", "effective", "none")


# --------------------------------------------------------------------------- arguments

def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description="Faster R-CNN (GluonCV) with a class-weighted RCNN classification loss.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    g = p.add_argument_group("data")
    g.add_argument("--dataset", nargs="+", default=["shapes"], metavar="ARG",
                   help="'shapes' (generated, imbalanced; default), 'voc' (VOCdevkit under "
                        "--data-root) or 'lst TRAIN.lst [TEST.lst]' (GluonCV LstDetection)")
    g.add_argument("--data-root", default=None,
                   help="voc: folder holding VOC2007/ (and VOC2012/); lst: image root "
                        "(default: the .lst file's folder); shapes: cache folder "
                        "(default data/shapes)")
    g.add_argument("--voc-train", default="2007/trainval",
                   help="comma-separated YEAR/SPLIT list for VOC training")
    g.add_argument("--voc-test", default="2007/test", help="YEAR/SPLIT for VOC testing")
    g.add_argument("--classes", default=None,
                   help="lst: comma-separated class names (default class0..classK)")
    g.add_argument("--shapes-train", type=int, default=600, help="shapes: training images")
    g.add_argument("--shapes-test", type=int, default=300, help="shapes: test images")
    g.add_argument("--shapes-size", type=int, default=128, help="shapes: image side, pixels")
    g.add_argument("--shapes-freq", default="50,25,10,2",
                   help="shapes: relative training frequencies of circle,square,triangle,star")
    g.add_argument("--num-workers", type=int, default=0, help="DataLoader worker processes")

    g = p.add_argument_group("model")
    g.add_argument("--network", choices=NETWORKS, default="tiny",
                   help="'tiny': 4 conv stages, stride 16, for CPUs; the ResNet-50 variants "
                        "are GluonCV's Faster R-CNN for real hardware")
    g.add_argument("--pretrained-base", action="store_true",
                   help="ResNet-50: load ImageNet weights already present in --model-root "
                        "(never downloads)")
    g.add_argument("--model-root", default=os.path.join("~", ".mxnet", "models"))
    g.add_argument("--short", type=int, default=None, help="image short side (network default)")
    g.add_argument("--max-size", type=int, default=None, help="image long side cap")

    g = p.add_argument_group("loss")
    g.add_argument("--rcnn-cls-loss", choices=("weighted", "softmax"), default="weighted",
                   help="'weighted': gluon_losses.WeightedSoftmaxCELoss; 'softmax': gluon's "
                        "SoftmaxCrossEntropyLoss with GluonCV's masking (the baseline)")
    g.add_argument("--class-weighting", choices=WEIGHTINGS, default="effective",
                   help="foreground class weights from the training labels "
                        "(gluon_losses.class_weights); 'none' gives all ones")
    g.add_argument("--beta", type=float, default=0.99,
                   help="effective-number beta (Cui et al. 2019); 0.999 is close to inverse "
                        "frequency on the shapes set, see docs/faster_rcnn.md")
    g.add_argument("--background-weight", type=float, default=1.0,
                   help="weight of class 0 (background) in the RCNN classification loss")
    g.add_argument("--weight-scale", choices=("counted-mean", "library"), default="counted-mean",
                   help="'counted-mean': rescale the foreground weights so that their mean over "
                        "training instances is 1 (foreground vs background balance unchanged, "
                        "only the split among foreground classes moves); 'library': as "
                        "gluon_losses.class_weights returns them")

    g = p.add_argument_group("optimisation")
    g.add_argument("--epochs", type=int, default=10)
    g.add_argument("--batch-size", type=int, default=2, help="images per device per step")
    g.add_argument("--optimizer", default="sgd")
    g.add_argument("--lr", type=float, default=0.02, help="learning rate")
    g.add_argument("--lr-decay", type=float, default=0.1)
    g.add_argument("--lr-decay-epoch", default="7,9", help="epochs at which lr *= lr-decay")
    g.add_argument("--lr-warmup", type=int, default=100, help="linear warm-up iterations")
    g.add_argument("--momentum", type=float, default=0.9)
    g.add_argument("--wd", type=float, default=1e-4)
    g.add_argument("--clip-gradient", type=float, default=10.0)
    g.add_argument("--seed", type=int, default=0)

    g = p.add_argument_group("devices")
    g.add_argument("--ctx", default="cpu", help="e.g. cpu, cpu:0,cpu:1, gpu:0")
    g.add_argument("--gpus", default="", help="e.g. 0,1 (overrides --ctx)")
    g.add_argument("--kvstore", default="device", help="gluon.Trainer kvstore")
    g.add_argument("--horovod", action="store_true", help="distributed training with horovod")
    g.add_argument("--amp", action="store_true", help="automatic mixed precision")
    g.add_argument("--hybridize", action="store_true", help="hybridize the network")

    g = p.add_argument_group("output")
    g.add_argument("--out", default=os.path.join("runs", "faster_rcnn"))
    g.add_argument("--resume", default=None, metavar="DIR",
                   help="continue from DIR/checkpoint.json (DIR is usually --out)")
    g.add_argument("--val-interval", type=int, default=2, help="evaluate every N epochs")
    g.add_argument("--save-interval", type=int, default=1, help="checkpoint every N epochs")
    g.add_argument("--max-iters", type=int, default=0,
                   help="stop each epoch after N iterations (smoke tests)")
    g.add_argument("--no-export", action="store_true", help="skip export() at the end")
    g.add_argument("--quiet", action="store_true", help="no console log, no progress bar")
    args = p.parse_args(argv)

    name = args.dataset[0]
    if name not in ("shapes", "voc", "lst"):
        p.error("--dataset must be shapes, voc or lst, got %r" % name)
    if name == "lst" and not 2 <= len(args.dataset) <= 3:
        p.error("--dataset lst needs TRAIN.lst and optionally TEST.lst")
    if name != "lst" and len(args.dataset) != 1:
        p.error("--dataset %s takes no file arguments" % name)
    if name == "voc" and not args.data_root:
        p.error("--dataset voc needs --data-root (the folder holding VOC2007/)")
    if args.background_weight <= 0:
        p.error("--background-weight must be > 0")
    return args


# --------------------------------------------------------------------------- data

def _voc_splits(text):
    splits = []
    for item in text.split(","):
        year, _, split = item.strip().partition("/")
        splits.append((int(year), split or "trainval"))
    return splits


def build_datasets(args):
    """Return ``(train_dataset, test_dataset, classes)``; items are ``(image, label)``."""
    name = args.dataset[0]
    if name == "shapes":
        from examples.faster_rcnn.data import ShapesDetection
        root = args.data_root or os.path.join("data", "shapes")
        freq = [float(f) for f in args.shapes_freq.split(",")]
        train = ShapesDetection("train", args.shapes_train, args.seed, freq, args.shapes_size, root)
        test = ShapesDetection("test", args.shapes_test, args.seed, None, args.shapes_size, root)
        return train, test, train.classes
    if name == "voc":
        from gluoncv.data import VOCDetection
        root = os.path.expanduser(args.data_root)
        train = VOCDetection(root=root, splits=_voc_splits(args.voc_train))
        test = VOCDetection(root=root, splits=_voc_splits(args.voc_test))
        return train, test, list(train.classes)
    from gluoncv.data import LstDetection
    train_file = args.dataset[1]
    test_file = args.dataset[2] if len(args.dataset) > 2 else None
    root = args.data_root or os.path.dirname(os.path.abspath(train_file))
    train = LstDetection(train_file, root=root)
    test = LstDetection(test_file, root=root) if test_file else None
    if args.classes:
        classes = [c.strip() for c in args.classes.split(",")]
    else:
        top = max(int(l[:, 4].max()) for l in dataset_labels(train) if len(l))
        classes = ["class%d" % i for i in range(top + 1)]
    return train, test, classes


def dataset_labels(dataset):
    """Every label array of a detection dataset, without decoding images where possible."""
    if hasattr(dataset, "label_list"):
        return dataset.label_list()
    if getattr(dataset, "_label_cache", None):  # VOCDetection(preload_label=True)
        return [np.asarray(l) for l in dataset._label_cache]
    if hasattr(dataset, "_labels") and hasattr(dataset, "_coord_normalized"):  # LstDetection
        from gluoncv.data.lst.detection import _transform_label
        return [_transform_label(l) for l in dataset._labels]
    return [np.asarray(dataset[i][1]) for i in range(len(dataset))]


def foreground_counts(dataset, num_fg):
    """Instances of each foreground class in the training labels."""
    from gluon_losses.class_weights import class_counts
    ids = [np.asarray(l)[:, 4] for l in dataset_labels(dataset) if len(l)]
    ids = [i[i >= 0] for i in ids]  # padding / unknown
    return class_counts(ids, num_classes=num_fg, ignore_label=-1)


def rcnn_class_weight(args, counts):
    """``(num_fg + 1,)`` weights for GluonCV's cls_targets: background (0) first."""
    from gluon_losses import class_weights as cw
    if args.class_weighting == "inverse":
        fg = cw.inverse_frequency(counts)
    elif args.class_weighting == "median":
        fg = cw.median_frequency(counts)
    elif args.class_weighting == "effective":
        fg = cw.effective_number(counts, beta=args.beta)
    else:
        fg = np.ones(len(counts), dtype=np.float32)
    if args.weight_scale == "counted-mean":
        counts = np.asarray(counts, dtype=np.float64)
        fg = fg * counts.sum() / max(float(np.dot(counts, fg)), 1e-12)
    return np.concatenate([[args.background_weight], fg]).astype(np.float32)


# --------------------------------------------------------------------------- model

def _conv_bn(channels, stride, kernel=3):
    block = nn.HybridSequential(prefix="")
    block.add(nn.Conv2D(channels, kernel, strides=stride, padding=kernel // 2, use_bias=False),
              nn.BatchNorm(), nn.Activation("relu"))
    return block


def tiny_faster_rcnn(classes, per_device_batch_size=1, short=256, max_size=320, **overrides):
    """GluonCV ``FasterRCNN`` around a 4-stage conv backbone (stride 16) for CPUs.

    ``overrides`` replace any of the ``FasterRCNN`` keyword arguments set here.
    """
    from gluoncv.model_zoo.rcnn.faster_rcnn import FasterRCNN
    features = nn.HybridSequential(prefix="tiny_features_")
    with features.name_scope():
        for channels in (32, 64, 96, 128):  # each stage halves the resolution: stride 16
            features.add(_conv_bn(channels, 2))
            features.add(_conv_bn(channels, 1))
    top_features = nn.HybridSequential(prefix="tiny_top_")
    with top_features.name_scope():
        top_features.add(_conv_bn(96, 2))  # 7x7 RoI -> 4x4
    box_features = nn.HybridSequential(prefix="tiny_box_")
    with box_features.name_scope():
        box_features.add(nn.Dense(256, weight_initializer=mx.init.Normal(0.01)),
                         nn.Activation("relu"))
    kwargs = dict(
        short=short, max_size=max_size, train_patterns=None,
        nms_thresh=0.3, nms_topk=100, post_nms=50, roi_mode="align", roi_size=(7, 7),
        strides=16, clip=4.14, rpn_channel=128, base_size=16, scales=(1, 2, 3),
        ratios=(0.5, 1, 2), alloc_size=(64, 64), rpn_nms_thresh=0.7,
        rpn_train_pre_nms=500, rpn_train_post_nms=200, rpn_test_pre_nms=300,
        rpn_test_post_nms=100, rpn_min_size=4, per_device_batch_size=per_device_batch_size,
        num_sample=64, pos_iou_thresh=0.5, pos_ratio=0.25, max_num_gt=16)
    kwargs.update(overrides)
    return FasterRCNN(features, top_features, classes, box_features=box_features, **kwargs)


def _local_base_weights(name, root):
    from gluoncv.model_zoo.model_store import short_hash
    path = os.path.join(os.path.expanduser(root), "%s-%s.params" % (name, short_hash(name)))
    if not os.path.exists(path):
        raise SystemExit("--pretrained-base: %s is not there; this script never downloads. "
                         "Copy the GluonCV %s ImageNet weights there or drop the flag."
                         % (path, name))
    return path


def build_net(args, classes):
    """The detector, parameters not yet initialized (``init_net`` does that)."""
    if args.network == "tiny":
        net = tiny_faster_rcnn(classes, args.batch_size, args.short or 256, args.max_size or 320)
    else:
        pretrained = False
        if args.pretrained_base:
            _local_base_weights("resnet50_v1b", args.model_root)
            pretrained = True
        kwargs = {"per_device_batch_size": args.batch_size}
        if args.network == "resnet50_v1b":
            from gluoncv.model_zoo import faster_rcnn_resnet50_v1b_custom
            net = faster_rcnn_resnet50_v1b_custom(classes, pretrained_base=pretrained,
                                                  root=args.model_root, **kwargs)
        else:
            # the module path matters: the package re-exports the double-head variant
            # under the same name
            from gluoncv.model_zoo.rcnn.faster_rcnn.faster_rcnn import custom_faster_rcnn_fpn
            net = custom_faster_rcnn_fpn(classes, pretrained_base=pretrained,
                                         base_network_name="resnet50_v1b", short=800,
                                         max_size=1333, min_stage=2, max_stage=6, nms_thresh=0.5,
                                         nms_topk=-1, post_nms=-1, roi_mode="align",
                                         roi_size=(7, 7), strides=(4, 8, 16, 32, 64), clip=4.14,
                                         rpn_channel=1024, base_size=16, scales=(2, 4, 8, 16, 32),
                                         ratios=(0.5, 1, 2), alloc_size=(384, 384),
                                         rpn_nms_thresh=0.7, rpn_train_pre_nms=12000,
                                         rpn_train_post_nms=2000, rpn_test_pre_nms=6000,
                                         rpn_test_post_nms=1000, rpn_min_size=1, num_sample=512,
                                         pos_iou_thresh=0.5, pos_ratio=0.25, max_num_gt=100,
                                         **kwargs)
        if args.short:
            net.short = args.short
        if args.max_size:
            net.max_size = args.max_size
    return net


def init_net(net, ctx):
    """Initialize whatever is not yet initialized (everything, without pretrained weights)."""
    # GluonCV builds the RCNN target generator lazily; build it now so that saved and
    # loaded parameter files always hold the same set (its box-encoder constants).
    net.target_generator.collect_params().reset_ctx(ctx)
    for param in net.collect_params().values():
        if param._data is None:
            # a parameter without an initializer of its own (e.g. in the FPN's SymbolBlock)
            # is chosen one by its name: zeros / ones for biases and norms, Xavier otherwise
            own = None
            if param.init is None and param.name.endswith(("bias", "beta", "running_mean")):
                own = mx.init.Zero()
            elif param.init is None and param.name.endswith(("gamma", "running_var")):
                own = mx.init.One()
            param.initialize(init=own, default_init=mx.init.Xavier(magnitude=2), ctx=ctx)
        else:
            param.reset_ctx(ctx)
    # only the train_patterns parameters learn (all of them for the tiny network)
    net.collect_params().setattr("grad_req", "null")
    for param in net.collect_train_params().values():
        if not isinstance(param, gluon.Constant):  # anchors are constants
            param.grad_req = "write"


# --------------------------------------------------------------------------- losses

def make_losses(args, class_weight):
    """GluonCV's RPN and box losses, and the chosen RCNN classification loss."""
    losses = {
        "rpn_cls": gluon.loss.SigmoidBinaryCrossEntropyLoss(from_sigmoid=False),
        "rpn_box": gluon.loss.HuberLoss(rho=1.0 / 9),
        "rcnn_box": gluon.loss.HuberLoss(rho=1.0),
    }
    if args.rcnn_cls_loss == "weighted":
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


# --------------------------------------------------------------------------- loops

def _shards(batch, ctx):
    """Per-device tuples from a FasterRCNNTrainBatchify batch (already cut per device)."""
    per_field = []
    for field in batch:
        if isinstance(field, (list, tuple)):
            per_field.append([x.as_in_context(c) for x, c in zip(field, ctx)])
        else:
            per_field.append(gluon.utils.split_and_load(field, ctx, even_split=True))
    return list(zip(*per_field))


def train_transform(net):
    """GluonCV's Faster R-CNN training transform for ``net`` (resize, flip, RPN targets)."""
    from gluoncv.data.transforms.presets.rcnn import FasterRCNNDefaultTrainTransform
    return FasterRCNNDefaultTrainTransform(net.short, net.max_size, net, ashape=net.ashape,
                                           multi_stage=getattr(net, "num_stages", 1) > 1)


def fixed_shard(net, dataset, n):
    """The first ``n`` images of ``dataset`` as one training shard on the CPU, the way
    the loader would batch them (for tests and benchmarks that repeat one batch)."""
    from gluoncv.data.batchify import FasterRCNNTrainBatchify
    transform = train_transform(net)
    batch = FasterRCNNTrainBatchify(net, 1)([transform(*dataset[i]) for i in range(n)])
    return _shards(batch, [mx.cpu()])[0]


def _stop(executor):
    """End a GluonCV ``Parallel``'s worker threads (they are not daemons)."""
    from gluoncv.utils.parallel import Parallel
    for _ in executor._threads:
        executor._in_queue.put(Parallel._StopSignal("stop"))
    for thread in executor._threads:
        thread.join(10)
    executor._threads = []


def lr_at(args, epoch, it, iters_per_epoch):
    lr = args.lr
    for e in (int(x) for x in args.lr_decay_epoch.split(",") if x.strip()):
        if epoch >= e:
            lr *= args.lr_decay
    step = epoch * iters_per_epoch + it
    if step < args.lr_warmup:
        lr *= (step + 1.0) / args.lr_warmup
    return lr


def evaluate(net, dataset, ctx, classes, hybridize=False):
    """VOC07 11-point AP per class and mAP on ``dataset``; returns ``{name: AP}``."""
    from gluoncv.data.batchify import Append, Tuple
    from gluoncv.data.transforms.presets.rcnn import FasterRCNNDefaultValTransform
    from gluoncv.utils.metrics.voc_detection import VOC07MApMetric
    metric = VOC07MApMetric(iou_thresh=0.5, class_names=list(classes))
    loader = gluon.data.DataLoader(
        dataset.transform(FasterRCNNDefaultValTransform(net.short, net.max_size)),
        batch_size=len(ctx), shuffle=False, batchify_fn=Tuple(*[Append() for _ in range(3)]),
        last_batch="keep")
    if hybridize:
        net.hybridize(static_alloc=True)  # re-trace in inference mode
    for batch in loader:
        det_boxes, det_ids, det_scores, gt_boxes, gt_ids, gt_difficult = [], [], [], [], [], []
        for x, y, im_scale in zip(*batch):
            c = ctx[len(det_ids) % len(ctx)]
            with warnings.catch_warnings():  # unused training-only box encoder: expected
                warnings.simplefilter("ignore", UserWarning)
                ids, scores, boxes = net(x.as_in_context(c))
            scale = float(im_scale.reshape(-1).asscalar())
            h, w = x.shape[2], x.shape[3]
            boxes = mx.nd.concat(boxes.slice_axis(-1, 0, 1).clip(0, w),
                                 boxes.slice_axis(-1, 1, 2).clip(0, h),
                                 boxes.slice_axis(-1, 2, 3).clip(0, w),
                                 boxes.slice_axis(-1, 3, 4).clip(0, h), dim=-1)
            det_ids.append(ids)
            det_scores.append(scores)
            det_boxes.append(boxes * scale)
            gt_ids.append(y.slice_axis(axis=-1, begin=4, end=5))
            gt_boxes.append(y.slice_axis(axis=-1, begin=0, end=4) * scale)
            gt_difficult.append(y.slice_axis(axis=-1, begin=5, end=6) if y.shape[-1] > 5 else None)
        for record in zip(det_boxes, det_ids, det_scores, gt_boxes, gt_ids, gt_difficult):
            metric.update(*record)  # one image at a time: object counts differ
    names, values = metric.get()
    return {n: float(v) for n, v in zip(names, values)}


def export_detector(net, out_dir, ctx, classes):
    """``net.export()`` the inference graph; returns the symbol/params prefix."""
    prefix = os.path.join(out_dir, "export", "faster_rcnn")
    os.makedirs(os.path.dirname(prefix), exist_ok=True)
    net.hybridize()  # a fresh trace, in inference mode
    with warnings.catch_warnings():  # the training-only box encoder is unused here, rightly
        warnings.simplefilter("ignore", UserWarning)
        net(mx.nd.zeros((1, 3, net.short, net.short), ctx=ctx[0]))
    net.export(prefix, epoch=0)
    write_json(prefix + "-meta.json", {
        "classes": list(classes), "short": int(net.short), "max_size": int(net.max_size),
        "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225],
        "symbol": os.path.basename(prefix) + "-symbol.json",
        "params": os.path.basename(prefix) + "-0000.params",
        "outputs": ["ids", "scores", "bboxes"]})
    return prefix


def _setup_horovod(args):
    try:
        import horovod.mxnet as hvd
    except ImportError:
        raise SystemExit("--horovod needs horovod built with MXNet support "
                         "(HOROVOD_WITH_MXNET=1 pip install horovod); it is not installed")
    hvd.init()
    return hvd


def main(argv=None):
    args = parse_args(argv)
    start = time.time()
    hvd = _setup_horovod(args) if args.horovod else None
    rank0 = hvd is None or hvd.rank() == 0
    if hvd is not None:
        ctx = [mx.gpu(hvd.local_rank())] if args.gpus else [mx.cpu(hvd.local_rank())]
    else:
        ctx = parse_contexts(args.ctx, args.gpus)
    log = get_logger(args.out, quiet=args.quiet or not rank0, name="train_faster_rcnn")
    if not rank0:
        log.setLevel(logging.WARNING)
    if args.amp:
        from mxnet.contrib import amp
        amp.init(target_dtype="float16" if ctx[0].device_type == "gpu" else "bfloat16")
    set_seed(args.seed)

    train_set, test_set, classes = build_datasets(args)
    num_fg = len(classes)
    counts = foreground_counts(train_set, num_fg)
    class_weight = rcnn_class_weight(args, counts)
    weighted = args.rcnn_cls_loss == "weighted"
    log.info("classes %s, training instances %s", list(classes), counts.tolist())
    if weighted:
        log.info("RCNN cls loss: WeightedSoftmaxCELoss, %s weights (background first) %s",
                 args.class_weighting, np.round(class_weight, 4).tolist())
    else:
        log.info("RCNN cls loss: gluon SoftmaxCrossEntropyLoss with GluonCV masking (unweighted)")

    net = build_net(args, classes)
    init_net(net, ctx)

    from gluoncv.data.batchify import FasterRCNNTrainBatchify
    transform = train_transform(net)
    if hvd is not None:
        train_set = train_set.shard(hvd.size(), hvd.rank())
    batch_size = args.batch_size * len(ctx)
    loader = gluon.data.DataLoader(
        train_set.transform(transform), batch_size=batch_size, shuffle=True,
        batchify_fn=FasterRCNNTrainBatchify(net, len(ctx)), last_batch="discard",
        num_workers=args.num_workers)
    iters = len(loader) if not args.max_iters else min(len(loader), args.max_iters)
    if iters == 0:
        raise SystemExit("fewer training images (%d) than one batch (%d)" % (len(train_set),
                                                                            batch_size))

    opt_params = {"learning_rate": args.lr, "wd": args.wd}
    if args.optimizer == "sgd":
        opt_params["momentum"] = args.momentum
    if args.clip_gradient > 0:
        opt_params["clip_gradient"] = args.clip_gradient
    params = net.collect_train_params()
    if hvd is not None:
        hvd.broadcast_parameters(net.collect_params(), root_rank=0)
        trainer = hvd.DistributedTrainer(params, args.optimizer, opt_params)
    else:
        trainer = gluon.Trainer(params, args.optimizer, opt_params, kvstore=args.kvstore,
                                update_on_kvstore=(False if args.amp else None))
    if args.amp:
        amp.init_trainer(trainer)

    history, start_epoch = [], 0
    if args.resume:
        record = load_checkpoint(args.resume, {"net": net}, {"trainer": trainer}, ctx)
        start_epoch = record["epoch"] + 1
        history = record.get("history", [])
        log.info("resumed from %s at epoch %d", args.resume, start_epoch)

    step = DetectionStep(net, make_losses(args, class_weight), weighted, trainer, args.amp)
    from gluoncv.utils.parallel import Parallel
    executor = Parallel(len(ctx) if len(ctx) > 1 else 0, step)

    try:
        from tqdm import tqdm
        names = ("rpn_cls", "rpn_box", "rcnn_cls", "rcnn_box")
        for epoch in range(start_epoch, args.epochs):
            set_seed(args.seed * 1000 + epoch)  # shuffle and flips depend only on (seed, epoch)
            if args.hybridize:
                net.hybridize(static_alloc=True)  # re-trace in training mode
            sums, seen, tic = np.zeros(4), 0, time.time()
            bar = tqdm(total=iters, desc="epoch %d" % epoch, leave=False,
                       disable=args.quiet or not rank0, file=sys.stderr)
            for it, batch in enumerate(loader):
                if it >= iters:
                    break
                trainer.set_learning_rate(lr_at(args, epoch, it, iters))
                shards = _shards(batch, ctx)
                for shard in shards:
                    executor.put(shard)
                parts = [executor.get() for _ in shards]
                trainer.step(batch_size)
                values = np.array([sum(p[k].sum().asscalar() for p in parts) for k in range(4)])
                if not np.all(np.isfinite(values)):
                    raise FloatingPointError("non-finite loss at epoch %d iteration %d: %s"
                                             % (epoch, it, dict(zip(names, values.tolist()))))
                sums += values
                seen += batch_size
                bar.update(1)
                bar.set_postfix({k: "%.3f" % (v / seen) for k, v in zip(names, sums)})
            bar.close()
            elapsed = time.time() - tic
            entry = {"epoch": epoch, "lr": trainer.learning_rate, "time_s": round(elapsed, 2),
                     "images_per_s": round(seen / elapsed, 2)}
            entry.update({k: float(v / max(seen, 1)) for k, v in zip(names, sums)})
            last = epoch == args.epochs - 1
            if rank0 and test_set is not None and ((epoch + 1) % args.val_interval == 0 or last):
                entry["ap"] = evaluate(net, test_set, ctx, classes, args.hybridize)
            history.append(entry)
            line = "[epoch %d] lr=%.4g %s %.1fs %.1f img/s" % (
                epoch, entry["lr"], " ".join("%s=%.4f" % (k, entry[k]) for k in names), elapsed,
                entry["images_per_s"])
            if "ap" in entry:
                line += " | mAP=%.4f (%s)" % (entry["ap"]["mAP"], ", ".join(
                    "%s=%.3f" % (c, entry["ap"][c]) for c in classes))
            log.info(line)
            if rank0 and ((epoch + 1) % args.save_interval == 0 or last):
                save_checkpoint(args.out, epoch, {"net": net}, {"trainer": trainer},
                                meta={"history": history, "classes": list(classes)})
    finally:
        _stop(executor)  # its worker threads would otherwise keep a failed run alive

    result = {"args": vars(args), "classes": list(classes), "train_counts": counts.tolist(),
              "class_weight": class_weight.tolist() if weighted else None,
              "rcnn_cls_loss": args.rcnn_cls_loss, "history": history,
              "final_ap": history[-1].get("ap") if history else None,
              "wall_time_s": round(time.time() - start, 1)}
    if rank0 and not args.no_export:
        result["export"] = export_detector(net, args.out, ctx, classes)
        log.info("exported %s-symbol.json / -0000.params", result["export"])
    if rank0:
        write_json(os.path.join(args.out, "results.json"), result)
        log.info("done in %.1fs; results in %s", result["wall_time_s"],
                 os.path.join(args.out, "results.json"))
    return result


def summarize(argv=None):
    """``summarize RUN_DIR... [--plot PNG]``: per-class AP / mAP table of finished runs."""
    p = argparse.ArgumentParser(prog="python -m examples.faster_rcnn summarize",
                                description="Markdown table of per-class AP and mAP of runs.")
    p.add_argument("runs", nargs="+", help="--out folders holding results.json")
    p.add_argument("--plot", default=None, help="also plot test mAP against epoch to this PNG")
    args = p.parse_args(argv)
    from examples.common import read_json
    results = [(run, read_json(os.path.join(run, "results.json"))) for run in args.runs]
    classes = results[0][1]["classes"]
    counts = results[0][1]["train_counts"]
    header = ["run", "RCNN cls loss"] + ["%s (%d)" % (c, n) for c, n in zip(classes, counts)] \
        + ["mAP", "wall time"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    groups, labels = {}, []
    for run, res in results:
        a = res["args"]
        loss = "softmax (unweighted)" if res["rcnn_cls_loss"] == "softmax" else \
            "weighted, %s%s" % (a["class_weighting"],
                                " beta=%g" % a["beta"] if a["class_weighting"] == "effective" else "")
        ap = res["final_ap"]
        groups.setdefault(loss, []).append(ap)
        labels.append(loss)
        lines.append("| " + " | ".join(
            ["%s (seed %d)" % (os.path.basename(run.rstrip("/")), a["seed"]), loss]
            + ["%.3f" % ap[c] for c in classes]
            + ["**%.3f**" % ap["mAP"], "%.0f s" % res["wall_time_s"]]) + " |")
    for loss, aps in groups.items():  # several seeds of one configuration: their mean
        if len(aps) > 1:
            lines.append("| " + " | ".join(
                ["mean of %d seeds" % len(aps), loss]
                + ["%.3f" % np.mean([ap[c] for ap in aps]) for c in classes]
                + ["**%.3f**" % np.mean([ap["mAP"] for ap in aps]), ""]) + " |")
    print("\n".join(lines))
    if args.plot:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
        configs = list(groups)  # one colour per configuration, one line style per seed
        styles = ("-", "--", ":", "-.")
        seeds = sorted({res["args"]["seed"] for _, res in results})
        for (run, res), loss in zip(results, labels):
            pts = [(h["epoch"] + 1, h["ap"]) for h in res["history"] if "ap" in h]
            kw = dict(marker="o", markersize=3, color="C%d" % configs.index(loss),
                      linestyle=styles[seeds.index(res["args"]["seed"]) % len(styles)],
                      label="%s, seed %d" % (loss, res["args"]["seed"]))
            axes[0].plot([e for e, _ in pts], [ap["mAP"] for _, ap in pts], **kw)
            axes[1].plot([e for e, _ in pts], [ap[classes[-1]] for _, ap in pts], **kw)
        axes[0].set_title("test mAP (VOC07)")
        axes[1].set_title("test AP of the rarest class (%s)" % classes[-1])
        for ax in axes:
            ax.set_xlabel("epoch")
            ax.grid(alpha=0.3)
        axes[0].legend(fontsize=6)
        fig.tight_layout()
        os.makedirs(os.path.dirname(os.path.abspath(args.plot)), exist_ok=True)
        fig.savefig(args.plot, dpi=80)
        print("plot: %s" % args.plot)
    return lines

