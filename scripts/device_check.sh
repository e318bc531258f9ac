#!/usr/bin/env bash
# device_check.sh: check cnnbench on a machine with one CUDA GPU, in under 9 minutes, into at most 8 files.
#
#   bash scripts/device_check.sh [OUT_DIR [DATA_ROOT]]
#     OUT_DIR    where the files go; default $OUT (the device tool's folder), else outputs/device_check/DATE_TIME
#     DATA_ROOT  Fashion-MNIST, plain or gzipped IDX files in <root>/FashionMNIST/raw; default .device/data
#                (scripts/pack_data.sh), else $CNNBENCH_DATA
#   PYTHON=python3.12 bash scripts/device_check.sh ...   # the Python that has torch (default python3)
#
# Why one script: a GPU machine is lent for minutes, so every check runs in one call, each step with a
# time cap and all of them inside one budget; a step that fails or runs out of time is recorded and the
# next one still runs. Offline machines get hydra-core/omegaconf/antlr4 as wheels in .whl/
# (scripts/prepare_device.sh); on a machine with internet, `pip install -e .` first instead.
#
# Steps, in order of how predictable their time is (the benchmark, the least predictable, comes last):
#   environment   GPU name, driver, torch, CUDA, cuDNN, Python                    -> env.txt
#   install       .whl/*.whl into a temporary site folder; this checkout on PYTHONPATH (no pip resolution)
#   gpu tests     python3 -m pytest -m gpu -q (0 tests collected is fine: pytest exits 5)
#   lenet_bn      cnnbench train experiment=d2l_lenet_bn device=fast, 10 epochs   -> summary_d2l_lenet_bn.json
#   resnet18      cnnbench train experiment=d2l_resnet18 device=fast, 10 epochs   -> summary_d2l_resnet18.json
#   bench         cnnbench bench --on cuda, the eight book recipes in two calls  -> bench.md, bench_28_96px.json,
#                 (28 and 96 pixels, then 224 pixels: a cut-off second call keeps the first one's results)  bench_224px.json
# plus steps.tsv (step, status, seconds, cap) and device_check.log (everything printed): 8 files.
#
# Time estimate (forward FLOPs per image from `cnnbench models`; training = 3x forward):
#   resnet18: 637 MFLOP x 3 x 60,000 x 10 epochs = 1.15 PFLOP, + 64 TFLOP of evaluation. An H200 does about
#     790 TFLOP/s bf16 on big matmuls; convnets of this size at batch 256 reach far less. Assuming 20-50
#     TFLOP/s (3-6 % of that peak): 25-60 s, plus ~15 s start-up and autotuning. Cap 180 s.
#   lenet_bn: 0.56 MFLOP per image, so 2,350 steps are bound by kernel launches and Python, ~1-3 ms each:
#     5-10 s, plus ~15 s start-up. Cap 90 s.
#   bench: per recipe two cnnbench set-ups (each autotunes 4 candidates x 3 steps), 5 + 30 timed steps,
#     an end-to-end epoch of 50 batches + 10 test batches, and the book's pipeline on the same batches,
#     whose PIL resizing in 4 CPU workers (~1,000-5,000 images/s at 224 pixels) dominates: 6,400-12,800
#     images, 3-13 s. About 15-30 s per recipe: 75-150 s for the five small recipes (cap 180 s), 45-90 s
#     for the three at 224 pixels (cap 150 s).
#   gpu tests: unknown (tests/flows/test_gpu.py is sized by whoever writes it); cap 90 s. Set-up: ~20 s.
#   Expected in all: about 5 minutes. Worst case: every step stops at its cap or at the budget
#   (DEVICE_CHECK_BUDGET_S, default 510 s), whichever comes first, so the script ends within 9 minutes.
#
# Exit status: 0 every step passed; 1 a step failed or ran out of time (steps.tsv says which);
# 2 no CUDA GPU here, or no data (one line on stderr, nothing written).
set -uo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
py=${PYTHON:-python3}
budget_s=${DEVICE_CHECK_BUDGET_S:-510}  # seconds for everything: 8.5 minutes
kill_after_s=20  # seconds between a capped step's SIGTERM (cnnbench writes last.pt and its summary) and SIGKILL
reserve_s=25     # seconds kept back from every cap: that grace, then the copies at the end
bench_args=(--on cuda --warmup 5 --steps 30 --epoch-batches 50 --eval-batches 10)
small_recipes=(d2l_lenet d2l_lenet_bn d2l_googlenet d2l_resnet18 d2l_densenet)  # 28 and 96 pixels
large_recipes=(d2l_alexnet d2l_vgg11 d2l_nin)                                    # 224 pixels
failed=0

