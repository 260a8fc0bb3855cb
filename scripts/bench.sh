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
# This run's VM images (their names carry the run's id, as its flakes and saved states do).
vm_images=()
run_id=$(printf '%s' "${work##*-}" | tr 'A-Z' 'a-z')
states=${HOME:-/root}/.config/flakes/firecracker/states
cleanup() {
    local status=${exit_status:-$?}
    # A failed run keeps its VMs' console and VMM logs (the error names the instance).
    if [ "$status" != 0 ] && compgen -G "$work/vm/*/.vm/*/*.log" >/dev/null; then
        rm -rf "$OUT/vm-logs"
        for log in "$work"/vm/*/.vm/*/*.log; do
            mkdir -p "$OUT/vm-logs/$(basename "$(dirname "$log")")"
            cp "$log" "$OUT/vm-logs/$(basename "$(dirname "$log")")/"
        done
        echo "the VMs' logs are in $OUT/vm-logs" >&2
    fi
    "$BIN_DIR/flake-ctl" podman remove --app "$work/bin/bench-true" >/dev/null 2>&1 || true
    podman rm -f -t 0 flake-bench-warm-u0 >/dev/null 2>&1 || true
    # VM instances live in the run's directory: this ends its VMMs only (their vsock
    # devices end with them)
    pkill -KILL -f "qemu-system.*$work" 2>/dev/null || true
    for image in "${vm_images[@]}"; do
        "$BIN_DIR/flake-ctl" firecracker remove --vm "$image" >/dev/null 2>&1 || true
    done
    rm -f "$states/bench-vm-$run_id-"*.vmstate
    rm -rf "$work"
}
trap cleanup EXIT
printf 'generic:\n  flakes_dir: %s/flakes\n  podman_ids_dir: %s/ids\n  firecracker_ids_dir: %s/vm\n' \
    "$work" "$work" "$work" > "$FLAKES_CONFIG"

# processes started per launch: all execve calls, and those of podman itself
count() {
    local trace=$work/trace
    strace -f -qq -e trace=execve -o "$trace" "$@" </dev/null >/dev/null 2>&1
    local all podman
    all=$(awk '/execve\(/ && !/ = -1 / {n++} END {print n+0}' "$trace")
    podman=$(awk '/execve\("[^"]*\/podman"/ && !/ = -1 / {n++} END {print n+0}' "$trace")
    echo "$all $podman"
}

