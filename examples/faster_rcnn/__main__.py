"""``python -m examples.faster_rcnn``: Faster R-CNN with a class-weighted RCNN loss."""
import sys

from .train import main, summarize

if len(sys.argv) > 1 and sys.argv[1] == "summarize":
    summarize(sys.argv[2:])
else:
    main()
