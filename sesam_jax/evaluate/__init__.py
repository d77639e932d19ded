"""Evaluation: confusion matrices on device, mIoU / per-class IoU on the host."""
