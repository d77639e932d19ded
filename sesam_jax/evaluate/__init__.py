"""Evaluation: confusion matrices on device, mIoU / per-class IoU on host, label scoring."""
