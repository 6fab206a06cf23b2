"""``python -m examples.center_loss``: softmax vs softmax + center loss."""
from .train import main

main()
