"""Class-weighted softmax cross-entropy and center loss for MXNet Gluon."""
from . import class_weights
from .softmax_ce import WeightedSoftmaxCELoss, weighted_softmax_ce
from .center import CenterLoss, CenterTrainer, center_loss

__all__ = ["WeightedSoftmaxCELoss", "weighted_softmax_ce", "class_weights",
           "CenterLoss", "CenterTrainer", "center_loss"]
__version__ = "0.1.0"
