#!/usr/bin/env bash
# prepare_device.sh: run HERE (where pip can download) before checking a GPU machine that has no network.
#
# What it makes, both ignored by git (.gitignore) and carried with the checkout to the GPU machine:
#   .whl/         the wheels that machine lacks: hydra-core, omegaconf, antlr4-python3-runtime. Its python3
#                 (3.12, /opt/torch/.venv) already has torch, torchvision, tensorboard, tqdm, matplotlib,
#                 pytest, PyYAML and packaging (the device README's package list), so nothing else is needed.
#                 All three are pure Python (py3-none-any). hydra-core and omegaconf are downloaded with the
#                 device README's own command for Python 3.12 on manylinux x86-64; antlr4-python3-runtime 4.9.3
#                 (the 4.9 series omegaconf 2.3 pins) is published only as a source archive, so pip builds
#                 its wheel here. The Hydra plugins (extras joblib, submitit, optuna) are not carried:
#                 scripts/device_check.sh runs no sweeps.
#   .device/data  Fashion-MNIST gzipped (scripts/pack_data.sh), about 30 MB.
#
#   scripts/prepare_device.sh DATA_ROOT        # DATA_ROOT: a Fashion-MNIST root (default $CNNBENCH_DATA)
#   PYTHON=/path/to/python scripts/prepare_device.sh   # any Python with pip (the wheels do not depend on it)
#
# Then, on the GPU machine, with .whl and .device carried: bash scripts/device_check.sh OUT_DIR
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
python=${PYTHON:-python3}
# The versions cnnbench's tests run with (pyproject.toml: hydra-core >=1.3.2,<1.4; omegaconf >=2.3,<2.4).
hydra_core=${HYDRA_CORE_VERSION:-1.3.8}
omegaconf=${OMEGACONF_VERSION:-2.3.1}
antlr4=${ANTLR4_VERSION:-4.9.3}
limit_mib=64  # what one device call carries: tracked files plus carried folders

download_wheels() {
    local wheels=$repo/.whl
    rm -rf "$wheels"  # one version of each package: two would stop the install there
    mkdir -p "$wheels"
    "$python" -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux2014_x86_64 --platform manylinux1_x86_64 \
        -d "$wheels" "hydra-core==$hydra_core" "omegaconf==$omegaconf"
    "$python" -m pip wheel --no-deps -w "$wheels" "antlr4-python3-runtime==$antlr4"
    local wheel
    for wheel in "$wheels"/*.whl; do
        [[ $wheel == *-py3-none-any.whl ]] || { echo "prepare_device.sh: $wheel is not pure Python" >&2; exit 1; }
    done
    ls -1 "$wheels"
}

# Tracked files, untracked-not-ignored files and the two carried folders must stay under the limit.
check_size() {
    local tree carried total
    tree=$(cd "$repo" && git ls-files -z --cached --others --exclude-standard | du -cb --files0-from=- | tail -n 1 | cut -f1)
    carried=$(du -cb "$repo/.whl" "$repo/.device" | tail -n 1 | cut -f1)
    total=$(( (tree + carried) / 1048576 ))  # MiB
    echo "to carry: $(( tree / 1048576 )) MiB of checkout + $(( carried / 1048576 )) MiB in .whl and .device = $total MiB (limit $limit_mib MiB)"
    if (( total >= limit_mib )); then
        echo "prepare_device.sh: $total MiB is over the $limit_mib MiB a device call carries" >&2
        exit 1
    fi
}

download_wheels
bash "$repo/scripts/pack_data.sh" "$@"
check_size
echo "ready: on the GPU machine, carry .whl and .device and run: bash scripts/device_check.sh OUT_DIR"
