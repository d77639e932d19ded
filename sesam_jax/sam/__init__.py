"""The trainer's SAM side: everything sesam-jax does with SAM on the JAX side of the house.

  resolver.py       SAM settings (backend spec, weights, device, dtypes) -> a checked backend,
                    run by the sam_bridge worker process (PyTorch) or a thread here (JAX SAM)
  bank.py           per-image SAM labels and teacher extensions, refreshed round-robin
  feed.py           SeSAM's feed: batches joined with SAM labels while the steps run
  refine_labels.py  `sesam refine` over a split, and the SAM baseline's labels
"""
