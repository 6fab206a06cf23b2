"""The two symbols: an RCNN-style classification head and a LeNet-style center-loss network."""
import mxnet as mx

from gluon_losses.symbol import center_loss, weighted_softmax_output

from .data import IGNORE


def rcnn_head(num_classes, class_weight=None, hidden=64):
    """RoI features ``(B, R, F)`` -> two FC layers per RoI -> class probabilities ``(B, C, R)``.

    The loss is the class-weighted drop-in for the usual
    ``SoftmaxOutput(multi_output=True, use_ignore=True, ignore_label=-1,
    normalization='valid')`` of an RCNN head.
    """
    data, label = mx.sym.var("data"), mx.sym.var("softmax_label")
    hidden = mx.sym.Activation(mx.sym.FullyConnected(data, num_hidden=hidden, flatten=False,
                                                     name="fc6"), act_type="relu")
    scores = mx.sym.FullyConnected(hidden, num_hidden=num_classes, flatten=False,
                                   name="cls_score")
    scores = mx.sym.transpose(scores, axes=(0, 2, 1))  # classes on axis 1
    return weighted_softmax_output(scores, label, class_weight=class_weight, multi_output=True,
                                   use_ignore=True, ignore_label=IGNORE,
                                   normalization="valid", name="cls_prob")


def lenet_center(num_classes, feature_dim=2, weight=0.01, alpha=0.5, class_weight=None):
    """Digits ``(B, 1, 8, 8)`` -> 2 conv stages -> ``feature_dim`` features -> classes.

    Outputs ``[probabilities (B, C), center loss (B,), features (B, D)]``. The softmax
    and the center loss both sum over the batch (``normalization='null'``), so Module's
    ``rescale_grad = 1/batch_size`` averages them alike.
    """
    data, label = mx.sym.var("data"), mx.sym.var("softmax_label")
    x = data
    for stage, channels in enumerate((16, 32)):
        x = mx.sym.Convolution(x, kernel=(3, 3), pad=(1, 1), num_filter=channels,
                               name="conv%d" % stage)
        x = mx.sym.Activation(x, act_type="relu")
        x = mx.sym.Pooling(x, kernel=(2, 2), stride=(2, 2), pool_type="max")
    features = mx.sym.FullyConnected(x, num_hidden=feature_dim, name="features")
    logits = mx.sym.FullyConnected(features, num_hidden=num_classes, no_bias=True, name="cls")
    probabilities = weighted_softmax_output(logits, label, class_weight=class_weight,
                                            normalization="null", name="softmax")
    centers = center_loss(features, label, num_classes, feature_dim, alpha=alpha,
                          weight=weight, name="center")
    return mx.sym.Group([probabilities, centers, mx.sym.BlockGrad(features, name="embedding")])
