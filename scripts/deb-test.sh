#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# End-to-end check of the Debian package: builds it, checks its metadata, installs it with
# dpkg into a fresh root directory, registers and runs flakes with the installed binaries
# against the real podman (the launchers must find the agent in ../libexec/flake-pilot),
# then purges it and checks that what the admin made is still there.
#
# A separate script, not part of `make test`: it needs a release build and root, and the
# whole package build takes longer than the rest of an incremental test run.
# SKIP lines name what could not be checked here; FLAKE_TEST_REQUIRE_PODMAN=1 turns a
# missing podman into a failure.
set -euo pipefail
umask 022

cd "$(dirname "$0")/.."
fail() { echo "deb-test: FAIL: $*" >&2; exit 1; }
ok() { echo "deb-test: ok: $*"; }

for tool in dpkg dpkg-deb; do
    command -v "$tool" >/dev/null || { echo "deb-test: SKIP: $tool not found"; exit 0; }
done
[ "$(id -u)" = 0 ] || { echo "deb-test: SKIP: dpkg --root needs root"; exit 0; }

deb=$(bash scripts/deb.sh)
[ -f "$deb" ] || fail "no package at $deb"
ok "built $deb ($(du -h "$deb" | cut -f1))"

# --- metadata -------------------------------------------------------------------------
field() { dpkg-deb -f "$deb" "$1"; }
[ "$(field Package)" = flake-pilot ] || fail "Package is $(field Package)"
field Depends | grep -qw podman || fail "Depends lacks podman: $(field Depends)"
for r in qemu-system-x86 tini firecracker; do
    field Recommends | grep -qw "$r" || fail "Recommends lacks $r: $(field Recommends)"
done
conffiles=$(dpkg-deb --ctrl-tarfile "$deb" | tar -xO ./conffiles)
for c in /etc/flakes.yml /etc/flakes/container-flake.yaml /etc/flakes/firecracker-flake.yaml; do
    grep -qx "$c" <<<"$conffiles" || fail "$c is not a conffile"
done
# Everything but /etc belongs under /usr, owned by root.
if dpkg-deb -c "$deb" | awk '{print $2, $6}' | grep -v '^root/root ' | grep .; then
    fail "files not owned by root/root"
fi
if dpkg-deb -c "$deb" | awk '{print $6}' | grep -vE '^\./(|etc/.*|usr/.*)$' | grep .; then
    fail "files outside /etc and /usr"
fi
ok "control fields, conffiles, ownership"

# --- install into a fresh root --------------------------------------------------------
root=$(mktemp -d /tmp/flake-deb-root.XXXXXX)
name=debtest-$$
cleanup() {
    for f in "$name" "$name-r"; do
        podman ps -aq --filter "label=io.flake-pilot.flake=$f" 2>/dev/null |
            xargs -r podman rm -f -t 0 >/dev/null 2>&1 || true
    done
    rm -rf "$root"
}
trap cleanup EXIT
mkdir -p "$root/var/lib/dpkg/info" "$root/var/lib/dpkg/updates" "$root/var/log"
touch "$root/var/lib/dpkg/status" "$root/var/lib/dpkg/available"
# The root has no shell to chroot into: maintainer scripts run outside with DPKG_ROOT set.
dpkgr() { dpkg --root="$root" --force-script-chrootless --force-depends "$@"; }
dpkgr -i "$deb" >/dev/null
[ "$(dpkg --root="$root" -s flake-pilot | sed -n 's/^Status: //p')" = "install ok installed" ] ||
    fail "package not installed"
for f in usr/bin/flake-ctl usr/bin/podman-pilot usr/bin/firecracker-pilot \
    usr/libexec/flake-pilot/flake-agent usr/libexec/flake-pilot/sci; do
    [ -x "$root/$f" ] || fail "/$f missing or not executable"
done
for f in etc/flakes.yml etc/flakes/container-flake.yaml etc/flakes/firecracker-flake.yaml \
    usr/share/flake-pilot/flake.schema.json usr/share/bash-completion/completions/flake-ctl \
    usr/share/zsh/site-functions/_flake-ctl usr/share/fish/vendor_completions.d/flake-ctl.fish \
    usr/share/man/man1/flake-ctl.1.gz usr/share/man/man1/podman-pilot.1.gz \
    usr/share/man/man1/firecracker-pilot.1.gz usr/share/man/man5/flakes.5.gz \
    usr/share/man/man8/sci.8.gz; do
    [ -f "$root/$f" ] || fail "/$f missing"