# what one call costs in the launcher: processes started, connect() and flock() calls, and
# syscalls in all ("EXECS/CONNECTS/FLOCKS/SYSCALLS")
call_cost() {
    local trace=$work/trace
    strace -f -qq -o "$trace" "$@" </dev/null >/dev/null 2>&1
    awk '/ (\+\+\+|---) / || /resumed>/ {next}
         {n++} /execve\(/ && !/ = -1 / {e++} /connect\(/ {c++} /flock\(/ {f++}
         END {printf "%d/%d/%d/%d\n", e, c, f, n}' "$trace"
}

# processes of the running VM of instance NAME (its VMM and the VMM's children) and their
# resident memory in KiB ("PROCESSES/RSS")
vm_processes() {
    local pidfile=("$work"/vm/*/.vm/"$1"/vmm.pid) vmm p n=0 rss=0
    read -r vmm _ < "${pidfile[0]}"
    for p in "$vmm" $(ps -o pid= --ppid "$vmm"); do
        n=$((n + 1))
        rss=$((rss + $(awk '/^VmRSS:/ {print $2}' "/proc/$p/status")))
    done
    echo "$n/$rss"
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
trap 'exit_status=$?; layered_cleanup; cleanup' EXIT
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

# --- VM flakes (QEMU microvm, TCG): one-shot calls through firecracker-pilot against the raw
#     VMM booting the same kernel and rootfs straight into the same program as init, and warm
#     calls into running resume VMs, over each guest channel QEMU has (docs/channels.md):
#     the plain console, vsock (vhost-device-vsock) and virtio console ports
FIXTURES=${FLAKE_VM_FIXTURES:-/var/cache/flake-pilot-vm}
SCI_BIN=${FLAKE_SCI:-$PWD/target/$TRIPLE/release/sci}
if [ -s "$FIXTURES/kernel/vmlinux" ] && [ -x "$SCI_BIN" ] && command -v qemu-system-x86_64 >/dev/null; then
    # QEMU's vsock device comes with the fixtures.
    [ -d "$FIXTURES/vhost-user" ] && export PATH=$FIXTURES/vhost-user:$PATH
    if ! command -v vhost-device-vsock >/dev/null; then
        echo "SKIP: VM calls over vsock: vhost-device-vsock is not installed (make vm-fixtures)"
    fi
    has_vsock() { command -v vhost-device-vsock >/dev/null; }
    guest=$work/guest
    mkdir -p "$guest/bin" "$guest/usr/sbin"
    cp /bin/busybox "$guest/bin/busybox"
    for applet in sh true; do ln -s busybox "$guest/bin/$applet"; done
    mkfs.ext4 -q -F -d "$guest" "$work/guest.ext4" 32M >/dev/null
    # The second image is the same rootfs with an init the launcher must reach over ports:
    # its guest-channel file names no console and no vsock announcement.
    vm=flake-bench-$run_id
    vm_ports=flake-bench-ports-$run_id
    for image in "$vm" "$vm_ports"; do
        vm_images+=("$image")
        FLAKE_SCI=$SCI_BIN "$BIN_DIR/flake-ctl" firecracker pull --name "$image" --force \
            --rootfs "$work/guest.ext4" --kernel "$FIXTURES/kernel/vmlinux" >/dev/null
    done
    : > "/var/lib/firecracker/images/$vm_ports/guest-channel"
    small='vm:\n  runtime:\n    firecracker:\n      mem_size_mib: 256\n      vcpu_count: 1\n'
    # one-shot, one-shot on the ports image, resume over vsock, resume over ports
    oneshot=$work/bin/bench-vm-$run_id
    oneshot_ports=$work/bin/bench-vmports-$run_id
    res_vsock=$work/bin/bench-vmres-$run_id
    res_ports=$work/bin/bench-vmresp-$run_id
    for app in "$oneshot" "$oneshot_ports" "$res_vsock" "$res_ports"; do
        case $app in
            "$oneshot") extra=(--vm "$vm") ;;
            "$oneshot_ports") extra=(--vm "$vm_ports") ;;
            *) extra=(--vm "$vm" --resume) ;;
        esac
        "$BIN_DIR/flake-ctl" firecracker register "${extra[@]}" --app "$app" \
            --target /bin/true --vmm qemu --no-net >/dev/null
        mkdir -p "$work/flakes/${app##*/}.d"
        printf "$small" > "$work/flakes/${app##*/}.d/small.yaml"
    done
    image=/var/lib/firecracker/images/$vm
    # The same accelerator on both sides (software emulation unless set otherwise).
    export FLAKE_QEMU_ACCEL=${FLAKE_QEMU_ACCEL:-tcg}
    raw_vm="qemu-system-x86_64 -M microvm,x-option-roms=off,pit=on,pic=on,rtc=on,acpi=off -accel $FLAKE_QEMU_ACCEL -cpu max -m 256 -smp 1 -nodefaults -no-user-config -nographic -display none -no-reboot -serial null -kernel $image/kernel -append 'console=ttyS0 root=/dev/vda ro quiet init=/bin/true panic=-1 reboot=t' -drive id=root,file=$image/rootfs,format=raw,if=none,readonly=on -device virtio-blk-device,drive=root"
    # Round-robin, not hyperfine: a drift of the machine over the runs hits all alike. The
    # warm-up launch saves the VM's state; the flake's default launches restore it from then
    # on, so the same launch booted (saved states off) over each channel is timed beside them.
    booted=FLAKE_VM_SAVED_STATES=off
    rows=("VM flake one-shot (qemu $FLAKE_QEMU_ACCEL)" "$oneshot"
          "VM flake one-shot, booted over the console (saved states off)" "$booted $oneshot")
    has_vsock && rows+=("VM flake one-shot, booted over vsock (saved states off)"
                        "$booted FLAKE_QEMU_CHANNEL=vsock $oneshot")
    rows+=("VM flake one-shot, booted over ports (saved states off)"
           "$booted FLAKE_QEMU_CHANNEL=virtio $oneshot_ports"
           "raw qemu boot to the same program" "$raw_vm")
    python3 scripts/interleave.py "${VM_RUNS:-20}" 1 "$OUT/vm-oneshot.json" "${rows[@]}"
    # A flake's first launch boots and saves its VM: timed with the state removed each run.
    hyperfine -N --runs 5 --export-json "$OUT/vm-first.json" \
        --prepare "sh -c 'rm -f $states/bench-vm-$run_id-*.vmstate'" \
        -n "VM flake one-shot, first launch (boots and saves)" "$oneshot" \
        </dev/null >/dev/null
    # Processes started per launch (execs), as the call costs below count them.
    costs=("restored=$(count "$oneshot" | cut -d' ' -f1)"
           "console=$(FLAKE_VM_SAVED_STATES=off count "$oneshot" | cut -d' ' -f1)"
           "ports=$(FLAKE_VM_SAVED_STATES=off FLAKE_QEMU_CHANNEL=virtio count "$oneshot_ports" | cut -d' ' -f1)")
    has_vsock && costs+=("vsock=$(FLAKE_VM_SAVED_STATES=off FLAKE_QEMU_CHANNEL=vsock count "$oneshot" | cut -d' ' -f1)")
    rm -f "$states/bench-vm-$run_id-"*.vmstate
    costs+=("first=$(count "$oneshot" | cut -d' ' -f1)")

    # Warm calls: each channel has a resume VM of its own, both running before the timing;
    # one call at a time, then VM_CALLS_AT_ONCE calls at once (more than the VM's ports).
    # A channel's command is CHANNEL_ASSIGNMENT APP.
    at_once=${VM_CALLS_AT_ONCE:-8}
    channels=()
    has_vsock && channels+=("vsock" "FLAKE_QEMU_CHANNEL=vsock $res_vsock")
    channels+=("ports" "FLAKE_QEMU_CHANNEL=virtio $res_ports")
    rows=()
    together=()
    for ((i = 0; i < ${#channels[@]}; i += 2)); do
        read -r assignment app <<< "${channels[i + 1]}"
        env "$assignment" "$app" </dev/null
        rows+=("VM flake resume, warm call over ${channels[i]}" "${channels[i + 1]}")
        together+=("VM flake resume, $at_once warm calls at once over ${channels[i]}"
                   "$assignment sh -c 'seq $at_once | xargs -P $at_once -I{} \"\$0\"' $app")
    done
    # Apart: a burst of calls at once slows the single calls after it (over vsock), which
    # would blur the comparison of the single calls.
    python3 scripts/interleave.py "$RUNS" 5 "$OUT/vm-resume.json" "${rows[@]}"
    python3 scripts/interleave.py "$RUNS" 2 "$OUT/vm-resume-at-once.json" "${together[@]}"
    for ((i = 0; i < ${#channels[@]}; i += 2)); do
        read -r assignment app <<< "${channels[i + 1]}"
        costs+=("resume_${channels[i]}=$(export "$assignment"; call_cost "$app")"
                "vm_${channels[i]}=$(vm_processes "${app##*/}")")
        env "$assignment" "$app" %remove </dev/null
    done
    python3 scripts/bench-vm-summary.py "$OUT" "${costs[@]}" | tee "$OUT/vm.md"
else
    echo "VM benchmark skipped: needs make vm-fixtures, make agent and qemu"
fi
