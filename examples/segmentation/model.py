"""GluonCV's FCN with a small dilated ResNet base that trains on a CPU in minutes.

``gluoncv.model_zoo.FCN`` builds its base from ``get_backbone`` (ResNet-18 and up) and
sizes its heads for ResNet-50's 2048/1024 channels. Its forward pass only needs the
base's stem (``conv1``, ``bn1``, ``relu``, ``maxpool``) and four stages (``layer1`` ..
``layer4``; ``layer3`` feeds the aux head, ``layer4`` the main head), so the example
builds the FCN without pretrained weights and puts in place, under the same names:

- a stem of one strided 3x3 convolution and a 3x3/2 max pool (output stride 4),
- four stages of GluonCV's ``BasicBlockV1b``, the last two dilated (2 and 4) instead
  of strided, as GluonCV's dilated backbones do, so the output stride stays 8,
- GluonCV's ``_FCNHead`` for the main and the aux outputs, sized for these widths.

The FCN's own ``hybrid_forward`` (bilinear upsampling to the input size, aux branch)
is unchanged. No weights are downloaded.
"""
import mxnet as mx
from mxnet.gluon import nn


def _stage(planes, in_planes, strides=1, dilation=1):
    """One residual stage: a GluonCV ``BasicBlockV1b`` with a projection shortcut."""
    from gluoncv.model_zoo.resnetv1b import BasicBlockV1b
    stage = nn.HybridSequential()
    with stage.name_scope():
        downsample = None
        if strides != 1 or in_planes != planes:
            downsample = nn.HybridSequential()
            downsample.add(nn.Conv2D(planes, 1, strides=strides, use_bias=False,
                                     in_channels=in_planes),
                           nn.BatchNorm(in_channels=planes))
        stage.add(BasicBlockV1b(planes, strides=strides, dilation=dilation,
                                downsample=downsample, previous_dilation=dilation,
                                norm_layer=nn.BatchNorm))
    return stage


def build_fcn(num_class, widths=(16, 32, 64, 96), size=64, aux=True):
    """GluonCV ``FCN`` for ``size`` x ``size`` inputs with a small dilated base.

    Parameters
    ----------
    num_class : int
        Output channels of both heads.
    widths : 4 ints
        Channels of ``layer1`` .. ``layer4``; the stem has ``widths[0]``.
    size : int
        Input side; the FCN upsamples its outputs back to it.
    aux : bool
        Build the aux head on ``layer3`` (``FCN(aux=True)``).

    Returns
    -------
    gluoncv.model_zoo.FCN, not initialized. In training mode it returns
    ``(main, aux)`` logits of shape ``(B, num_class, size, size)`` (only ``(main,)``
    without aux).
    """
    from gluoncv.model_zoo import FCN
    from gluoncv.model_zoo.fcn import _FCNHead
    if len(widths) != 4:
        raise ValueError("widths must hold 4 stage widths, got %r" % (widths,))
    net = FCN(num_class, backbone="resnet18", aux=aux, pretrained_base=False,
              base_size=size, crop_size=size)
    with net.name_scope():
        net.conv1 = nn.Conv2D(widths[0], 3, strides=2, padding=1, use_bias=False, in_channels=3)
        net.bn1 = nn.BatchNorm(in_channels=widths[0])
        net.relu = nn.Activation("relu")
        net.maxpool = nn.MaxPool2D(pool_size=3, strides=2, padding=1)
        net.layer1 = _stage(widths[0], widths[0])
        net.layer2 = _stage(widths[1], widths[0], strides=2)
        net.layer3 = _stage(widths[2], widths[1], dilation=2)
        net.layer4 = _stage(widths[3], widths[2], dilation=4)
        net.head = _FCNHead(widths[3], num_class)
        if aux:
            net.auxlayer = _FCNHead(widths[2], num_class)
    return net


def initialize(net, ctx, seed):
    """Initialize every parameter (Xavier for convolutions) from ``seed``."""
    mx.random.seed(seed)
    net.initialize(mx.init.Xavier(magnitude=2), ctx=ctx, force_reinit=True)
    return net
