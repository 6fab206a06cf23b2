"""``python -m examples.center_loss``: softmax vs softmax + center loss."""
from examples.center_loss.cli import main

main()
