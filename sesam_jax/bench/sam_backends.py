"""The backends the SAM benchmarks time, built in this process (`sesam bench --what sam`).

Shared by `bench/sam.py` (scenes, side by side, parity) and `bench/sam_camvid.py` (a real
CamVid refresh), so neither imports the other.
"""

from __future__ import annotations

import argparse

from sesam_jax.sam import resolver


def make_backend(spec: str, args: argparse.Namespace, attention: str | None = None):
  """The backend `spec` names, built in this process through the resolver (the torch side or
  the Flax SAM for jax:/jax-random: specs); no --decoder-dtype = the compute dtype.
  `attention` (jax specs): the Flax encoder's attention implementation (None: "auto")."""
  return resolver.resolve(spec, device=args.device, dtype=args.dtype,
                          decoder_dtype=args.decoder_dtype or "",
                          attention=attention or "auto").build()
