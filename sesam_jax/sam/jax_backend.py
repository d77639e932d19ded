"""The Flax SAM as a `sam_bridge` backend, on this process's own devices, without torch.

    backend = create_jax_backend("jax:/ckpt/sam_vit_b.msgpack")   # or "jax-random:vit_b"
    result = sam_bridge.refine.refine(backend, request, config)    # unchanged geometry

The backend implements `sam_bridge.api`'s Backend, CachingBackend and LowResBackend
(numpy in, numpy out). Specs:
  jax:PATH            weights from `sesam convert ... --format sam` (msgpack), a transformers
                      SamModel directory or .safetensors (converted on load, no torch)
  jax-random:VARIANT  random weights of sam.SAM_VARIANTS (vit_b, vit_l, vit_h, tiny); its
                      name says so in every report

Devices: `jax.local_devices()` of this process only (default: all of them on GPU/TPU,
the first on CPU, whose fake devices share the same cores), never a global mesh: in a
multi-host run each host sends a different number of requests, and a computation over
the global mesh would wait for the others forever. Parameters are replicated over a
local mesh; image batches and prompt-set batches are split over it.

Compiled shapes are bounded: the encoder is jitted for one shape (`encode_batch` images
of SxS); the decoder for bucketed (prompt sets, token slots, mask prompt or not), the
sets and slots rounded up to powers of two (sets capped at `batch_size`); padded slots
are masked out of attention, so padding never changes a result (tests/models/test_flax_sam.py).
Backends of the same model (sizes, dtypes) share their jitted functions and compilations.
`compiled_shapes()` reports the shapes used so far.
"""

from __future__ import annotations

import functools
import itertools
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from sam_bridge.api import LowResPrediction, Prediction, PromptSet
from sam_bridge.backends import BackendKind
from sesam_jax.models import sam, sam_convert
from sesam_jax.models.attention import resolve_attention

MIN_TOKEN_SLOTS = 8  # Token slots per prompt set: 8, 16, 32, ...
_DTYPES = {"float32": jnp.float32, "fp32": jnp.float32, "bfloat16": jnp.bfloat16,
           "bf16": jnp.bfloat16}


def _dtype(name: str) -> Any:
  if name not in _DTYPES:
    raise ValueError(f"unknown SAM dtype {name!r}; choose float32 or bfloat16")
  return _DTYPES[name]


def default_devices() -> list:
  """This process's devices for SAM: all local accelerators, or one CPU device."""
  local = jax.local_devices()
  return local[:1] if local[0].platform == "cpu" else local


@functools.lru_cache(maxsize=None)
def _jitted(model: sam.Sam):
  """(encode, decode) jitted once per model config: backends of one model share compilations."""
  return (jax.jit(functools.partial(model.apply, method=sam.Sam.encode)),
          jax.jit(functools.partial(model.apply, method=sam.Sam.decode)))


def _bucket(n: int, cap: int | None = None, multiple: int = 1) -> int:
  """n rounded up to multiple * 2^k (and at most `cap` when given, itself a multiple)."""
  b = multiple
  while b < n:
    b *= 2
  return min(b, cap) if cap else b


