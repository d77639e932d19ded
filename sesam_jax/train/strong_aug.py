"""Strong photometric augmentation on device (FixMatch's student view).

Everything here is jittable and per-example random: colour jitter
(brightness, contrast, saturation, hue), random grayscale, Gaussian blur and
CutMix. CutMix also moves pixels between examples, so it takes the label maps
built on the weak view (weak, SAM and pseudo-labels) and mixes them with the
same boxes; the photometric ops change only the image.

Images are float32 in [0, 1], BxHxWx3. The blur is written as shifted
multiply-adds rather than a depthwise convolution: on CPU, XLA's depthwise
convolution is several times slower (see DESIGN.md, environment facts).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

# RGB <-> YIQ: hue is a rotation of the (I, Q) chroma plane. numpy constants: a jnp array made
# at import would start JAX's backend before a run sets its GPU memory share (run/distributed).
_RGB_TO_YIQ = np.array([[0.299, 0.587, 0.114],
                        [0.596, -0.274, -0.322],
                        [0.211, -0.523, 0.312]], np.float32)
_YIQ_TO_RGB = np.linalg.inv(_RGB_TO_YIQ).astype(np.float32)
_LUMA = np.array([0.299, 0.587, 0.114], np.float32)


@dataclasses.dataclass(frozen=True)
class StrongAugConfig:
  """Strengths and probabilities; defaults follow common FixMatch-seg settings."""
  jitter_prob: float = 0.8       # probability of colour jitter per example
  brightness: float = 0.4        # multiplicative factor drawn in [1-b, 1+b]
  contrast: float = 0.4          # blend with the mean grey, factor in [1-c, 1+c]
  saturation: float = 0.4        # blend with the grey image, factor in [1-s, 1+s]
  hue: float = 0.1               # rotation of the chroma plane, fraction of a turn
  grayscale_prob: float = 0.2    # probability of dropping colour
  blur_prob: float = 0.5         # probability of Gaussian blur
  blur_sigma: tuple[float, float] = (0.1, 2.0)  # sigma range in pixels
  blur_radius: int = 4           # kernel half-width (taps = 2 * radius + 1)
  cutmix_prob: float = 0.5       # probability that an example receives a box
  cutmix_area: tuple[float, float] = (0.1, 0.5)  # box area as a fraction of the crop


def _per_example(rng: jax.Array, batch: int, low: float, high: float) -> jax.Array:
  return jax.random.uniform(rng, (batch, 1, 1, 1), minval=low, maxval=high)


def color_jitter(rng: jax.Array, images: jax.Array, cfg: StrongAugConfig) -> jax.Array:
  """Brightness, contrast, saturation and hue, in a random order per batch."""
  b = images.shape[0]
  keys = jax.random.split(rng, 5)
  apply = jax.random.uniform(keys[0], (b, 1, 1, 1)) < cfg.jitter_prob
  out = images * _per_example(keys[1], b, 1 - cfg.brightness, 1 + cfg.brightness)
  mean = jnp.mean(out @ _LUMA, axis=(1, 2))[:, None, None, None]
  out = mean + (out - mean) * _per_example(keys[2], b, 1 - cfg.contrast, 1 + cfg.contrast)
  grey = (out @ _LUMA)[..., None]
  out = grey + (out - grey) * _per_example(keys[3], b, 1 - cfg.saturation, 1 + cfg.saturation)
  angle = 2 * jnp.pi * jax.random.uniform(keys[4], (b,), minval=-cfg.hue, maxval=cfg.hue)
  cos, sin = jnp.cos(angle), jnp.sin(angle)
  one, zero = jnp.ones_like(cos), jnp.zeros_like(cos)
  rot = jnp.stack([jnp.stack([one, zero, zero], -1),
                   jnp.stack([zero, cos, -sin], -1),
                   jnp.stack([zero, sin, cos], -1)], -2)  # Bx3x3 in YIQ.
  mix = jnp.einsum("ij,bjk,kl->bil", _YIQ_TO_RGB, rot, _RGB_TO_YIQ)
  out = jnp.einsum("bhwc,bdc->bhwd", out, mix)
  return jnp.where(apply, jnp.clip(out, 0.0, 1.0), images)


def random_grayscale(rng: jax.Array, images: jax.Array, cfg: StrongAugConfig) -> jax.Array:
  apply = jax.random.uniform(rng, (images.shape[0], 1, 1, 1)) < cfg.grayscale_prob
  grey = jnp.broadcast_to((images @ _LUMA)[..., None], images.shape)
  return jnp.where(apply, grey, images)


def _blur_axis(images: jax.Array, weights_BK: jax.Array, axis: int, radius: int) -> jax.Array:
  """1-D blur along `axis` (1 = H, 2 = W) as 2r+1 shifted multiply-adds (edge-padded)."""
  pad = [(0, 0)] * images.ndim
  pad[axis] = (radius, radius)
  padded = jnp.pad(images, pad, mode="edge")
  size = images.shape[axis]
  out = jnp.zeros_like(images)
  for k in range(2 * radius + 1):
    window = jax.lax.slice_in_dim(padded, k, k + size, axis=axis)
    out = out + weights_BK[:, k, None, None, None] * window
  return out


def gaussian_blur(rng: jax.Array, images: jax.Array, cfg: StrongAugConfig) -> jax.Array:
  """Separable Gaussian blur with a per-example sigma."""
  b = images.shape[0]
  k_apply, k_sigma = jax.random.split(rng)
  apply = jax.random.uniform(k_apply, (b, 1, 1, 1)) < cfg.blur_prob
  sigma = jax.random.uniform(k_sigma, (b, 1), minval=cfg.blur_sigma[0], maxval=cfg.blur_sigma[1])
  taps = jnp.arange(-cfg.blur_radius, cfg.blur_radius + 1, dtype=jnp.float32)[None, :]
  weights = jnp.exp(-0.5 * (taps / sigma) ** 2)
  weights = weights / weights.sum(axis=1, keepdims=True)
  blurred = _blur_axis(_blur_axis(images, weights, 1, cfg.blur_radius), weights, 2, cfg.blur_radius)
  return jnp.where(apply, blurred, images)


def cutmix_boxes(rng: jax.Array, batch: int, height: int, width: int,
                 cfg: StrongAugConfig) -> jax.Array:
  """BxHxW bool: where each example receives pixels from its partner (example b-1)."""
  keys = jax.random.split(rng, 5)
  apply = jax.random.uniform(keys[0], (batch,)) < cfg.cutmix_prob
  area = jax.random.uniform(keys[1], (batch,), minval=cfg.cutmix_area[0], maxval=cfg.cutmix_area[1])
  aspect = jnp.exp(jax.random.uniform(keys[2], (batch,), minval=-0.7, maxval=0.7))
  bh = jnp.clip(jnp.sqrt(area / aspect) * height, 1, height)
  bw = jnp.clip(jnp.sqrt(area * aspect) * width, 1, width)
  y0 = jax.random.uniform(keys[3], (batch,)) * (height - bh)
  x0 = jax.random.uniform(keys[4], (batch,)) * (width - bw)
  yy = jnp.arange(height, dtype=jnp.float32)[None, :, None]
  xx = jnp.arange(width, dtype=jnp.float32)[None, None, :]
  inside = ((yy >= y0[:, None, None]) & (yy < (y0 + bh)[:, None, None])
            & (xx >= x0[:, None, None]) & (xx < (x0 + bw)[:, None, None]))
  return inside & apply[:, None, None]


def cutmix(boxes_BHW: jax.Array, images: jax.Array, targets: dict[str, jax.Array]
           ) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Pastes each example's partner (b-1, cyclically) inside its box, in images and targets."""
  def mix(x):
    partner = jnp.roll(x, 1, axis=0)
    box = boxes_BHW.reshape(boxes_BHW.shape + (1,) * (x.ndim - 3))
    return jnp.where(box, partner, x)
  return mix(images), {name: mix(t) for name, t in targets.items()}


def strong_augment(rng: jax.Array, images: jax.Array, targets: dict[str, jax.Array],
                   cfg: StrongAugConfig = StrongAugConfig()
                   ) -> tuple[jax.Array, dict[str, jax.Array]]:
  """The student's strong view of a batch.

  Args:
    rng: PRNG key.
    images: BxHxWx3 float32 in [0, 1] (the weak view).
    targets: label-like maps BxHxW (any dtype) built on the weak view; they
      follow CutMix and nothing else.
    cfg: strengths and probabilities.

  Returns:
    (strong images BxHxWx3 float32 in [0, 1], targets after CutMix).
  """
  k_mix, k_jit, k_grey, k_blur = jax.random.split(rng, 4)
  b, h, w = images.shape[:3]
  images, targets = cutmix(cutmix_boxes(k_mix, b, h, w, cfg), images, targets)
  images = color_jitter(k_jit, images, cfg)
  images = random_grayscale(k_grey, images, cfg)
  images = gaussian_blur(k_blur, images, cfg)
  return images, targets
