#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# Launch benchmark: a registered flake against the raw podman command it stands for.
#
# Both are timed in one hyperfine run so that machine noise hits them alike; medians are
# reported because these machines are noisy. The process count per launch comes from strace
# (every successful execve), so extra engine or sudo processes show up as numbers.
# Run as root after `make build` (or set BIN_DIR to the binaries' directory).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

BIN_DIR=${BIN_DIR:-$PWD/target/release}
RUNS=${RUNS:-30}
TRIPLE=$(rustc -vV | sed -n 's/^host: //p')
export FLAKE_AGENT=${FLAKE_AGENT:-$PWD/target/$TRIPLE/release/flake-agent}
IMAGE=localhost/busybox:latest
OUT=target/bench
mkdir -p "$OUT"

work=$(mktemp -d /tmp/flake-bench-XXXXXX)
# searchable by every user: host dependencies are only taken from paths anyone may read
chmod 755 "$work"
export FLAKES_CONFIG=$work/flakes.yml
cleanup() {
    "$BIN_DIR/flake-ctl" podman remove --app "$work/bin/bench-true" >/dev/null 2>&1 || true
    podman rm -f -t 0 flake-bench-warm-u0 >/dev/null 2>&1 || true
    pkill -KILL -f "qemu-system.*$work" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT
printf 'generic:\n  flakes_dir: %s/flakes\n  podman_ids_dir: %s/ids\n' "$work" "$work" > "$FLAKES_CONFIG"

# processes started per launch: all execve calls, and those of podman itself
count() {
    local trace=$work/trace
    strace -f -qq -e trace=execve -o "$trace" "$@" </dev/null >/dev/null 2>&1
    local all podman
    all=$(awk '/execve\(/ && !/ = -1 / {n++} END {print n+0}' "$trace")
    podman=$(awk '/execve\("[^"]*\/podman"/ && !/ = -1 / {n++} END {print n+0}' "$trace")
    echo "$all $podman"
}

if [ "${BENCH_ONLY:-}" != vm ]; then
"$BIN_DIR/flake-ctl" podman register --container "$IMAGE" --app "$work/bin/bench-true" \
    --target /bin/true --opt '\--network none' >/dev/null
app=$work/bin/bench-true

# The raw command with exactly the options the launcher passes (its own choices included).
init_opts=(--init)
command -v tini-static >/dev/null && init_opts+=("--init-path=$(command -v tini-static)")
raw=(podman run --rm --interactive "${init_opts[@]}" --quiet
     --label=io.flake-pilot.flake=bench-true --network none --entrypoint /bin/true "$IMAGE")

hyperfine -N --warmup 3 --runs "$RUNS" --export-json "$OUT/podman-oneshot.json" \
    -n "flake one-shot" "$app" \
    -n "podman run --rm" "${raw[*]}" </dev/null >/dev/null

read -r flake_all flake_podman < <(count "$app")
read -r raw_all raw_podman < <(count "${raw[@]}")

python3 - "$OUT/podman-oneshot.json" "$flake_all" "$flake_podman" "$raw_all" "$raw_podman" <<'PY' | tee "$OUT/podman-oneshot.md"
import json, sys
results = json.load(open(sys.argv[1]))["results"]
counts = {"flake one-shot": (sys.argv[2], sys.argv[3]), "podman run --rm": (sys.argv[4], sys.argv[5])}
raw = next(r for r in results if r["command"] == "podman run --rm")["median"]
print("| launch | median | ratio to raw | podman execs | all execs |")
print("|---|---:|---:|---:|---:|")
for r in results:
    total, podman = counts[r["command"]]
    print(f"| {r['command']} | {r['median']*1000:.1f} ms | {r['median']/raw:.3f} | {podman} | {total} |")
PY

# --- resume: a warm call into the running instance against podman exec into the same one
"$BIN_DIR/flake-ctl" podman register --container "$IMAGE" --app "$work/bin/bench-warm" \
    --target /bin/true --resume --opt '\--network none' >/dev/null
warm=$work/bin/bench-warm
cold_runs=()
for _ in 1 2 3 4 5; do
    podman rm -f -t 0 flake-bench-warm-u0 >/dev/null 2>&1 || true
    start=$(date +%s%N); "$warm" </dev/null; end=$(date +%s%N)
    cold_runs+=($(( (end - start) / 1000 )))
done
hyperfine -N --warmup 5 --runs "$RUNS" --export-json "$OUT/podman-resume.json" \
    -n "flake resume, warm call" "$warm" \
    -n "podman exec" "podman exec -i flake-bench-warm-u0 /bin/true" </dev/null >/dev/null
read -r warm_all warm_podman < <(count "$warm")
read -r exec_all exec_podman < <(count podman exec -i flake-bench-warm-u0 /bin/true)

python3 - "$OUT/podman-resume.json" "$warm_all" "$warm_podman" "$exec_all" "$exec_podman" "${cold_runs[@]}" <<'PY' | tee "$OUT/podman-resume.md"
import json, statistics, sys
results = json.load(open(sys.argv[1]))["results"]
counts = {"flake resume, warm call": (sys.argv[2], sys.argv[3]), "podman exec": (sys.argv[4], sys.argv[5])}
cold = statistics.median(int(x) for x in sys.argv[6:]) / 1000
raw = next(r for r in results if r["command"] == "podman exec")["median"]
print()
print("| call | median | ratio to podman exec | podman execs | all execs |")
print("|---|---:|---:|---:|---:|")
for r in results:
    total, podman = counts[r["command"]]
    print(f"| {r['command']} | {r['median']*1000:.1f} ms | {r['median']/raw:.3f} | {podman} | {total} |")
print(f"| flake resume, cold first call (5 runs) | {cold:.1f} ms | {cold/1000/raw:.3f} | - | - |")
PY

# --- layered: second launch of a base + layer + delta flake whose delta lists 200 host files
#     in /removed, against a plain one-shot flake, then the first launch (assembly) for
#     growing layer sizes
HOST_FILES=${HOST_FILES:-200}
mkdir -p "$work/tree/delta/opt" "$work/tree/layer/opt" "$work/hostdeps"
echo delta > "$work/tree/delta/opt/delta"
echo layer > "$work/tree/layer/opt/layer"
for i in $(seq -w 1 "$HOST_FILES"); do echo "host dependency $i" > "$work/hostdeps/lib$i.so"; done
ls -d "$work"/hostdeps/lib*.so > "$work/tree/delta/removed"
tar -C "$work/tree/delta" -c . | podman import -q - localhost/flake-bench-delta:1 >/dev/null
tar -C "$work/tree/layer" -c . | podman import -q - localhost/flake-bench-layer:1 >/dev/null
layered_cleanup() {
    podman rmi -f localhost/flake-bench-delta:1 localhost/flake-bench-layer:1 >/dev/null 2>&1 || true
    podman rmi -f localhost/flake-bench-big:1 >/dev/null 2>&1 || true
}
trap 'layered_cleanup; cleanup' EXIT
"$BIN_DIR/flake-ctl" podman register --container localhost/flake-bench-delta:1 --base "$IMAGE" \
    --layer localhost/flake-bench-layer:1 --app "$work/bin/bench-layered" --target /bin/true \
    --opt '\--network none' >/dev/null
layered=$work/bin/bench-layered
"$layered" </dev/null
hyperfine -N --warmup 3 --runs "$RUNS" --export-json "$OUT/podman-layered.json" \
    -n "layered flake ($HOST_FILES host files), second launch" "$layered" \
    -n "plain one-shot flake" "$app" </dev/null >/dev/null
read -r layered_all layered_podman < <(count "$layered")

sizes=()
for mb in 1 50 500; do
    mkdir -p "$work/tree/big/opt"
    head -c $((mb * 1024 * 1024)) /dev/urandom > "$work/tree/big/opt/blob"
    tar -C "$work/tree/big" -c . | podman import -q - localhost/flake-bench-big:1 >/dev/null
    rm -rf "$work/tree/big"
    "$BIN_DIR/flake-ctl" podman register --container localhost/flake-bench-delta:1 --base "$IMAGE" \
        --layer localhost/flake-bench-big:1 --app "$work/bin/bench-big" --target /bin/true \
        --opt '\--network none' --force >/dev/null
    start=$(date +%s%N); "$work/bin/bench-big" </dev/null; end=$(date +%s%N)
    sizes+=("$mb:$(( (end - start) / 1000 ))")
    "$BIN_DIR/flake-ctl" podman remove --app "$work/bin/bench-big" >/dev/null
    podman rmi -f localhost/flake-bench-big:1 >/dev/null
done
"$BIN_DIR/flake-ctl" podman remove --app "$work/bin/bench-layered" >/dev/null

python3 - "$OUT/podman-layered.json" "$layered_all" "$layered_podman" "${sizes[@]}" <<'PY' | tee "$OUT/podman-layered.md"
import json, sys
results = json.load(open(sys.argv[1]))["results"]
plain = next(r for r in results if r["command"] == "plain one-shot flake")["median"]
print()
print("| launch | median | ratio to plain one-shot | podman execs |")
print("|---|---:|---:|---:|")
for r in results:
    podman = sys.argv[3] if r["command"].startswith("layered") else "2"
    print(f"| {r['command']} | {r['median']*1000:.1f} ms | {r['median']/plain:.3f} | {podman} |")
print()
print("| layer content | first launch (assembly + run) |")
print("|---:|---:|")
for item in sys.argv[4:]:
    mb, us = item.split(":")
    print(f"| {mb} MB | {int(us)/1000:.0f} ms |")
PY

fi

# --- VM flakes (QEMU microvm, TCG): a one-shot call through firecracker-pilot against the raw
#     VMM booting the same kernel and rootfs straight into the same program as init, and a
#     warm call into a running resume VM
FIXTURES=${FLAKE_VM_FIXTURES:-/var/cache/flake-pilot-vm}
SCI_BIN=${FLAKE_SCI:-$PWD/target/$TRIPLE/release/sci}
if [ -s "$FIXTURES/kernel/vmlinux" ] && [ -x "$SCI_BIN" ] && command -v qemu-system-x86_64 >/dev/null; then
    guest=$work/guest
    mkdir -p "$guest/bin" "$guest/usr/sbin"
    cp /bin/busybox "$guest/bin/busybox"
    for applet in sh true; do ln -s busybox "$guest/bin/$applet"; done
    mkfs.ext4 -q -F -d "$guest" "$work/guest.ext4" 32M >/dev/null
    FLAKE_SCI=$SCI_BIN "$BIN_DIR/flake-ctl" firecracker pull --name flake-bench --force \
        --rootfs "$work/guest.ext4" --kernel "$FIXTURES/kernel/vmlinux" >/dev/null
    small='vm:\n  runtime:\n    firecracker:\n      mem_size_mib: 256\n      vcpu_count: 1\n'
    for app in bench-vm bench-vmres; do
        extra=()
        [ "$app" = bench-vmres ] && extra=(--resume)
        "$BIN_DIR/flake-ctl" firecracker register --vm flake-bench --app "$work/bin/$app" \
            --target /bin/true --vmm qemu --no-net "${extra[@]}" >/dev/null
        mkdir -p "$work/flakes/$app.d"
        printf "$small" > "$work/flakes/$app.d/small.yaml"
    done
    image=/var/lib/firecracker/images/flake-bench
    # The same accelerator on both sides (software emulation unless set otherwise).
    export FLAKE_QEMU_ACCEL=${FLAKE_QEMU_ACCEL:-tcg}
    raw_vm="qemu-system-x86_64 -M microvm,x-option-roms=off,pit=on,pic=on,rtc=on,acpi=off -accel $FLAKE_QEMU_ACCEL -cpu max -m 256 -smp 1 -nodefaults -no-user-config -nographic -display none -no-reboot -serial null -kernel $image/kernel -append 'console=ttyS0 root=/dev/vda ro quiet init=/bin/true panic=-1 reboot=t' -drive id=root,file=$image/rootfs,format=raw,if=none,readonly=on -device virtio-blk-device,drive=root"
    # Round-robin, not hyperfine: a drift of the machine over the runs hits all alike. The
    # warm-up launch saves the VM's state; the flake's launches restore it from then on, so
    # the same launch booted (saved states off) is timed beside them.
    python3 scripts/interleave.py "${VM_RUNS:-20}" 1 "$OUT/vm-oneshot.json" \
        "VM flake one-shot (qemu $FLAKE_QEMU_ACCEL)" "$work/bin/bench-vm" \
        "VM flake one-shot, booted (saved states off)" "env FLAKE_VM_SAVED_STATES=off $work/bin/bench-vm" \
        "raw qemu boot to the same program" "$raw_vm"
    # A flake's first launch boots and saves its VM: timed with the state removed each run.
    states=${HOME:-/root}/.config/flakes/firecracker/states
    hyperfine -N --runs 5 --export-json "$OUT/vm-first.json" \
        --prepare "sh -c 'rm -f $states/bench-vm-*.vmstate'" \
        -n "VM flake one-shot, first launch (boots and saves)" "$work/bin/bench-vm" \
        </dev/null >/dev/null
    read -r vm_all _ < <(count "$work/bin/bench-vm")
    read -r vm_booted _ < <(FLAKE_VM_SAVED_STATES=off count "$work/bin/bench-vm")
    rm -f "$states"/bench-vm-*.vmstate
    read -r vm_first _ < <(count "$work/bin/bench-vm")
    "$work/bin/bench-vmres" </dev/null
    hyperfine -N --warmup 5 --runs "$RUNS" --export-json "$OUT/vm-resume.json" \
        -n "VM flake resume, warm call" "$work/bin/bench-vmres" </dev/null >/dev/null
    read -r vmres_all _ < <(count "$work/bin/bench-vmres")
    "$work/bin/bench-vmres" %remove </dev/null
    "$BIN_DIR/flake-ctl" firecracker remove --vm flake-bench >/dev/null
    python3 - "$OUT" "$vm_all" "$vm_booted" "$vm_first" "$vmres_all" <<'PY' | tee "$OUT/vm.md"
import json, statistics, sys
out = sys.argv[1]
oneshot = json.load(open(f"{out}/vm-oneshot.json"))["results"]
oneshot += json.load(open(f"{out}/vm-first.json"))["results"]
resume = json.load(open(f"{out}/vm-resume.json"))["results"][0]
execs = dict(zip(["restored", "booted", "first"], sys.argv[2:5]))
def kind(command):
    if command.startswith("raw"):
        return "raw"
    return "booted" if "booted" in command else "first" if "first" in command else "restored"
raw = next(r for r in oneshot if kind(r["command"]) == "raw")
print()
print("| VM launch | median | ratio to raw VMM | execs |")
print("|---|---:|---:|---:|")
for r in oneshot:
    count = execs.get(kind(r["command"]), "1")
    print(f"| {r['command']} | {r['median']*1000:.0f} ms | {r['median']/raw['median']:.3f} | {count} |")
print(f"| {resume['command']} | {resume['median']*1000:.1f} ms | - | {sys.argv[5]} |")
# The interleaved commands ran one after the other in every round: the medians of each
# round's ratio and difference see less of the machine's drift than a ratio of medians.
print()
for r in oneshot:
    if kind(r["command"]) in ("restored", "booted"):
        ratios = statistics.median(a / b for a, b in zip(r["times"], raw["times"]))
        extra = statistics.median(a - b for a, b in zip(r["times"], raw["times"]))
        print(f"Per round, {r['command']} against the raw VMM: median ratio {ratios:.3f}, "
              f"median difference {extra*1000:.0f} ms ({len(r['times'])} rounds).")
PY
else
    echo "VM benchmark skipped: needs make vm-fixtures, make agent and qemu"
fi
