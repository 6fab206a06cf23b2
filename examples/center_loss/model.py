"""LeNets++ (Wen et al. 2016, Table 1) with a 2-D feature layer, for the center-loss example."""
import mxnet as mx
from mxnet import gluon
from mxnet.gluon import nn


class PReLU(gluon.HybridBlock):
    """Channel-wise PReLU, ``max(x, 0) + alpha * min(x, 0)``, alpha over axis 1.

    Written out instead of ``nn.PReLU`` because MXNet 1.9.1's fused op
    (``LeakyReLU(act_type='prelu')``) gets the gradient of alpha wrong inside a
    hybridized LeNets++ on CPU: it comes out multiplied by alpha (checked against finite
    differences; tests/examples/test_center_loss.py keeps the check).
    """

    def __init__(self, channels, spatial, **kwargs):
        super().__init__(**kwargs)
        self._shape = (1, channels) + (1,) * spatial
        with self.name_scope():
            self.alpha = self.params.get("alpha", shape=(channels,),
                                         init=mx.init.Constant(0.25))

    def hybrid_forward(self, F, x, alpha):
        return F.relu(x) + F.broadcast_mul(F.reshape(alpha, shape=self._shape),
                                           F.minimum(x, 0))


class LeNetsPP(gluon.HybridBlock):
    """LeNets++ (Wen et al. 2016, Table 1), width and depth as arguments.

    ``len(channels)`` stages of ``convs_per_stage`` 5x5 convolutions with PReLU, each
    stage followed by 2x2 max pooling; a fully connected feature layer of
    ``feature_dim`` units with PReLU; a bias-free linear classifier.

    Inputs: ``x`` of shape ``(N, in_channels, size, size)``.
    Outputs: ``(logits, features)`` of shapes ``(N, num_classes)`` and ``(N, feature_dim)``.
    """

    def __init__(self, num_classes=10, feature_dim=2, channels=(32, 64, 128),
                 convs_per_stage=2, in_channels=1, size=28, **kwargs):
        super().__init__(**kwargs)
        with self.name_scope():
            self.body = nn.HybridSequential(prefix="body_")
            prev = in_channels
            for width in channels:
                for _ in range(convs_per_stage):
                    self.body.add(nn.Conv2D(width, 5, padding=2, in_channels=prev),
                                  PReLU(width, spatial=2))
                    prev = width
                self.body.add(nn.MaxPool2D(2, 2))
                size //= 2
            self.body.add(nn.Flatten(),
                          nn.Dense(feature_dim, in_units=prev * size * size),
                          PReLU(feature_dim, spatial=0))
            self.classifier = nn.Dense(num_classes, use_bias=False, in_units=feature_dim)

    def hybrid_forward(self, F, x):
        feature = self.body(x)
        return self.classifier(feature), feature