done
# The agent and sci run inside images without a libc, so they must not need a loader.
for f in flake-agent sci; do
    if readelf -l "$root/usr/libexec/flake-pilot/$f" 2>/dev/null | grep -q INTERP; then
        fail "$f is dynamically linked"
    fi
done
ok "installed into $root"

ctl=$root/usr/bin/flake-ctl
"$ctl" --version | grep -q "$(dpkg-deb -f "$deb" Version)" || fail "flake-ctl --version"
# The shipped default config and templates are valid as they are.
FLAKES_CONFIG=$root/etc/flakes.yml "$ctl" list --format json >/dev/null ||
    fail "the shipped /etc/flakes.yml is refused"
ok "installed flake-ctl runs, shipped /etc/flakes.yml accepted"

# --- a flake from the installed files -------------------------------------------------
if ! command -v podman >/dev/null || ! podman image exists localhost/busybox:latest; then
    [ "${FLAKE_TEST_REQUIRE_PODMAN:-}" = 1 ] && fail "podman or localhost/busybox missing"
    echo "deb-test: SKIP: podman or localhost/busybox missing, no flake run"
else
    # An admin's own config and flakes inside the root, so nothing touches the host's.
    export FLAKES_CONFIG=$root/etc/flakes/admin.yml FLAKES_TEMPLATE_DIR=$root/etc/flakes
    unset FLAKE_AGENT FLAKE_SCI
    printf 'generic:\n  flakes_dir: %s\n  podman_ids_dir: %s\n' \
        "$root/usr/share/flakes" "$root/run/flakes" > "$FLAKES_CONFIG"
    "$ctl" podman register --container localhost/busybox --app "$root/usr/bin/$name" \
        --target /bin/echo >/dev/null
    [ "$(readlink -f "$root/usr/bin/$name")" = "$root/usr/bin/podman-pilot" ] ||
        fail "app link points to $(readlink -f "$root/usr/bin/$name"), not the installed launcher"
    out=$("$root/usr/bin/$name" hello-deb)
    [ "$out" = hello-deb ] || fail "flake printed '$out'"
    ok "one-shot flake registered and run with the installed launcher"
    # A resume flake needs the agent, found only through ../libexec/flake-pilot.
    "$ctl" podman register --container localhost/busybox --app "$root/usr/bin/$name-r" \
        --target /bin/echo --resume >/dev/null
    for i in 1 2; do
        out=$("$root/usr/bin/$name-r" "call-$i")
        [ "$out" = "call-$i" ] || fail "resume flake call $i printed '$out'"
    done
    ok "resume flake ran twice with the agent from /usr/libexec/flake-pilot"
fi

# --- reinstall keeps the admin's conffile edits ---------------------------------------
echo "# edited by the admin" >> "$root/etc/flakes.yml"
dpkgr -i "$deb" </dev/null >/dev/null
grep -qx "# edited by the admin" "$root/etc/flakes.yml" || fail "reinstall replaced /etc/flakes.yml"
ok "reinstall kept the edited /etc/flakes.yml"

# --- purge ----------------------------------------------------------------------------
echo "storage settings of the admin" > "$root/etc/flakes/storage.conf"
dpkgr --purge flake-pilot >/dev/null
dpkg --root="$root" -s flake-pilot >/dev/null 2>&1 && fail "package still known after purge"
for f in usr/bin/flake-ctl usr/libexec/flake-pilot/flake-agent etc/flakes.yml \
    etc/flakes/container-flake.yaml etc/flakes/firecracker-flake.yaml; do
    [ ! -e "$root/$f" ] || fail "/$f left after purge"
done
[ -f "$root/etc/flakes/storage.conf" ] || fail "purge removed the admin's /etc/flakes/storage.conf"
if [ -n "${FLAKES_CONFIG:-}" ]; then
    [ -f "$FLAKES_CONFIG" ] || fail "purge removed the admin's config"
    for f in "$name" "$name-r"; do
        [ -f "$root/usr/share/flakes/$f.yaml" ] || fail "purge removed the flake $f.yaml"
        [ -L "$root/usr/bin/$f" ] || fail "purge removed the app link of $f"
    done
fi
ok "purge removed the package's files and kept the admin's"
echo "deb-test: PASS"
