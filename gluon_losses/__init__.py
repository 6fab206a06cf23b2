"""Class-weighted softmax cross-entropy and center loss for MXNet Gluon."""
from . import class_weights
from .softmax_ce import WeightedSoftmaxCELoss, weighted_softmax_ce
from .mix_softmax_ce import MixWeightedSoftmaxCELoss
from .center import CenterLoss, center_loss
from .center_trainer import CenterTrainer
from .center_update import apply_center_update, apply_dense_center_update

__all__ = ["WeightedSoftmaxCELoss", "weighted_softmax_ce", "MixWeightedSoftmaxCELoss", "class_weights",
           "CenterLoss", "CenterTrainer", "center_loss", "apply_center_update",
           "apply_dense_center_update"]
__version__ = "0.1.0"
