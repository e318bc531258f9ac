#!/usr/bin/env bash
# pack_data.sh: gzip a Fashion-MNIST copy into .device/data/FashionMNIST/raw/*-ubyte.gz of this checkout.
#
# Why: a device machine has no network, and whatever it needs travels with the checkout (64 MiB per call
# at most). The four plain IDX files are 55 MB; gzipped they are about 30 MB, and cnnbench reads .gz IDX
# files as they are (cnnbench/data/idx.py), so `dataset.root=.device/data` works there unchanged.
# .device/ is ignored by git (.gitignore), so the packed data never lands in a commit.
#
#   scripts/pack_data.sh [SOURCE [DEST]]
#     SOURCE  a data root as cnnbench searches it (<root>/FashionMNIST/raw, <root>/FashionMNIST or <root>,
#             each file plain or .gz); default $CNNBENCH_DATA; one of the two is required
#     DEST    default .device/data in the checkout; the files go to DEST/FashionMNIST/raw/
#
# A file already packed and newer than its source is kept. Exit status 1 when the source is incomplete.
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
source_root=${1:-${CNNBENCH_DATA:-}}
if [[ -z $source_root ]]; then
    echo "usage: scripts/pack_data.sh SOURCE [DEST] (SOURCE: a Fashion-MNIST root; or set CNNBENCH_DATA)" >&2
    exit 2
fi
dest_root=${2:-$repo/.device/data}
names=(train-images-idx3-ubyte train-labels-idx1-ubyte t10k-images-idx3-ubyte t10k-labels-idx1-ubyte)

# The folder under SOURCE holding all four files, plain or gzipped (cnnbench's own search order).
find_source() {
    local folder name complete
    for folder in "$source_root/FashionMNIST/raw" "$source_root/FashionMNIST" "$source_root"; do
        complete=1
        for name in "${names[@]}"; do
            [[ -f $folder/$name || -f $folder/$name.gz ]] || complete=0
        done
        if ((complete)); then
            echo "$folder"
            return 0
        fi
    done
    return 1
}

# Write DEST/NAME.gz from SRC/NAME (compressed) or SRC/NAME.gz (checked, copied); atomic via a .tmp file.
pack_one() {
    local src=$1 out=$2 name=$3 target=$2/$3.gz
    if [[ -f $src/$name ]]; then
        if [[ $target -nt $src/$name ]] && gzip -t "$target" 2>/dev/null; then
            echo "kept     $target"
            return 0
        fi
        gzip -6 -n -c "$src/$name" >"$target.tmp"  # -n: no name or time stamp, same bytes on every run
    else
        gzip -t "$src/$name.gz"  # a damaged archive stops here, naming the file
        cp "$src/$name.gz" "$target.tmp"
    fi
    mv "$target.tmp" "$target"
    echo "packed   $target"
}

main() {
    local src out name
    if ! src=$(find_source); then
        echo "pack_data.sh: no complete Fashion-MNIST under $source_root (expected ${names[*]}, plain or .gz," \
            "in <root>/FashionMNIST/raw); give the data root as the first argument" >&2
        exit 1
    fi
    out=$dest_root/FashionMNIST/raw
    mkdir -p "$out"
    echo "packing $src -> $out"
    for name in "${names[@]}"; do
        pack_one "$src" "$out" "$name"
    done
    du -ch "$out"/*.gz | tail -n 1 | sed 's/total$/in all (the device tool carries at most 64 MiB per call)/'
}

main
