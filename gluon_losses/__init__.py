"""Class-weighted softmax cross-entropy and center loss for MXNet Gluon."""
import mxnet as _mxnet

__version__ = "0.1.0"

# A parameter server started by `import mxnet` unpickles symbol.with_center_update's
# optimizer while that import is still running, when mxnet.gluon cannot load: then
# only gluon_losses.center_optimizer (which pickle imports itself) may load.
if hasattr(_mxnet, "gluon"):
    from . import class_weights, symbol
    from .softmax_ce import WeightedSoftmaxCELoss, weighted_softmax_ce
    from .mix_softmax_ce import MixWeightedSoftmaxCELoss
    from .center import CenterLoss, center_loss
    from .center_trainer import CenterTrainer
    from .center_update import apply_center_update, apply_dense_center_update

    __all__ = ["WeightedSoftmaxCELoss", "weighted_softmax_ce", "MixWeightedSoftmaxCELoss",
               "class_weights", "symbol", "CenterLoss", "CenterTrainer", "center_loss",
               "apply_center_update", "apply_dense_center_update"]