die2() {
    echo "device_check.sh: $*" >&2
    exit 2
}

require_gpu() {
    if ! { command -v nvidia-smi && nvidia-smi -L; } >/dev/null 2>&1; then
        die2 "no NVIDIA GPU here (nvidia-smi is missing or lists none); this script checks a machine with a CUDA GPU"
    fi
    if ! "$py" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' >/dev/null 2>&1; then
        die2 "$py has no torch that sees a CUDA GPU (set PYTHON to the Python that has one)"
    fi
}

# A root holding the four IDX files (plain or .gz) in <root>/FashionMNIST/raw, <root>/FashionMNIST or <root>.
has_data() {
    local folder name complete
    for folder in "$1/FashionMNIST/raw" "$1/FashionMNIST" "$1"; do
        complete=1
        for name in train-images-idx3-ubyte train-labels-idx1-ubyte t10k-images-idx3-ubyte t10k-labels-idx1-ubyte; do
            [[ -f $folder/$name || -f $folder/$name.gz ]] || complete=0
        done
        ((complete)) && return 0
    done
    return 1
}

find_data() {
    local candidate
    if [[ -n ${1:-} ]]; then
        has_data "$1" || die2 "no Fashion-MNIST IDX files (plain or .gz) under $1"
        (cd "$1" && pwd)
        return
    fi
    for candidate in "$repo/.device/data" "${CNNBENCH_DATA:-}"; do
        if [[ -n $candidate ]] && has_data "$candidate"; then
            (cd "$candidate" && pwd)
            return
        fi
    done
    die2 "no Fashion-MNIST found (.device/data, \$CNNBENCH_DATA): run scripts/pack_data.sh" \
        "where the data is and carry .device, or give DATA_ROOT as the second argument"
}

# run_step NAME CAP_S OK_CODES CMD...: CMD under a time cap, never past the budget; one line in steps.tsv.
run_step() {
    local name=$1 cap=$2 ok_codes=" $3 " rc=0 t0=$SECONDS status=ok left
    shift 3
    left=$((budget_s - SECONDS - reserve_s))
    ((cap > left)) && cap=$left
    if ((cap < 20)); then
        echo "=== $name: skipped, the time budget is spent"
        printf '%s\tskipped (budget spent)\t0\t0\n' "$name" >>"$out/steps.tsv"
        failed=1
        return
    fi
    echo "=== $name (cap $cap s): $*"
    timeout -s TERM -k "$kill_after_s" "$cap" "$@" || rc=$?
    if ((rc == 124 || rc == 137)); then
        status="timed out at $cap s"
    elif [[ $ok_codes != *" $rc "* ]]; then
        status="failed (exit $rc)"
    fi
    [[ $status == ok ]] || failed=1
    echo "=== $name: $status after $((SECONDS - t0)) s"
    printf '%s\t%s\t%d\t%d\n' "$name" "$status" $((SECONDS - t0)) "$cap" >>"$out/steps.tsv"
}

