#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# Prepares this host for flake-pilot's podman flakes and tests: podman, a test image, a registry.
#
# Written for Debian 12 machines without systemd as PID 1, running as root. Every step first
# checks whether it is needed, so a second run takes about a second. Why each step exists:
# - podman 4.3 with crun fails on hybrid cgroup hosts: runc is configured instead;
# - root may lack CAP_SYS_RESOURCE, so podman's default ulimits cannot be applied: they are
#   capped at what this shell may set;
# - without systemd, podman must use cgroupfs and a file event log;
# - /run survives reboots here, so podman state older than the boot is discarded;
# - the test image is built locally from busybox-static because no public registry is
#   reachable; a loopback registry serves it for pull tests.
#
#   bash scripts/setup-host.sh                       # podman + localhost/busybox + registry
#   ROOTLESS_USER=name bash scripts/setup-host.sh     # also prepare rootless podman for a user
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive

IMAGE=localhost/busybox:latest
REGISTRY=127.0.0.1:5000
REGISTRY_IMAGE=$REGISTRY/flake-pilot/busybox:latest

step() { printf 'setup: %s\n' "$*"; }

[ "$(id -u)" = 0 ] || { echo "setup-host.sh must run as root" >&2; exit 1; }
chmod 1777 /tmp   # seen at 0755 on fresh machines; apt and rootless podman need it sticky

