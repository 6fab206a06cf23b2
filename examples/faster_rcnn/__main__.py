"""``python -m examples.faster_rcnn``: Faster R-CNN with a class-weighted RCNN loss."""
from examples.faster_rcnn.cli import main

main()