describe_environment() {
    {
        echo "date: $(date -u '+%Y-%m-%d %H:%M:%S UTC')"
        echo "cpus: $(nproc); memory: $(free -g 2>/dev/null | awk '/^Mem:/ {print $2 " GiB"}')"
        nvidia-smi --query-gpu=name,driver_version,memory.total,compute_cap --format=csv
        "$py" - <<'PY'
import platform, torch, torchvision
p = torch.cuda.get_device_properties(0)
print(f"python {platform.python_version()}; torch {torch.__version__}; torchvision {torchvision.__version__}; "
      f"CUDA {torch.version.cuda}; cuDNN {torch.backends.cudnn.version()}")
print(f"GPU 0: {p.name}, compute capability {p.major}.{p.minor}, {p.total_memory / 2**30:.0f} GiB, "
      f"{p.multi_processor_count} SMs; bf16: {torch.cuda.is_bf16_supported()}; GPUs: {torch.cuda.device_count()}")
PY
        nvidia-smi
    } >"$out/env.txt" 2>&1
    cat "$out/env.txt"
}

# The packages the GPU machine lacks, from .whl/ (prepare_device.sh), and this checkout's cnnbench.
install_project() {
    local site=$work/site
    if compgen -G "$repo/.whl/*.whl" >/dev/null; then
        "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" \
            "$repo"/.whl/*.whl || return 1
        export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
    fi
    export PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}"  # this checkout, in every subprocess too
    "$py" -c 'import hydra, omegaconf, cnnbench.run.train; print("hydra-core", hydra.__version__, "omegaconf", omegaconf.__version__)' \
        | tee -a "$out/env.txt"
}

train_recipe() {  # train_recipe EXPERIMENT CAP_S: a full run; its summary.json is kept even when cut off
    local run_dir=$work/runs/$1
    run_step "$1" "$2" 0 "$py" -m cnnbench train "experiment=$1" device=fast "dataset.root=$data" \
        dataset.download=false "hydra.run.dir=$run_dir"
    cp "$run_dir/summary.json" "$out/summary_$1.json" 2>/dev/null || echo "=== $1: no summary.json"
}

bench_recipes() {  # bench_recipes NAME CAP_S RECIPE...: both pipelines on the same data, cnnbench with device=fast
    local name=$1 cap=$2
    shift 2
    run_step "bench $name" "$cap" 0 "$py" -m cnnbench bench "$@" "${bench_args[@]}" --data-root "$data" --out "$work/bench_$name"
    cp "$work/bench_$name/bench.json" "$out/bench_$name.json" 2>/dev/null || return 0
    cat "$work/bench_$name/bench.md" >>"$out/bench.md"
    echo >>"$out/bench.md"
}

main() {
    local t0=$SECONDS
    echo "device_check.sh: output $out, data $data, budget $budget_s s"
    cd "$repo" || return 1
    export CNNBENCH_DATA=$data  # the tests' real data (tests/conftest.py), plain or gzipped
    describe_environment
    if ! install_project; then
        echo "=== install failed: hydra-core/omegaconf missing? run scripts/prepare_device.sh where pip works and carry .whl"
        printf 'install\tfailed\t%d\t0\n' $((SECONDS - t0)) >>"$out/steps.tsv"
        return 1
    fi
    printf 'environment + install\tok\t%d\t0\n' $((SECONDS - t0)) >>"$out/steps.tsv"
    run_step "gpu tests" 90 "0 5" "$py" -m pytest -m gpu -q -p no:cacheprovider tests
    train_recipe d2l_lenet_bn 90
    train_recipe d2l_resnet18 180
    bench_recipes 28_96px 180 "${small_recipes[@]}"
    bench_recipes 224px 150 "${large_recipes[@]}"
    echo "=== steps (name, status, seconds, cap):"
    cat "$out/steps.tsv"
    echo "=== done in $SECONDS s; files in $out:" "$out"/*
    return "$failed"
}

require_gpu
data=$(find_data "${2:-}") || exit 2
out=${1:-${OUT:-$repo/outputs/device_check/$(date +%Y-%m-%d_%H-%M-%S)}}
mkdir -p "$out" || die2 "cannot create $out"
out=$(cd "$out" && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
export PYTHONUNBUFFERED=1
: >"$out/steps.tsv"
main 2>&1 | tee "$out/device_check.log"
exit "${PIPESTATUS[0]}"
