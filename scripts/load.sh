#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# Load run: many launches at once and in a row, each output checked, latencies and
# throughput measured, and what the launchers leave behind counted before and after.
# Writes docs/load.md (set LOAD_OUT to write elsewhere).
#
# Run as root after `make build` (or set BIN_DIR), with the test image set up
# (`make setup`); the VM scenarios also need the VM fixtures (`make vm-fixtures`) and are
# skipped, saying so, without them. Counts (defaults in brackets):
#   LOAD_ONESHOT [50]  concurrent one-shot container launches
#   LOAD_WARM    [50]  concurrent warm calls of one resume flake
#   LOAD_FLAKES  [20]  different resume flakes, first calls at once
#   LOAD_SEQ     [1000] sequential warm calls
#   LOAD_VM_ONESHOT [5], LOAD_VM_WARM [20], LOAD_VM_SEQ [300]  the same for QEMU VMs
#   LOAD_ROUNDS  [3]   rounds of everything; the figures are medians over the rounds
#   LOAD_ONLY    podman | vm   one half only
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

BIN_DIR=${BIN_DIR:-$PWD/target/release}
VM_FIXTURES=${VM_FIXTURES:-/var/cache/flake-pilot-vm}
TRIPLE=$(rustc -vV | sed -n 's/^host: //p')
export FLAKE_AGENT=${FLAKE_AGENT:-$PWD/target/$TRIPLE/release/flake-agent}
export FLAKE_SCI=${FLAKE_SCI:-$PWD/target/$TRIPLE/release/sci}
OUT=${LOAD_OUT:-docs/load.md}

work=$(mktemp -d /tmp/flake-load-XXXXXX)
export LOAD_WORK=$work LOAD_BIN=$BIN_DIR LOAD_TAG=${LOAD_TAG:-ld$$} LOAD_ROUNDS=${LOAD_ROUNDS:-3}
cleanup() {
    for id in $(podman ps -a -q --filter "label=io.flake-pilot.flake" \
        --format '{{.ID}} {{.Labels}}' | awk -v t="io.flake-pilot.flake:$LOAD_TAG-" \
        'index($0, t) {print $1}'); do
        podman rm -f -t 0 "$id" >/dev/null 2>&1 || true
    done
    pkill -KILL -f "(qemu-system|vhost-device).*$work" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT
mkdir -p "$work/home" "$work/bin"
printf 'generic:\n  flakes_dir: %s/flakes\n  podman_ids_dir: %s/ids\n  firecracker_ids_dir: %s/ids\n' \
    "$work" "$work" "$work" > "$work/flakes.yml"
export FLAKES_CONFIG=$work/flakes.yml HOME=$work/home

# A QEMU guest: busybox with sci as init (installed by the pull), one resume and one
# one-shot flake on it.
vm_flakes() {
    local tree=$work/guest applet
    mkdir -p "$tree"/{mnt,overlayroot,bin,usr/sbin,dev,proc,sys,tmp,etc,root,run}
    cp /bin/busybox "$tree/bin/busybox"
    for applet in sh cat echo ls wc true sleep; do ln -sf busybox "$tree/bin/$applet"; done
    mkfs.ext4 -q -F -d "$tree" "$work/guest.ext4" 32M
    "$BIN_DIR/flake-ctl" firecracker --user pull --name guest --rootfs "$work/guest.ext4" \
        --kernel "$VM_FIXTURES/kernel/vmlinux" >/dev/null
    local name mode
    for name in "$LOAD_TAG-vmr" "$LOAD_TAG-vmo"; do
        mode=(); [ "$name" = "$LOAD_TAG-vmr" ] && mode=(--resume)
        "$BIN_DIR/flake-ctl" firecracker --user register --vm guest --app "$work/bin/$name" \
            --target /bin/sh --vmm qemu --no-net "${mode[@]}" >/dev/null
        printf 'vm:\n  runtime:\n    firecracker:\n      mem_size_mib: 256\n      vcpu_count: 1\n' \
            > "$HOME/.config/flakes/$name.d/small.yaml"
    done
}

if [ "${LOAD_ONLY:-}" != podman ]; then
    if [ -f "$VM_FIXTURES/kernel/vmlinux" ] && [ -f "$FLAKE_SCI" ] \
        && command -v qemu-system-x86_64 >/dev/null; then
        vm_flakes
    else
        echo "SKIP: VM scenarios (needs $VM_FIXTURES/kernel/vmlinux, FLAKE_SCI and qemu)" >&2
    fi
fi

results=$work/results.md
load_before=$(cut -d' ' -f1-3 /proc/loadavg)
python3 scripts/load.py "$results"
mkdir -p "$(dirname "$OUT")" target/load
cp "$results.json" "target/load/load-$(date -u +%Y%m%dT%H%M%S).json"
{
    echo "# Load figures"
    echo
    echo "Written by \`make load\` (scripts/load.sh) on $(date -u +%Y-%m-%d): $(nproc) cores,"
    echo "load average before the run $load_before, binaries in ${BIN_DIR#"$PWD"/},"
    echo "$(podman --version), $(qemu-system-x86_64 --version 2>/dev/null | head -1 || true)"
    echo "(VMs run under software emulation where the host has no hardware KVM)."
    echo
    echo "Every call's output, stderr and exit status are checked; latency is per launch, from"
    echo "the caller's fork to its exit; throughput is calls over the scenario's wall time."
    echo "Each figure is the median over $LOAD_ROUNDS rounds (max: the largest of any round);"
    echo "leftovers are counted in every round. A one-shot VM boots in the first round and"
    echo "saves its state on the way; later rounds start from that state."
    echo "The second table counts what was left before and after: containers by the flake"
    echo "label, host processes of the run (launchers, podman's conmon, VMMs), sockets, lock"
    echo "files and instance directories in the state directory, and the descriptors of the"
    echo "resume instance's agent (on the host) or guest init (counted inside the guest by a"
    echo "call). A resume VM keeps one lock file per guest channel port a call has used, at"
    echo "most one per port; every other count must be equal."
    echo
    cat "$results"
} > "$OUT"
echo "wrote $OUT"