install_packages() {
    local wanted="podman runc conmon fuse-overlayfs slirp4netns uidmap netavark aardvark-dns
        containernetworking-plugins catatonit tini iptables golang-github-containers-common
        skopeo docker-registry busybox-static curl hyperfine strace python3 tmux libcap2-bin
        bsdutils sudo e2fsprogs xz-utils zstd man-db groff-base"
    local missing=() p
    for p in $wanted; do
        dpkg-query -W -f='${db:Status-Status}' "$p" 2>/dev/null | grep -qx installed || missing+=("$p")
    done
    [ ${#missing[@]} -eq 0 ] && return
    step "installing ${missing[*]}"
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

discard_stale_runtime_state() {
    local boot
    boot=$(awk '/^btime/ {print $2}' /proc/stat)
    if [ -e /run/libpod/alive ] && [ "$(stat -c %Y /run/libpod/alive)" -lt "$boot" ]; then
        step "discarding podman runtime state from before the last boot"
        rm -rf /run/libpod /run/containers /run/runc /run/crun
        rm -f /run/netns/netns-* 2>/dev/null || true
    fi
}

# Writes $2 to $1 only when the content differs, so reruns do not touch the file.
write_if_changed() {
    local file=$1 content=$2
    if [ ! -f "$file" ] || [ "$(cat "$file")" != "$content" ]; then
        mkdir -p "$(dirname "$file")"
        printf '%s\n' "$content" > "$file"
        step "wrote $file"
    fi
}

configure_engine() {
    local nofile nproc pid_max
    nofile=$(ulimit -Hn); [ "$nofile" = unlimited ] && nofile=1048576
    nproc=$(ulimit -Hu); [ "$nproc" = unlimited ] && nproc=4194304
    pid_max=$(cat /proc/sys/kernel/pid_max)
    [ "$nproc" -gt "$pid_max" ] && nproc=$pid_max
    [ "$nproc" -gt 32768 ] && nproc=32768
    write_if_changed /etc/containers/containers.conf "# managed by flake-pilot scripts/setup-host.sh
[containers]
default_ulimits = [\"nofile=${nofile}:${nofile}\", \"nproc=${nproc}:${nproc}\"]

[engine]
cgroup_manager = \"cgroupfs\"
events_logger = \"file\"
runtime = \"runc\""
    write_if_changed /etc/containers/registries.conf.d/50-flake-pilot-local.conf '[[registry]]
location = "127.0.0.1:5000"
insecure = true

[[registry]]
location = "localhost:5000"
insecure = true'
}

build_test_image() {
    podman image exists "$IMAGE" && return
    step "building $IMAGE from busybox-static"
    local tree
    tree=$(mktemp -d)
    mkdir -p "$tree"/{bin,etc,root,proc,sys,dev,run,var,tmp}
    chmod 1777 "$tree/tmp"
    cp /bin/busybox "$tree/bin/busybox"
    local applet
    for applet in $("$tree/bin/busybox" --list); do
        [ -e "$tree/bin/$applet" ] || ln -s busybox "$tree/bin/$applet"
    done
    echo 'root:x:0:0:root:/root:/bin/sh' > "$tree/etc/passwd"
    echo 'root:x:0:' > "$tree/etc/group"
    tar --numeric-owner -C "$tree" -c . | podman import -q \
        --change 'CMD ["/bin/sh"]' --change 'ENV PATH=/usr/sbin:/usr/bin:/sbin:/bin' \
        - "$IMAGE" >/dev/null
    rm -rf "$tree"
}

start_registry() {
    if ! curl -fsS -m 2 "http://$REGISTRY/v2/" >/dev/null 2>&1; then
        step "starting a local registry on $REGISTRY"
        mkdir -p /var/lib/flake-pilot-registry /etc/docker/registry
        write_if_changed /etc/docker/registry/flake-pilot.yml "version: 0.1
log:
  level: warn
storage:
  filesystem:
    rootdirectory: /var/lib/flake-pilot-registry
  delete:
    enabled: true
http:
  addr: $REGISTRY"
        setsid nohup docker-registry serve /etc/docker/registry/flake-pilot.yml \
            >/var/log/flake-pilot-registry.log 2>&1 < /dev/null &
        local _
        for _ in $(seq 100); do
            curl -fsS -m 1 "http://$REGISTRY/v2/" >/dev/null 2>&1 && break
            sleep 0.1
        done
        curl -fsS -m 2 "http://$REGISTRY/v2/" >/dev/null
    fi
    if ! skopeo inspect --tls-verify=false "docker://$REGISTRY_IMAGE" >/dev/null 2>&1; then
        step "pushing $REGISTRY_IMAGE"
        podman push -q --tls-verify=false "$IMAGE" "$REGISTRY_IMAGE"
    fi
}

prepare_rootless_user() {
    local user=$1 uid home runtime boot start
    id "$user" >/dev/null 2>&1 || useradd -m -s /bin/bash "$user"
    if ! grep -q "^$user:" /etc/subuid; then
        start=$(( 100000 + 65536 * $(wc -l < /etc/subuid) ))
        usermod --add-subuids "$start-$((start + 65535))" --add-subgids "$start-$((start + 65535))" "$user"
    fi
    chmod 0666 /dev/net/tun /dev/fuse   # 0600 here; slirp4netns and fuse-overlayfs need them
    mount --make-rshared / 2>/dev/null || true
    uid=$(id -u "$user"); home=$(getent passwd "$user" | cut -d: -f6)
    runtime=/run/user/$uid   # nobody creates it without logind
    boot=$(awk '/^btime/ {print $2}' /proc/stat)
    if [ -e "$runtime/libpod/tmp/alive" ] && [ "$(stat -c %Y "$runtime/libpod/tmp/alive")" -lt "$boot" ]; then
        rm -rf "${runtime:?}"/*
    fi
    install -d -m 0700 -o "$user" -g "$user" "$runtime"
    install -d -o "$user" -g "$user" "$home/.config" "$home/.config/containers"
    [ -f "$home/.config/containers/storage.conf" ] || {
        printf '[storage]\ndriver = "overlay"\n' > "$home/.config/containers/storage.conf"
        chown "$user:$user" "$home/.config/containers/storage.conf"
    }
    # Lets the test user call root flakes, which run `sudo podman` (see the README).
    write_if_changed /etc/sudoers.d/flake-pilot-test "$user ALL=(root) NOPASSWD: /usr/bin/podman"
    chmod 0440 /etc/sudoers.d/flake-pilot-test
    if ! su - "$user" -c "XDG_RUNTIME_DIR=$runtime podman image exists $IMAGE"; then
        step "loading $IMAGE into $user's storage"
        local archive
        archive=$(mktemp /tmp/flake-busybox-XXXXXX.tar); chmod 0644 "$archive"
        podman save -q -o "$archive" "$IMAGE"
        su - "$user" -c "XDG_RUNTIME_DIR=$runtime podman load -q -i $archive" >/dev/null
        rm -f "$archive"
    fi
}

install_packages
discard_stale_runtime_state
configure_engine
build_test_image
start_registry
[ -n "${ROOTLESS_USER:-}" ] && prepare_rootless_user "$ROOTLESS_USER"
podman run --rm --network none "$IMAGE" true   # fails loudly when podman is unusable
step "ready: $(podman --version), runtime runc, cgroupfs"