class JaxSamBackend:
  """A frozen Flax SAM as a sam_bridge Backend (see the module docstring).

  Args:
    params: {"params": ...} float32 (sam.init_params or sam_convert.load_sam).
    spec: the model sizes.
    name: what it is, for reports ("... (random weights ...)" for random weights).
    dtype: encoder compute dtype, "float32" or "bfloat16".
    decoder_dtype: prompt decoder dtype if not `dtype`; image embeddings are kept in float32.
    devices: local devices to run on (default: default_devices()).
    batch_size: most prompt sets per decoder call (a power-of-two multiple of the devices);
      None = 4 per device on CPU (cache-sized, as torch's bridge), 64 elsewhere.
    encode_batch: images per encoder call; None = one per device.
    mask_logit: magnitude of the logits a binary mask prompt becomes.
    attention: the encoder's attention implementation (`sesam_jax.models.attention`:
      chunked, full, dot_product, cudnn), or "auto", resolved here once for the devices'
      platform and `dtype`: chunked on CPU (one head's 4 x 64 x 4096 global logits at a time
      stay in cache: ViT-B's global blocks run ~1.4x faster than torch's), dot_product on GPU
      and TPU (cudnn is opt-in until a GPU has measured it).
    query_rows: global-attention query rows per chunk of "chunked" (see sam._attend_grid).
  """

  is_oracle = False

  def __init__(self, params: dict, spec: sam.SamSpec, *, name: str, dtype: str = "float32",
               decoder_dtype: str | None = None, devices: Sequence | None = None,
               batch_size: int | None = None, encode_batch: int | None = None,
               mask_logit: float = 8.0, attention: str = "auto", query_rows: int = 4):
    self.spec = spec
    self.devices = list(devices) if devices else default_devices()
    for d in self.devices:
      if d.process_index != jax.process_index():
        raise ValueError(f"device {d} belongs to process {d.process_index}; SAM runs on this "
                         "process's jax.local_devices() only")
    n = len(self.devices)
    cpu = self.devices[0].platform == "cpu"
    self.name = name if decoder_dtype in (None, dtype) else f"{name} (decoder {decoder_dtype})"
    self.encoder_name = f"{name} [{dtype}]"  # Cache key: the decoder dtype is not part of it.
    self.batch_size = _bucket(batch_size or (4 * n if cpu else 64), multiple=n)
    self.encode_batch = _bucket(encode_batch or n, multiple=n)
    self.mask_logit = mask_logit
    self.attention = resolve_attention(attention, platform=self.devices[0].platform,
                                       dtype=_dtype(dtype), field="the SAM encoder's attention")
    self.model = sam.Sam(spec, dtype=_dtype(dtype),
                         decoder_dtype=_dtype(decoder_dtype) if decoder_dtype else None,
                         attention=self.attention, query_rows=query_rows)
    self.mesh = Mesh(np.array(self.devices), ("sam",))
    self._replicated = NamedSharding(self.mesh, PartitionSpec())
    self._split = NamedSharding(self.mesh, PartitionSpec("sam"))
    self.params = jax.device_put(params, self._replicated)
    self._encode, self._decode = _jitted(self.model)
    self._shapes: dict[str, set] = {"encoder": set(), "decoder": set()}
    self._emb = None  # 1 x g x g x C float32, replicated on the devices.
    self._upsample_cache: dict = {}

  # --- encoder ---

  def encode_images(self, images: Sequence[np.ndarray]) -> list[dict[str, np.ndarray]]:
    """Encodes HxWx3 uint8 images in batches of `encode_batch`; their image_state()s.

    For the pre-warm: many images in few calls. Give the images as refine() would set them
    (its working resolution, `RefineConfig.work_long_side`); each state can go to
    sam_bridge's EmbeddingCache under `cache_key(id, backend.encoder_name, image.shape[:2],
    image_digest(image, None))`, where refine() looks for it.
    """
    states = []
    for start in range(0, len(images), self.encode_batch):
      chunk = images[start:start + self.encode_batch]
      emb, sizes = self._encode_chunk(chunk)
      emb_np = np.asarray(emb, np.float32)
      for i, image in enumerate(chunk):
        states.append({"embeddings": emb_np[i], "image_hw": np.asarray(image.shape[:2], np.int64),
                       "resized_hw": np.asarray(sizes[i], np.int64)})
    return states

  def _encode_chunk(self, images: Sequence[np.ndarray]):
    size = self.spec.image_size
    pixels = np.zeros((self.encode_batch, size, size, 3), np.float32)
    sizes = []
    for i, image in enumerate(images):
      pixels[i], hw = sam.preprocess(image, size)
      sizes.append(hw)
    self._shapes["encoder"].add(pixels.shape)
    emb = self._encode(self.params, jax.device_put(pixels, self._split))
    return emb.astype(jnp.float32), sizes

  # --- Backend protocol ---

  def set_image(self, image: np.ndarray, *, fine_label: np.ndarray | None = None) -> None:
    """Encodes HxWx3 uint8 `image` once (fine_label is ignored)."""
    emb, sizes = self._encode_chunk([image])
    self._emb = jax.device_put(emb[:1], self._replicated)
    self.image_hw = tuple(image.shape[:2])
    self.resized_hw = tuple(sizes[0])

  def image_state(self) -> dict[str, np.ndarray]:
    """{"embeddings": g x g x C float32, "image_hw", "resized_hw": int64 (h, w)}."""
    if self._emb is None:
      raise RuntimeError("call set_image before image_state")
    return {"embeddings": np.asarray(self._emb[0], np.float32),
            "image_hw": np.asarray(self.image_hw, np.int64),
            "resized_hw": np.asarray(self.resized_hw, np.int64)}

  def load_image_state(self, state: dict[str, np.ndarray]) -> None:
    """Restores image_state() (or one of encode_images()): no encoder call."""
    g, dim = self.spec.grid, self.spec.prompt_dim
    emb = np.asarray(state["embeddings"], np.float32)
    if emb.shape != (g, g, dim):
      raise ValueError(f"image state embeddings {emb.shape}; this SAM expects {(g, g, dim)}")
    self._emb = jax.device_put(emb[None], self._replicated)
    self.image_hw = tuple(int(v) for v in state["image_hw"])
    self.resized_hw = tuple(int(v) for v in state["resized_hw"])

  def predict(self, prompts: Sequence[PromptSet]) -> list[Prediction]:
    """Three candidates per prompt set as HxW bool masks (SAM's post-processing)."""
    low = self.predict_lowres(prompts)
    if not low:
      return []
    masks = self.upsample(np.concatenate([p.logits for p in low])).reshape(
        len(low), 3, *self.image_hw)
    return [Prediction(masks[i], p.scores) for i, p in enumerate(low)]

  def predict_lowres(self, prompts: Sequence[PromptSet]) -> list[LowResPrediction]:
    """Three candidates per prompt set as (S/4) x (S/4) float32 logits, and their scores."""
    if self._emb is None:
      raise RuntimeError("call set_image before predict")
    tokens = [self._tokens(p) for p in prompts]
    out: list = [None] * len(prompts)
    # Sets of one kind (mask prompt or not) with similar token counts share calls.
    order = sorted(range(len(prompts)),
                   key=lambda i: (prompts[i].mask is not None, len(tokens[i][1])))
    for has_mask, group in itertools.groupby(order, key=lambda i: prompts[i].mask is not None):
      idx = list(group)
      for s in range(0, len(idx), self.batch_size):
        chunk = idx[s:s + self.batch_size]
        logits, scores = self._decode_chunk([tokens[i] for i in chunk],
                                            [prompts[i].mask for i in chunk] if has_mask else None)
        for b, i in enumerate(chunk):
          out[i] = LowResPrediction(logits[b], scores[b])
    return out

  def lowres_extent(self) -> tuple[float, float]:
    """Low-res rows/cols covered by the image (the unpadded part of the letterbox)."""
    f = self.spec.lowres / self.spec.image_size
    return self.resized_hw[0] * f, self.resized_hw[1] * f

  def upsample(self, logits: np.ndarray) -> np.ndarray:
    """N x s x s float32 low-res logits -> N x H x W bool masks, as SAM post-processes."""
    key = (self.resized_hw, self.image_hw)
    if key not in self._upsample_cache:
      self._upsample_cache = {key: sam.upsample_matrices(self.spec.lowres, self.spec.image_size,
                                                         self.resized_hw, self.image_hw)}
    ry, rx = self._upsample_cache[key]
    if len(logits) == 0:
      return np.zeros((0, *self.image_hw), bool)
    return sam.upsample_logits(logits, ry, rx) > 0

  def block_until_ready(self) -> None:
    """Waits until the current image's encoding has finished (for timing)."""
    if self._emb is not None:
      self._emb.block_until_ready()

  def compiled_shapes(self) -> dict[str, Any]:
    """Shapes the encoder and decoder have been called with (each compiled once)."""
    return {"encoder": len(self._shapes["encoder"]), "decoder": len(self._shapes["decoder"]),
            "decoder_shapes": sorted(self._shapes["decoder"])}

  # --- internals ---

  def _tokens(self, p: PromptSet) -> tuple[np.ndarray, np.ndarray]:
    """(T x 2 float32 coordinates in the resized frame, T int32 labels) of one prompt set."""
    sy = self.resized_hw[0] / self.image_hw[0]
    sx = self.resized_hw[1] / self.image_hw[1]
    coords = [np.asarray(p.points, np.float32).reshape(-1, 2) * np.float32([sx, sy])]
    labels = [np.asarray(p.point_labels, np.int32).reshape(-1)]
    if p.box is None and len(labels[0]):
      coords.append(np.zeros((1, 2), np.float32))  # SAM's "not a point" pad.
      labels.append(np.int32([sam.LABEL_NOT_A_POINT]))
    if p.box is not None:
      coords.append(np.asarray(p.box, np.float32).reshape(2, 2) * np.float32([sx, sy]))
      labels.append(np.int32([2, 3]))
    return np.concatenate(coords), np.concatenate(labels)

  def _decode_chunk(self, tokens: list[tuple[np.ndarray, np.ndarray]],
                    masks: list[np.ndarray] | None) -> tuple[np.ndarray, np.ndarray]:
    n_dev = len(self.devices)
    num_sets = _bucket(len(tokens), self.batch_size, multiple=n_dev)
    # At least 8 slots (K=5 points + "not a point"): token slots cost little next to the
    # image attention, and fewer distinct shapes compile.
    num_slots = _bucket(max(len(lab) for _, lab in tokens), multiple=MIN_TOKEN_SLOTS)
    coords = np.zeros((num_sets, num_slots, 2), np.float32)
    labels = np.zeros((num_sets, num_slots), np.int32)
    valid = np.zeros((num_sets, num_slots), bool)
    for i, (c, lab) in enumerate(tokens):
      coords[i, :len(lab)] = c
      labels[i, :len(lab)] = lab
      valid[i, :len(lab)] = True
    args = [coords, labels, valid]
    mask_in = None
    if masks is not None:
      s = self.spec.lowres
      mask_in = np.zeros((num_sets, s, s), np.float32)
      for i, m in enumerate(masks):
        mask_in[i] = sam.mask_prompt(m, self.resized_hw, self.spec.image_size, self.mask_logit)
    self._shapes["decoder"].add((num_sets, num_slots, masks is not None))
    put = lambda a: None if a is None else jax.device_put(a, self._split)
    logits, scores = self._decode(self.params, self._emb, *[put(a) for a in args], put(mask_in))
    n = len(tokens)
    return np.asarray(logits)[:n], np.asarray(scores)[:n]


