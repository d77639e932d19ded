"""sesam-jax: weakly supervised semantic segmentation with Segment Anything instance priors."""

__version__ = "0.1.0"
