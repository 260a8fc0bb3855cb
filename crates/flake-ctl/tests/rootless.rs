// SPDX-License-Identifier: MIT
//! User-mode flakes run rootless for an unprivileged user, without sudo.
//!
//! Needs the user prepared by `ROOTLESS_USER=flaketest scripts/setup-host.sh` (done by
//! `make ci`); skipped with a message elsewhere.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::tests_outside_test_module
)]

mod util;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

const USER: &str = "flaketest";

/// Binaries copied where the unprivileged user can run them (the build tree may be private).
fn user_bin_dir() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::Builder::new()
        .prefix("flake-rootless-")
        .tempdir()
        .unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let bin = dir.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    for name in ["flake-ctl", "podman-pilot"] {
        std::fs::copy(util::bin_dir().join(name), bin.join(name)).unwrap();
    }
    let agent = std::env::var_os("FLAKE_AGENT").unwrap();
    std::fs::copy(agent, bin.join("flake-agent")).unwrap();
    (dir, bin)
}

fn as_user(script: &str) -> std::process::Output {
    Command::new("su")
        .args(["-", USER, "-c", script])
        .output()
        .unwrap()
}

fn user_exists() -> bool {
    let exists = Command::new("id")
        .arg(USER)
        .output()
        .is_ok_and(|o| o.status.success());
    if !exists {
        util::skip(&format!(
            "no user {USER} (run ROOTLESS_USER={USER} scripts/setup-host.sh)"
        ));
    }
    exists
}

#[test]
fn user_flakes_run_rootless_one_shot_and_resumed() {
    require_resume!();
    if !user_exists() {
        return;
    }
    let (_keep, bin) = user_bin_dir();
    let ctl = bin.join("flake-ctl");
    let tag = util::unique("ul");
    let script = format!(
        r#"set -e
ctl={ctl}
$ctl podman --user register --container {image} --app "$HOME/bin/{tag}-echo" --target /bin/echo --opt '\--network none' --force
$ctl podman register --user --container {image} --app "$HOME/bin/{tag}-sh" --target /bin/sh --resume --opt '\--network none' --force
"$HOME/bin/{tag}-echo" one-shot as "$(id -un)"
"$HOME/bin/{tag}-sh" -c 'echo kept > /tmp/state'
"$HOME/bin/{tag}-sh" -c 'cat /tmp/state; id -u'
"$HOME/bin/{tag}-sh" -c 'exit 6' || echo "status $?"
"$HOME/bin/{tag}-sh" %remove -c true
$ctl podman --user remove --app "$HOME/bin/{tag}-echo"
$ctl podman --user remove --app "$HOME/bin/{tag}-sh"
"#,
        ctl = ctl.display(),
        image = util::IMAGE,
    );
    let out = as_user(&script);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert!(stdout.contains(&format!("one-shot as {USER}")), "{stdout}");
    assert!(
        stdout.contains("kept\n0\n"),
        "root inside the user's namespace: {stdout}"
    );
    assert!(stdout.contains("status 6"), "{stdout}");
    assert!(!Path::new(&format!("/home/{USER}/bin/{tag}-sh")).exists());
}

#[test]
fn root_flake_called_by_a_user_goes_through_sudo() {
    require_podman!();
    if !user_exists() {
        return;
    }
    let (keep, bin) = user_bin_dir();
    let config = keep.path().join("flakes.yml");
    let flakes = keep.path().join("flakes");
    let text = format!("generic:\n  flakes_dir: {}\n", flakes.display());
    std::fs::write(&config, text).unwrap();
    let name = util::unique("viasudo");
    let app = keep.path().join("apps").join(&name);
    let register = Command::new(bin.join("flake-ctl"))
        .env("FLAKES_CONFIG", &config)
        .args([
            "podman",
            "register",
            "--container",
            util::IMAGE,
            "--target",
            "/bin/sh",
        ])
        .args(["--opt", r"\--network none", "--app"])
        .arg(&app)
        .output()
        .unwrap();
    assert!(register.status.success(), "{register:?}");
    std::fs::set_permissions(
        keep.path().join("apps"),
        std::fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    let script = format!(
        "FLAKES_CONFIG={} {} -c 'id -u; exit 3'",
        config.display(),
        app.display()
    );
    let out = as_user(&script);
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "0\n",
        "root's container: {out:?}"
    );
}