def create_jax_backend(spec: str, *, dtype: str = "float32", decoder_dtype: str | None = None,
                       seed: int = 0, devices: Sequence | None = None, **kw: Any) -> JaxSamBackend:
  """Builds the Flax SAM backend that `spec` names.

  Args:
    spec: "jax:PATH" (msgpack from `sesam convert --format sam`, a transformers SamModel
      directory or .safetensors file) or "jax-random:VARIANT" (vit_b, vit_l, vit_h, tiny).
    dtype: encoder compute dtype ("float32" or "bfloat16").
    decoder_dtype: prompt decoder dtype if not `dtype`.
    seed: random weights' seed (jax-random).
    devices: local devices (default: default_devices()).
    **kw: JaxSamBackend keywords (batch_size, encode_batch, mask_logit, attention,
      query_rows).

  Returns:
    A JaxSamBackend.
  """
  kind, _, arg = spec.partition(":")
  if kind == "jax-random":
    variant = arg or "vit_b"
    model_spec = sam.sam_spec(variant)
    params = sam.init_params(model_spec, seed)
    name = f"jax-random:{variant} (random weights, not a trained SAM)"
  elif kind == "jax":
    if not arg:
      raise ValueError("backend 'jax' needs weights: jax:/path/sam_vit_b.msgpack (made by `sesam "
                       "convert sam_vit_b_01ec64.pth sam_vit_b.msgpack --format sam`)")
    params, model_spec, source = sam_convert.load_sam(arg)
    name = f"jax:{source}"
  else:
    raise ValueError(f"unknown JAX SAM backend {spec!r}; choose jax:PATH or jax-random:VARIANT")
  return JaxSamBackend(params, model_spec, name=name, dtype=dtype, decoder_dtype=decoder_dtype,
                       devices=devices, **kw)


# The kinds this module adds to sam_bridge's table (`sesam_jax.sam.resolver.BACKENDS` joins them).
KINDS: dict[str, BackendKind] = {k.name: k for k in (
    BackendKind("jax", "jax:PATH (a `sesam convert --format sam` .msgpack, a transformers SAM "
                "folder or .safetensors)", "jax", "checkpoint",
                lambda path, **kw: create_jax_backend(f"jax:{path}", **kw),
                options=("dtype", "decoder_dtype", "attention")),
    BackendKind("jax-random", "jax-random:VARIANT", "jax", "random",
                lambda variant, **kw: create_jax_backend(f"jax-random:{variant}", **kw),
                variants=tuple(sam.SAM_VARIANTS), options=("dtype", "decoder_dtype", "attention"),
                note="random weights: for timing and tests only"),
)}
