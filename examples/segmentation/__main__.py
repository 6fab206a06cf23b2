"""``python -m examples.segmentation``: see examples/segmentation/cli.py."""
from examples.segmentation.cli import main

main()