#[test]
fn user_layered_flake_with_includes_runs_rootless() {
    require_podman!();
    if !user_exists() {
        return;
    }
    let (_keep, bin) = user_bin_dir();
    let tag = util::unique("ulayer");
    let script = format!(
        r#"set -e
ctl={ctl}
work=$(mktemp -d)
mkdir -p "$work/delta/usr/bin" "$work/inc"
printf '#!/bin/sh\ncat /etc/layered-note; cat "$1"\n' > "$work/delta/usr/bin/show"
chmod 755 "$work/delta/usr/bin/show"
mkdir -p "$work/layer/etc" && echo "layer as $(id -un)" > "$work/layer/etc/layered-note"
echo included > "$work/inc/file"
tar -C "$work/delta" -c . | podman import -q - localhost/{tag}-delta:1 >/dev/null
tar -C "$work/layer" -c . | podman import -q - localhost/{tag}-layer:1 >/dev/null
$ctl podman --user register --container localhost/{tag}-delta:1 --base {image} \
    --layer localhost/{tag}-layer:1 --include-path "$work/inc" \
    --app "$HOME/bin/{tag}" --target /usr/bin/show --opt '\--network none' --force
"$HOME/bin/{tag}" "$work/inc/file"
$ctl podman --user remove --app "$HOME/bin/{tag}"
podman rmi -f localhost/{tag}-delta:1 localhost/{tag}-layer:1 >/dev/null
podman images --filter label=io.flake-pilot.assembled={tag} -q | xargs -r podman rmi -f >/dev/null
rm -rf "$work"
"#,
        ctl = bin.join("flake-ctl").display(),
        image = util::IMAGE,
    );
    let out = as_user(&script);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert!(
        stdout.contains(&format!("layer as {USER}\nincluded\n")),
        "{stdout}"
    );
}

#[test]
fn user_pulls_a_vm_image_without_root() {
    require_podman!();
    if !user_exists() {
        return;
    }
    let (_keep, bin) = user_bin_dir();
    let tag = util::unique("upull");
    let script = format!(
        r#"set -e
work=$(mktemp -d)
mkdir "$work/kis"
head -c 4096 /dev/urandom > "$work/kis/img.raw"
echo kernel > "$work/kis/img.kernel"
sha256sum "$work/kis/img.raw" | cut -d' ' -f1 > "$work/kis/img.sha256"
tar -cJf "$work/img.tar.xz" -C "$work/kis" .
{ctl} firecracker --user pull --name {tag} --kis-image "file://$work/img.tar.xz"
test -f "$HOME/.config/flakes/firecracker/images/{tag}/rootfs"
stat -c %U "$HOME/.config/flakes/firecracker/images/{tag}/rootfs"
rm -rf "$work" "$HOME/.config/flakes/firecracker/images/{tag}"
"#,
        ctl = bin.join("flake-ctl").display(),
    );
    let out = as_user(&script);
    assert!(out.status.success(), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stdout).ends_with(&format!("{USER}\n")),
        "{out:?}"
    );
}

