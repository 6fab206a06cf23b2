"""Class weighting for segmentation: GluonCV FCN on a generated imbalanced VOC-layout set."""
