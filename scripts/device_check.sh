#!/usr/bin/env bash
# The GPU figures of sesam-jax in one short call: scripts/device_check.sh OUTDIR [--cpu]
#
# Made for one NVIDIA H100/H200 whose image has CUDA jax, torch, flax, optax, orbax,
# transformers and scikit-image but no network, within 8 minutes in all:
#   1. the packages such an image lacks (grain, array-record, portpicker, ml-collections,
#      tensorboardX) from wheels in the repository's git-ignored .whl/ folder (copy them there
#      from ../shared/device/wheels/ before the run: cp312, manylinux x86-64);
#   2. nvidia-smi, versions;
#   3. benchmarks on generated data only (datasets do not travel), the scarcest figures first,
#      each appending its record (figures + machine fingerprint) to OUTDIR/records.jsonl:
#        Table 6's s/iteration: FixMatch, AGMM, SeSAM (Flax SAM and torch bridge), DeepLabV3+-R101
#          batch 4 crop 1024 bf16, from the weak-aug crop and from the full image;
#        Flax vs PyTorch SegFormer-B0 train step, fp32 and bf16, batch 8, crops 512 and 1024;
#        SeSAM step memory (XLA's analysis and the measured peak) and step seconds for
#          DeepLabV3+-R101 crop 1024 batch 4 and SegFormer-B0 crop 1024 batch 8;
#        SAM ViT-B (random weights) encoder images/s and decoder s per prompt set, torch CUDA,
#          then the Flax SAM if this checkout has it;
#        the SeSAM / FixMatch iteration ratio on generated data, with the Flax SAM in the
#          training process and with the torch bridge;
#   4. the GPU-relevant tests (models in fp32/bf16, the supervised and SeSAM steps, a tiny
#      FixMatch/SeSAM training loop).
# Every step has its own time limit, cut to what is left of the whole budget
# (DEVICE_CHECK_BUDGET_S, default 460 s), so a hang costs one step, not the slot. OUTDIR gets
# four files (few, for runners that return only a handful): summary.md (rewritten after every step, so
# it exists whatever happens), records.jsonl, log.txt (every step's output) and table.md (the
# records as `sesam bench --compare` lays them out).
#
# --cpu (automatic without nvidia-smi): the same steps with small settings, so that the script
# is known to work on a machine without a GPU.
#
# Environment: PYTHON (default python3), DEVICE_CHECK_BUDGET_S, DEVICE_CHECK_SLOWDOWN (an integer
# that multiplies every step's own limit, for a loaded machine), SESAM_SITE (where the wheels
# are installed, default /tmp/sesam_site), SESAM_COMPILE_CACHE_DIR (JAX's persistent compilation
# cache of every benchmark, `sesam bench --compile-cache-dir`: default auto, i.e.
# $XDG_CACHE_HOME/sesam/jax or ~/.cache/sesam/jax, so a second call on the same machine loads
# the steps the first one compiled; none = off). The tests keep theirs in a temporary folder.

set -u -o pipefail

