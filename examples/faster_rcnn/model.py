"""The detectors: a tiny-backbone GluonCV ``FasterRCNN`` for CPUs and GluonCV's own
ResNet-50 Faster R-CNN variants, built from scratch (pretrained base weights only if
they are already on disk; nothing is downloaded)."""
import os

import mxnet as mx
from mxnet import gluon
from mxnet.gluon import nn

NETWORKS = ("tiny", "resnet50_v1b", "fpn_resnet50_v1b")
DEFAULT_MODEL_ROOT = os.path.join("~", ".mxnet", "models")


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
        raise FileNotFoundError(
            "pretrained_base: %s is not there and nothing is downloaded here. Copy the "
            "GluonCV %s ImageNet weights there or train from scratch." % (path, name))
    return path


def build_net(network, classes, per_device_batch_size, short=None, max_size=None,
              pretrained_base=False, model_root=DEFAULT_MODEL_ROOT):
    """The detector, its parameters not yet initialized (:func:`init_net` does that).

    Parameters
    ----------
    network : 'tiny', 'resnet50_v1b' or 'fpn_resnet50_v1b'
    classes : list of str
        Foreground class names.
    per_device_batch_size : int
        Images per device per step (GluonCV's samplers are built for it).
    short, max_size : int or None
        Input resize; None keeps the network's (256 / 320 for 'tiny').
    pretrained_base : bool
        ResNet-50 only: load the ImageNet weights found in ``model_root``.
    """
    if network not in NETWORKS:
        raise ValueError("network must be one of %s, got %r" % (NETWORKS, network))
    if network == "tiny":
        return tiny_faster_rcnn(classes, per_device_batch_size, short or 256, max_size or 320)
    if pretrained_base:
        _local_base_weights("resnet50_v1b", model_root)
    kwargs = {"per_device_batch_size": per_device_batch_size}
    if network == "resnet50_v1b":
        from gluoncv.model_zoo import faster_rcnn_resnet50_v1b_custom
        net = faster_rcnn_resnet50_v1b_custom(classes, pretrained_base=pretrained_base,
                                              root=model_root, **kwargs)
    else:
        # the module path matters: the package re-exports the double-head variant
        # under the same name
        from gluoncv.model_zoo.rcnn.faster_rcnn.faster_rcnn import custom_faster_rcnn_fpn
        net = custom_faster_rcnn_fpn(classes, pretrained_base=pretrained_base,
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
    if short:
        net.short = short
    if max_size:
        net.max_size = max_size
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