/// A rootless instance's agent runs under the caller's uid (container root) or a uid of
/// the caller's subuid range (`--user N`: start + N - 1) as the host sees it; the launcher
/// recognises exactly that process, so the second call of each is a warm one.
#[test]
fn rootless_agents_are_recognised_by_their_host_uid() {
    require_resume!();
    if !user_exists() {
        return;
    }
    let (_keep, bin) = user_bin_dir();
    let tag = util::unique("uid");
    let script = format!(
        r#"set -e
ctl={ctl}
$ctl podman register --user --container {image} --app "$HOME/bin/{tag}-r" --target /bin/sh --resume --opt '\--network none' --force >/dev/null
$ctl podman register --user --container {image} --app "$HOME/bin/{tag}-u" --target /bin/sh --resume --opt '\--network none' --opt '\--user 1234' --force >/dev/null
for app in {tag}-r {tag}-u; do
    "$HOME/bin/$app" -c true
    start=$(date +%s%N)
    "$HOME/bin/$app" -c 'id -u'
    echo "ms $(( ($(date +%s%N) - start) / 1000000 ))"
    cat /tmp/flakes/$(id -u)*/$app/agent
    "$HOME/bin/$app" %remove -c true
    $ctl podman --user remove --app "$HOME/bin/$app" >/dev/null
done
"#,
        ctl = bin.join("flake-ctl").display(),
        image = util::IMAGE,
    );
    let out = as_user(&script);
    assert!(out.status.success(), "{out:?}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    let uid = |line: &str| {
        line.split_whitespace()
            .nth(2)
            .unwrap()
            .parse::<u32>()
            .unwrap()
    };
    let ms = |line: &str| line.strip_prefix("ms ").unwrap().parse::<u64>().unwrap();
    let caller = user_uid();
    let subuid_start = subuid_start();
    assert_eq!(lines.len(), 6, "{stdout}");
    assert_eq!((lines[0], uid(lines[2])), ("0", caller), "{stdout}");
    assert_eq!(
        (lines[3], uid(lines[5])),
        ("1234", subuid_start + 1233),
        "{stdout}"
    );
    assert!(ms(lines[1]) < 1000 && ms(lines[4]) < 1000, "warm: {stdout}");
}

fn user_uid() -> u32 {
    let out = Command::new("id").args(["-u", USER]).output().unwrap();
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}

/// The first uid of the user's range in /etc/subuid.
fn subuid_start() -> u32 {
    let text = std::fs::read_to_string("/etc/subuid").unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{USER}:")))
        .and_then(|rest| rest.split(':').next())
        .unwrap()
        .parse()
        .unwrap()
}

/// A user's instance state goes to `$XDG_RUNTIME_DIR/flakes` when that is the user's own
/// 0700 directory, and to the shared `/tmp/flakes` without one. (Which runtime directories
/// count as safe is a unit test of `flakes::host`: pointing rootless podman at another one
/// here would move podman's own runtime state too.)
#[test]
fn user_state_goes_to_the_runtime_dir_when_there_is_one() {
    require_resume!();
    if !user_exists() {
        return;
    }
    let (_keep, bin) = user_bin_dir();
    let tag = util::unique("xdg");
    let script = format!(
        r#"set -e
ctl={ctl}
uid=$(id -u)
$ctl podman register --user --container {image} --app "$HOME/bin/{tag}" --target /bin/sh --resume --opt '\--network none' --force >/dev/null
XDG_RUNTIME_DIR=/run/user/$uid "$HOME/bin/{tag}" -c true
test -f /run/user/$uid/flakes/$uid/{tag}/agent && echo "in runtime dir"
stat -c %a /run/user/$uid/flakes
XDG_RUNTIME_DIR=/run/user/$uid "$HOME/bin/{tag}" %remove -c true
"$HOME/bin/{tag}" -c true
test -d /tmp/flakes/$uid*/{tag} && echo "in /tmp/flakes"
"$HOME/bin/{tag}" %remove -c true
$ctl podman --user remove --app "$HOME/bin/{tag}" >/dev/null
"#,
        ctl = bin.join("flake-ctl").display(),
        image = util::IMAGE,
    );
    let out = as_user(&script);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "in runtime dir\n700\nin /tmp/flakes\n",
        "{out:?}"
    );
}