if [[ $# -lt 1 || "$1" == -* ]]; then
  echo "usage: scripts/device_check.sh OUTDIR [--cpu]" >&2
  exit 2
fi
OUTDIR=$1
MODE=auto
if [[ "${2:-}" == "--cpu" ]]; then MODE=cpu; fi

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
mkdir -p "$OUTDIR" || { echo "device_check: cannot create $OUTDIR" >&2; exit 2; }
OUTDIR=$(cd "$OUTDIR" && pwd)
cd "$REPO" || exit 2
PY=${PYTHON:-python3}
BUDGET_S=${DEVICE_CHECK_BUDGET_S:-460}
SLOWDOWN=${DEVICE_CHECK_SLOWDOWN:-1}   # multiplies every step's own limit (a loaded machine)
RESERVE_S=25            # kept back for the compare table and the summary
START=$(date +%s)
LOG=$OUTDIR/log.txt
RECORDS=$OUTDIR/records.jsonl
SUMMARY=$OUTDIR/summary.md
ROWS=()                 # one markdown row per step
NOTES=()
: > "$LOG"

if [[ "$MODE" == auto ]]; then
  if command -v nvidia-smi > /dev/null 2>&1 && nvidia-smi -L > /dev/null 2>&1; then
    MODE=gpu
  else
    MODE=cpu
  fi
fi

elapsed() { echo $(( $(date +%s) - START )); }

write_summary() {  # Rewrites summary.md atomically (temp name, then rename).
  {
    echo "# sesam-jax device check ($MODE)"
    echo
    echo "- started: $(date -u -d "@$START" '+%Y-%m-%d %H:%M:%S UTC'), elapsed: $(elapsed) s of a ${BUDGET_S} s budget"
    echo "- host: $(hostname), repository: $REPO, commit: $(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo unknown)"
    echo "- records: records.jsonl; every step's output: log.txt; figures by machine: table.md"
    echo
    echo "| step | status | seconds | command |"
    echo "|---|---|---|---|"
    for row in "${ROWS[@]}"; do echo "$row"; done
    if [[ ${#NOTES[@]} -gt 0 ]]; then
      echo
      for note in "${NOTES[@]}"; do echo "- $note"; done
    fi
  } > "$SUMMARY.tmp" && mv "$SUMMARY.tmp" "$SUMMARY"
}

# step NAME LIMIT_S COMMAND...: runs COMMAND with its output in log.txt, within LIMIT_S and
# what is left of the budget; its status goes into summary.md.
step() {
  local name=$1 limit=$2
  shift 2
  local left=$(( BUDGET_S - $(elapsed) - RESERVE_S ))
  local shown="${*//$'\n'/ }"    # the command on one line, shortened, for summary.md
  shown="${shown//|/\\|}"
  (( ${#shown} > 180 )) && shown="${shown:0:177}..."
  if (( left < 10 )); then
    ROWS+=("| $name | skipped: budget spent | 0 | \`$shown\` |")
    write_summary
    return 0
  fi
  limit=$(( limit * SLOWDOWN ))
  (( limit > left )) && limit=$left
  echo "=== [$(elapsed) s] $name (limit ${limit} s): $*" >> "$LOG"
  echo "device_check: $name (limit ${limit} s)" >&2
  local t0 rc status
  t0=$(date +%s)
  # timeout signals the whole process group: worker processes die with the step.
  timeout --kill-after=10 "$limit" "$@" >> "$LOG" 2>&1
  rc=$?
  case $rc in
    0) status=ok ;;
    124|137) status="TIMED OUT after ${limit} s" ;;
    *) status="failed (exit $rc)" ;;
  esac
  ROWS+=("| $name | $status | $(( $(date +%s) - t0 )) | \`$shown\` |")
  echo "=== $name: $status" >> "$LOG"
  write_summary
  return 0
}

write_summary

# --- Python packages: the image's, plus wheels from .whl/ for what it lacks ------------------
NEEDED="grain array_record portpicker ml_collections tensorboardX cachetools"
missing_modules() {
  "$PY" - "$@" <<'EOF'
import importlib.util, sys
print(" ".join(m for m in sys.argv[1:] if importlib.util.find_spec(m) is None))
EOF
}
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
MISSING=$(missing_modules $NEEDED)
if [[ -n "$MISSING" ]]; then
  SITE=${SESAM_SITE:-/tmp/sesam_site}
  if compgen -G "$REPO/.whl/*.whl" > /dev/null; then
    step wheels 90 "$PY" -m pip install -q --no-index --no-deps --no-compile --upgrade \
      --target "$SITE" "$REPO"/.whl/*.whl
    export PYTHONPATH="$SITE:$PYTHONPATH"
    MISSING=$(missing_modules $NEEDED)
  fi
  if [[ -n "$MISSING" ]]; then
    msg="missing Python packages: $MISSING. Copy the wheels of ../shared/device/wheels/ (cp312, see its README) into $REPO/.whl/ (git-ignored) before the run; steps that need them fail below."
    echo "device_check: $msg" >&2
    NOTES+=("$msg")
  fi
fi

SESAM=("$PY" -m sesam_jax.main)
BENCH=("${SESAM[@]}" bench --compile-cache-dir "${SESAM_COMPILE_CACHE_DIR:-auto}")
export PYTHONUNBUFFERED=1

# --- The machine ------------------------------------------------------------------------------
if [[ "$MODE" == gpu ]]; then
  step nvidia-smi 20 nvidia-smi
fi
step versions 60 "$PY" -c "
import importlib.metadata as m, platform, jax
def v(n):
  try: return m.version(n)
  except m.PackageNotFoundError: return None
print('python', platform.python_version(), {n: v(n) for n in ('jax', 'jaxlib', 'flax', 'optax', 'orbax-checkpoint', 'torch', 'transformers', 'grain')})
print('jax devices', jax.devices())
import torch; print('torch cuda', torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else '')
"

# --- Settings per mode --------------------------------------------------------------------------
if [[ "$MODE" == gpu ]]; then
  export JAX_PLATFORMS=cuda          # the tests' conftest would otherwise pick cpu
  # JAX and torch share the card inside the train-step and SAM benchmarks: no 75% grab.
  export XLA_PYTHON_CLIENT_PREALLOCATE=false
  TEST_ARGS=(tests/models/test_students.py tests/train/test_train_step.py
             tests/train/test_sesam_step.py tests/train/test_sesam_loop.py
             -k "not four_devices and not must_split")
  TEST_LIMIT=90
  TS_ARGS=(--models segformer_b0 --batch 8 --reps 5 --warmup 2)
  TS_CROPS=(512 1024)
  TS_DTYPES=(fp32 bf16)
  TS_LIMIT=80
  MEM_ARGS=(--devices 1 --run on --steps 3 --explain 8 --timeout 100)
  MEM_LIMIT=240
  MEM_FIX_ARGS=(--cases segformer_b0:8 --dtypes bf16 --query-chunk 1024 --devices 1 --run on
                --steps 3 --explain 8 --timeout 100)
  SAM_ARGS=(--device cuda --scenes none --reps 5 --encode-batch 8)
  SAM_DTYPES=(float32 bfloat16)
  SAM_BACKENDS=jax-random:vit_b,random:vit_b
  # The Flax encoder's attention: today's einsum form beside jax.nn.dot_product_attention (XLA);
  # cuDNN's flash attention (bf16 only) gets its own step below, so a failure costs only it.
  SAM_ATTENTION=full,dot_product
  SAM_CUDNN=1
  SAM_LIMIT=150
  # SeSAM with the Flax SAM in the training process and with the torch bridge, one FixMatch.
  IT_ARGS=(--dataset synthetic --image-size 512 1024 --crop 512 --batch 8
           --iterations 4 --warmup 2 --device cuda --backend jax-random:vit_b,random:vit_b)
  IT_LIMIT=200
  IT6_ARGS=(--dataset synthetic --iterations 4 --warmup 2 --device cuda
            --backend jax-random:vit_b,random:vit_b)
  IT6_LIMIT=240
else
  # Small settings, one case each: the path is exercised, the figures mean little here.
  export JAX_PLATFORMS=cpu
  TEST_ARGS=(tests/train/test_sesam_step.py -k step_runs)
  TEST_LIMIT=90
  TS_ARGS=(--models segformer_tiny --batch 2 --reps 1 --warmup 0 --torch-threads 1)
  TS_CROPS=(64)
  TS_DTYPES=(bf16)
  TS_LIMIT=150
  MEM_ARGS=(--cases segformer_tiny:2 --dtypes bf16 --crop 64 --devices 1 --run on --steps 1
            --explain 4 --timeout 140)
  MEM_LIMIT=150
  MEM_FIX_ARGS=()
  SAM_ARGS=(--device cpu --scenes none --reps 1 --prompts 4)
  SAM_DTYPES=(float32)
  SAM_BACKENDS=jax-random:tiny,random:tiny
  SAM_ATTENTION=chunked,dot_product
  SAM_CUDNN=0
  SAM_LIMIT=150
  IT_ARGS=(--dataset synthetic --image-size 96 128 --model segformer_tiny
           --crop 64 --batch 2 --iterations 2 --warmup 1 --backend jax-random:tiny)
  IT_LIMIT=120
  IT6_ARGS=(--dataset synthetic --image-size 64 128 --model deeplabv3plus_tiny --crop 64
            --batch 2 --dtype float32 --iterations 1 --warmup 1 --backend jax-random:tiny)
  IT6_LIMIT=150
fi

# --- Benchmarks on generated data, the scarcest figures first -----------------------------------
# The paper's Table 6 first: FixMatch, AGMM and SeSAM s/iteration side by side at its setting
# (DeepLabV3+-R101, batch 4, crop 1024, bf16, strict refreshes every M = 4 steps, K = 5; SeSAM
# with the Flax SAM in the trainer and with the torch bridge), from the weak-aug crop, then from
# the full image.
for view in weak_aug full; do
  step "table6 iteration, view $view" "$IT6_LIMIT" "${BENCH[@]}" --what iteration \
    --setting table6 --methods fixmatch,agmm,sesam --view "$view" "${IT6_ARGS[@]}" \
    --record "$RECORDS"
done
# SAM ViT-B, random weights: the Flax SAM and torch's side by side (encoder images/s, decoder s
# per prompt set and their ratios), fp32 then bf16, the Flax encoder once per attention
# implementation (SAM_ATTENTION) in the same rounds.
for dtype in "${SAM_DTYPES[@]}"; do
  step "sam flax vs torch $dtype" "$SAM_LIMIT" "${BENCH[@]}" --what sam \
    --backends "$SAM_BACKENDS" --dtype "$dtype" --attention "$SAM_ATTENTION" "${SAM_ARGS[@]}" \
    --record "$RECORDS"
done
if [[ $SAM_CUDNN == 1 ]]; then
  step "sam flax bf16, cuDNN attention vs dot_product" 110 "${BENCH[@]}" --what sam \
    --backends jax-random:vit_b --dtype bfloat16 --attention dot_product,cudnn "${SAM_ARGS[@]}" \
    --record "$RECORDS"
fi
# SeSAM / FixMatch iteration ratio on generated data.
step "iteration sesam/fixmatch" "$IT_LIMIT" "${BENCH[@]}" \
  --what iteration "${IT_ARGS[@]}" --record "$RECORDS"

# SeSAM step memory: XLA's analysis + the device's peak after running it, and step seconds
# (DeepLabV3+-R101 crop 1024 batch 4 is the paper's Table 6 setting).
step "memory (SeSAM step)" "$MEM_LIMIT" "${BENCH[@]}" --what memory "${MEM_ARGS[@]}" \
  --record "$RECORDS"
# The fix proposed for SegFormer-B0's memory (attention in query chunks, recomputed in the
# backward pass), measured on the GPU.
if [[ ${#MEM_FIX_ARGS[@]} -gt 0 ]]; then
  step "memory B0 bf16, chunked attention" 100 "${BENCH[@]}" --what memory \
    "${MEM_FIX_ARGS[@]}" --record "$RECORDS"
  step "memory B0 bf16, cuDNN fused attention" 100 "${BENCH[@]}" --what memory \
    "${MEM_FIX_ARGS[@]/1024/-1}" --record "$RECORDS"
fi

# Flax vs PyTorch SegFormer-B0 train step (torch/jax ratio), fp32 and bf16.
for dtype in "${TS_DTYPES[@]}"; do
  for crop in "${TS_CROPS[@]}"; do
    step "train-step $dtype crop $crop" "$TS_LIMIT" "${BENCH[@]}" --what train-step \
      "${TS_ARGS[@]}" --crop "$crop" --dtype "$dtype" --record "$RECORDS"
  done
done
# --- Tests that mean something on the accelerator ----------------------------------------------
# (The 4-device tests need the 4 fake CPU devices of CI; one GPU has one device.)
step tests "$TEST_LIMIT" "$PY" -m pytest -q -p no:cacheprovider -m "not slow" "${TEST_ARGS[@]}"

# --- The records as one table ---------------------------------------------------------------------
if [[ -s "$RECORDS" ]]; then
  # The compare table is what `sesam bench --compare` prints on stderr.
  timeout 20 "${SESAM[@]}" bench --compare "$RECORDS" > /dev/null 2> "$OUTDIR/table.md" \
    || NOTES+=("sesam bench --compare failed: its message is in table.md")
else
  NOTES+=("no benchmark wrote a record (see log.txt)")
fi
TIMES_FILE=$(mktemp)
times > "$TIMES_FILE"            # in this shell: its second line is the steps' CPU time
CHILD_CPU=$(tail -n 1 "$TIMES_FILE")
rm -f "$TIMES_FILE"
NOTES+=("finished in $(elapsed) s wall; CPU time of the steps (user, system): $CHILD_CPU")
write_summary
cat "$SUMMARY"
