"""The Flax SAM encoder's attention implementations agree with each other (no torch needed;
the parity with transformers' SamModel is in test_flax_sam.py)."""

import jax
import numpy as np
import pytest

from sesam_jax.models import sam
from sesam_jax.sam.jax_backend import JaxSamBackend


def test_encoder_attention_implementations_agree():
  # window 6 on the 16x16 grid pads windows as ViT-B's 64x64 grid does with 14; query_rows 4
  # chunks the global block.
  spec = sam.sam_spec("tiny", window_size=6)
  rng = np.random.default_rng(0)
  # init_params leaves the relative-position tables (and biases) zero: fill them, so that the
  # relative terms (dot_product's `bias`) count.
  params = jax.tree_util.tree_map_with_path(
      lambda path, leaf: leaf + 0.1 * rng.standard_normal(leaf.shape).astype(np.float32)
      if str(getattr(path[-1], "key", "")) in ("rel_pos_h", "rel_pos_w", "bias") else leaf,
      sam.init_params(spec, seed=0))
  pixels = rng.standard_normal((2, 256, 256, 3)).astype(np.float32)
  out = {}
  for attention in ("full", "chunked", "dot_product"):
    model = sam.Sam(spec, attention=attention, query_rows=4)
    encode = jax.jit(lambda v, x, m=model: m.apply(v, x, method=sam.Sam.encode))
    out[attention] = np.asarray(encode(params, pixels))
  assert out["full"].shape == (2, 16, 16, spec.prompt_dim)
  for attention in ("chunked", "dot_product"):
    np.testing.assert_allclose(out[attention], out["full"], rtol=1e-5, atol=1e-5,
                               err_msg=attention)


def test_backend_resolves_auto_once_and_names_a_bad_choice():
  spec = sam.sam_spec("tiny")
  params = sam.init_params(spec)
  backend = JaxSamBackend(params, spec, name="tiny")
  assert backend.attention == "chunked" and backend.model.attention == "chunked"  # CPU.
  with pytest.raises(ValueError, match=r"^unknown attention implementation 'flash' for the SAM "
                     r"encoder's attention; choose one of: chunked, full, dot_product, cudnn, "
                     r"auto\.$"):
    JaxSamBackend(params, spec, name="tiny", attention="flash")
