#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# OCI image to VM image: time of `flake-ctl firecracker pull --oci` beside what the same
# takes with podman alone (`podman pull` + `podman export` into a tar file), for images of
# about SIZES megabytes (random, incompressible files on top of busybox) pushed to the
# local registry. Every timed run starts without the image in local storage (hyperfine
# --prepare removes it), so both sides pull from the registry. A re-pull of an unchanged
# image (nothing to rebuild) is timed as well.
#
# The VM image and the tar file are written to a tmpfs (TMPFS=0 to write them under the
# run's directory on disk instead): the comparison is between the conversions, not the
# disks, and the build machines are short of disk space. Medians of RUNS runs go to
# target/bench/oci.md (and oci-*.json). Run as root after `make build` and `make agent`,
# with the VM fixtures (make vm-fixtures) for the kernel.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

BIN_DIR=${BIN_DIR:-$PWD/target/release}
RUNS=${RUNS:-3}
SIZES=${SIZES:-50 500}
TMPFS=${TMPFS:-1}
REGISTRY=${REGISTRY:-127.0.0.1:5000}
TRIPLE=$(rustc -vV | sed -n 's/^host: //p')
export FLAKE_SCI=${FLAKE_SCI:-$PWD/target/$TRIPLE/release/sci}
KERNEL=${KERNEL:-${VM_FIXTURES:-/var/cache/flake-pilot-vm}/kernel/vmlinux}
BASE=localhost/busybox:latest
OUT=target/bench
mkdir -p "$OUT"

for need in "$BIN_DIR/flake-ctl" "$FLAKE_SCI" "$KERNEL"; do
    [ -e "$need" ] || { echo "bench-oci: $need is missing (make build agent vm-fixtures)" >&2; exit 1; }
done
if ! (exec 3<>"/dev/tcp/${REGISTRY%:*}/${REGISTRY#*:}") 2>/dev/null; then
    echo "bench-oci: the registry $REGISTRY does not answer (scripts/setup-host.sh)" >&2
    exit 1
fi

work=$(mktemp -d /tmp/flake-bench-oci-XXXXXX)
run_id=$(printf '%s' "${work##*-}" | tr 'A-Z' 'a-z')
export FLAKES_CONFIG=$work/flakes.yml HOME=$work/home
printf 'generic:\n  flakes_dir: %s/flakes\n  podman_ids_dir: %s/ids\n  firecracker_ids_dir: %s/vm\n' \
    "$work" "$work" "$work" > "$FLAKES_CONFIG"
out_dir=$work/out
mkdir -p "$out_dir" "$HOME/.config/flakes/firecracker"
images=$HOME/.config/flakes/firecracker/images
ln -s "$out_dir" "$images"
built=()
cleanup() {
    for ref in "${built[@]}"; do
        podman rmi -- "$ref" >/dev/null 2>&1 || true
    done
    podman rm -f "bench-oci-$run_id" >/dev/null 2>&1 || true
    mountpoint -q "$out_dir" && umount "$out_dir"
    rm -rf "$work"
}
trap cleanup EXIT

# image SIZE_MB REF: busybox plus SIZE_MB of random data in 10 files, pushed as REF and
# removed locally.
image() {
    local ctx=$work/ctx-$1 per=$(($1 * 1024 * 1024 / 10)) local_ref=localhost/bench-oci-$run_id:$1
    mkdir -p "$ctx"
    printf 'FROM %s\nRUN mkdir /data && for i in 0 1 2 3 4 5 6 7 8 9; do head -c %s /dev/urandom > /data/f$i; done\n' \
        "$BASE" "$per" > "$ctx/Containerfile"
    # No intermediate images: they would keep the layer in local storage, and every
    # timed pull would find it there instead of fetching it.
    podman build --layers=false -q -t "$local_ref" "$ctx" >/dev/null
    podman push -q --tls-verify=false "$local_ref" "$2"
    podman rmi -- "$local_ref" >/dev/null
}

table=$OUT/oci.md
{
    echo "# OCI image to VM image ($(date -u +%Y-%m-%d), $(nproc) cores, medians of $RUNS runs)"
    echo
    echo "| image | flake-ctl pull --oci | podman pull + export | ratio | re-pull, unchanged |"
    echo "|---|---:|---:|---:|---:|"
} > "$table"
for size in $SIZES; do
    ref=$REGISTRY/bench-oci-$run_id/img:$size
    built+=("$ref")
    image "$size" "$ref"
    if [ "$TMPFS" = 1 ]; then
        mountpoint -q "$out_dir" && umount "$out_dir"
        mount -t tmpfs -o "size=$((size * 4 + 512))m" tmpfs "$out_dir"
    fi
    json=$OUT/oci-$size.json
    hyperfine --runs "$RUNS" --export-json "$json" \
        --prepare "podman rmi -f -- $ref >/dev/null 2>&1; rm -rf $out_dir/vm $out_dir/export.tar; podman rm -f bench-oci-$run_id >/dev/null 2>&1; true" \
        -n "flake-ctl pull --oci" \
        "$BIN_DIR/flake-ctl firecracker --user pull --name vm --force --oci $ref --kernel $KERNEL >/dev/null" \
        -n "podman pull + export" \
        "podman pull -q $ref >/dev/null && podman create -q --name bench-oci-$run_id $ref /none >/dev/null && podman export -o $out_dir/export.tar bench-oci-$run_id" \
        >/dev/null
    "$BIN_DIR/flake-ctl" firecracker --user pull --name vm --force --oci "$ref" --kernel "$KERNEL" >/dev/null
    hyperfine --runs "$RUNS" --export-json "$OUT/oci-$size-repull.json" \
        -n "re-pull" "$BIN_DIR/flake-ctl firecracker --user pull --name vm --oci $ref --kernel $KERNEL" >/dev/null
    read -r ours theirs again < <(python3 -c '
import json, statistics, sys
m = lambda f: [statistics.median(r["times"]) for r in json.load(open(f))["results"]]
a, b = m(sys.argv[1]); c, = m(sys.argv[2])
print(a, b, c)' "$json" "$OUT/oci-$size-repull.json")
    python3 -c '
import sys
size, a, b, c = sys.argv[1], *map(float, sys.argv[2:])
print("| %s MB | %.2f s | %.2f s | %.2f | %.2f s |" % (size, a, b, a / b, c))' \
        "$size" "$ours" "$theirs" "$again" >> "$table"
    rm -rf "$out_dir/vm" "$out_dir/export.tar"
done
cat "$table"
