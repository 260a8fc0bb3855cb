// SPDX-License-Identifier: MIT
//! Instance state directories and the agent socket against hostile local users, with real
//! podman: a base directory another user owns or may write to, a directory swapped for a
//! symlink during calls, a squatted per-user directory, a socket served by an impostor,
//! and instance names too long for a socket path.
//!
//! The hostile user is `flaketest` (made by `ROOTLESS_USER=flaketest scripts/setup-host.sh`);
//! its processes are python3 scripts started with `runuser`.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::tests_outside_test_module
)]

mod util;

use std::io::{BufRead, BufReader};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use util::{unique, World};

const USER: &str = "flaketest";

/// The hostile user's uid, or a visible skip.
fn hostile_uid() -> Option<u32> {
    let out = Command::new("id").args(["-u", USER]).output().unwrap();
    if !out.status.success() {
        util::skip(&format!(
            "no user {USER} (run ROOTLESS_USER={USER} scripts/setup-host.sh)"
        ));
        return None;
    }
    Some(String::from_utf8_lossy(&out.stdout).trim().parse().unwrap())
}

/// Points the world's instance state at `ids`.
fn use_ids_dir(w: &World, ids: &Path) {
    let text = format!(
        "generic:\n  flakes_dir: {}\n  podman_ids_dir: {}\n  firecracker_ids_dir: {}\n",
        w.flakes.display(),
        ids.display(),
        ids.display()
    );
    std::fs::write(&w.config, text).unwrap();
}

/// A directory every user can enter (the world's own is private to root).
fn open_tempdir(prefix: &str) -> tempfile::TempDir {
    let dir = tempfile::Builder::new().prefix(prefix).tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    dir
}

fn chown(path: &Path, uid: u32) {
    std::os::unix::fs::chown(path, Some(uid), None).unwrap();
}

/// Starts `python3 -c script args...` as the hostile user and waits for its `ready` line.
fn hostile(script: &str, args: &[&Path]) -> Child {
    let mut child = Command::new("runuser")
        .args(["-u", USER, "--", "python3", "-c", script])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    wait_ready(&mut child);
    child
}

fn wait_ready(child: &mut Child) {
    let mut line = String::new();
    BufReader::new(child.stdout.as_mut().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line, "ready\n", "helper did not start");
}

/// Ends a helper: closing its stdin ends it, and `runuser` with it.
fn stop(mut child: Child) {
    drop(child.stdin.take());
    let _ = child.wait();
}

/// Lines of a helper's log, or none.
fn log_lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

/// Listens on a fake agent socket and logs every connection and every byte count it gets:
/// `connected`, `got N`.
/// Every helper ends when its stdin closes (killing `runuser` would leave it running).
const FAKE_AGENT: &str = r#"
import os, socket, sys, threading
def exit_on_eof():
    sys.stdin.read()
    os._exit(0)
threading.Thread(target=exit_on_eof, daemon=True).start()
def serve(sock):
    while True:
        conn, _ = sock.accept()
        with open(log, "a") as f:
            f.write("connected\n")
        data = conn.recv(65536)
        with open(log, "a") as f:
            f.write("got %d\n" % len(data))
        conn.close()
def listen(path, uid):
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(path)
    os.chmod(path, 0o666)
    # SO_PEERCRED names whoever called listen(): switch user first when asked to.
    if uid is not None:
        os.setresgid(uid, uid, uid)
        os.setresuid(uid, uid, uid)
    sock.listen(64)
    threading.Thread(target=serve, args=(sock,), daemon=True).start()
"#;

/// Swaps `<base>/0` (root's per-user directory) with a symlink to the user's own directory
/// holding a fake agent socket for instance `label`, in a loop (`renameat2` with
/// `RENAME_EXCHANGE`), until killed.
const SWAPPER: &str = r#"
import ctypes, os, sys
base, label, log = sys.argv[1], sys.argv[2], sys.argv[3]
# The log is the test's; in root's sticky base root's directory cannot be moved, so every
# exchange fails (EPERM) there.
fake = os.path.join(base, "fake")
os.makedirs(os.path.join(fake, label, "run"), exist_ok=True)
listen(os.path.join(fake, label, "run", "agent.sock"), None)
link = os.path.join(base, "swap")
os.symlink(fake, link)
libc = ctypes.CDLL(None, use_errno=True)
target = os.path.join(base, "0").encode()
print("ready", flush=True)
while True:
    libc.syscall(316, -100, target, -100, link.encode(), 2)
"#;

/// A base owned by another user lets that user swap root's directory during a call; in a
/// shared (sticky) base of root's they may try the same. No call may ever reach the user's
/// fake agent: in their base every call is refused with one line, in root's every call is
/// served by the instance.
#[test]
fn swapping_the_state_dir_for_a_symlink_never_reaches_a_fake_agent() {
    require_resume!();
    let Some(uid) = hostile_uid() else { return };
    let outer = open_tempdir("flake-evil-");
    let theirs = outer.path().join("theirs");
    let shared = outer.path().join("shared");
    std::fs::create_dir(&theirs).unwrap();
    chown(&theirs, uid);
    std::fs::create_dir(&shared).unwrap();
    std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o1777)).unwrap();
    let logs = open_tempdir("flake-swap-log-");
    for (base, served) in [(theirs, false), (shared, true)] {
        let w = World::new();
        use_ids_dir(&w, &base);
        let name = unique("swap");
        let (app, _guard) = w.register_resume(&name);
        let log = logs.path().join(if served { "shared" } else { "theirs" });
        std::fs::write(&log, "").unwrap();
        std::fs::set_permissions(&log, std::fs::Permissions::from_mode(0o666)).unwrap();
        if served {
            // Root's directory exists before the swapping starts.
            w.app(&app, &["-c", "true"], None).success();
        }
        let script = format!("{FAKE_AGENT}{SWAPPER}");
        let swapper = hostile(&script, &[&base, Path::new(&name), &log]);
        for _ in 0..200 {
            let run = w.app(&app, &["-c", "echo served"], None);
            if served {
                assert_eq!(run.stdout(), "served\n", "{run}");
            } else {
                assert_eq!(run.code(), 125, "{run}");
                assert_eq!(run.stderr().lines().count(), 1, "one line: {run}");
                assert!(run.stderr().contains("belongs to uid"), "{run}");
            }
        }
        stop(swapper);
        let reached = log_lines(&log);
        assert!(
            reached.is_empty(),
            "calls reached the fake agent in {}: {reached:?}",
            base.display()
        );
    }
}

/// Bases that others could change are refused with one line naming the fix: another
/// user's, one below another user's directory, and one writable by all without the
/// sticky bit.
#[test]
fn a_base_others_could_change_is_refused_with_one_line() {
    require_resume!();
    let Some(uid) = hostile_uid() else { return };
    let w = World::new();
    let (app, _guard) = w.register_resume(&unique("unsafebase"));
    let outer = open_tempdir("flake-bases-");
    let theirs = outer.path().join("theirs");
    let below = outer.path().join("below");
    let open = outer.path().join("open");
    for dir in [&theirs, &below, &open] {
        std::fs::create_dir(dir).unwrap();
    }
    chown(&theirs, uid);
    chown(&below, uid);
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
    let cases: [(PathBuf, &str); 3] = [
        (theirs.clone(), "belongs to uid"),
        (below.join("flakes"), "belongs to uid"),
        (open.clone(), "chmod 1777"),
    ];
    for (base, why) in cases {
        use_ids_dir(&w, &base);
        let run = w.app(&app, &["-c", "echo served"], None);
        run.expect_code(125);
        let err = run.stderr();
        assert_eq!(err.lines().count(), 1, "{run}");
        assert!(err.contains("refusing") && err.contains(why), "{run}");
    }
    assert!(
        std::fs::read_dir(&open).unwrap().next().is_none(),
        "nothing made"
    );
}

/// A socket at the instance's place served by another process (another user's, or even
/// root's) is refused with one line and gets nothing from the call.
#[test]
fn a_socket_served_by_another_process_is_refused() {
    require_resume!();
    let Some(uid) = hostile_uid() else { return };
    let w = World::new();
    let name = unique("impostor");
    let (app, _guard) = w.register_resume(&name);
    w.app(&app, &["-c", "true"], None).success();
    let socket = w.path(&format!("ids/0/{name}/run/agent.sock"));
    assert!(socket.exists(), "{}", socket.display());
    // Written by the fake after it became the other user.
    let logs = open_tempdir("flake-impostor-");
    let log = logs.path().join("log");
    std::fs::write(&log, "").unwrap();
    std::fs::set_permissions(&log, std::fs::Permissions::from_mode(0o666)).unwrap();
    for (who, listener_uid) in [("another user", Some(uid)), ("root", None)] {
        let script = format!(
            "{FAKE_AGENT}\nlog = sys.argv[2]\nlisten(sys.argv[1], {})\nprint('ready', flush=True)\nthreading.Event().wait()\n",
            listener_uid.map_or("None".to_string(), |u| u.to_string())
        );
        let mut fake = Command::new("python3")
            .args(["-c", &script])
            .arg(&socket)
            .arg(&log)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        wait_ready(&mut fake);
        let run = w.app(&app, &["-c", "echo served"], None);
        stop(fake);
        let got: Vec<String> = log_lines(&log)
            .into_iter()
            .filter(|l| l.starts_with("got") && l != "got 0")
            .collect();
        assert!(got.is_empty(), "{who} was sent the call: {got:?}");
        run.expect_code(125);
        assert_eq!(run.stderr().lines().count(), 1, "{who}: {run}");
        assert!(
            run.stderr().contains("not by the instance's agent"),
            "{who}: {run}"
        );
    }
    // As the message says: remove the instance, and the next call starts a new one.
    let container = format!("flake-{name}-u0");
    let rm = Command::new("podman")
        .args(["rm", "-f", "-t", "0", &container])
        .output()
        .unwrap();
    assert!(rm.status.success(), "{rm:?}");
    let run = w.app(&app, &["-c", "echo served"], None);
    assert_eq!(run.stdout(), "served\n", "{run}");
}

/// Another user creating `<base>/0` in a shared base first does not lock root out: root's
/// calls use a directory of its own (and keep their instance), the squatter's is left
/// alone.
#[test]
fn a_squatted_user_dir_does_not_deny_resume() {
    require_resume!();
    let Some(uid) = hostile_uid() else { return };
    let w = World::new();
    let outer = open_tempdir("flake-shared-");
    let base = outer.path().join("shared");
    std::fs::create_dir(&base).unwrap();
    std::fs::set_permissions(&base, std::fs::Permissions::from_mode(0o1777)).unwrap();
    let squat = Command::new("runuser")
        .args(["-u", USER, "--", "mkdir", "-m", "0700"])
        .arg(base.join("0"))
        .output()
        .unwrap();
    assert!(squat.status.success(), "{squat:?}");
    use_ids_dir(&w, &base);
    let name = unique("squat");
    let (app, _guard) = w.register_resume(&name);
    w.app(&app, &["-c", "echo kept > /tmp/state"], None)
        .success();
    let run = w.app(&app, &["-c", "cat /tmp/state"], None);
    assert_eq!(run.stdout(), "kept\n", "{run}");
    assert!(run.elapsed < Duration::from_secs(1), "warm: {run}");
    let own: Vec<PathBuf> = std::fs::read_dir(&base)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.join(&name).is_dir())
        .collect();
    assert_eq!(own.len(), 1, "{own:?}");
    let meta = std::fs::metadata(&own[0]).unwrap();
    assert_eq!((meta.uid(), meta.mode() & 0o7777), (0, 0o700));
    assert!(own[0]
        .file_name()
        .unwrap()
        .to_str()
        .unwrap()
        .starts_with("0."));
    assert_eq!(std::fs::metadata(base.join("0")).unwrap().uid(), uid);
}

/// Another user making the base itself first in a shared directory (as `/tmp/flakes` in
/// `/tmp`) does not deny root either: root's state goes to `<base>-0` beside it.
#[test]
fn a_squatted_base_in_a_shared_directory_does_not_deny_resume() {
    require_resume!();
    let Some(_) = hostile_uid() else { return };
    let w = World::new();
    let outer = open_tempdir("flake-sharedtmp-");
    let tmp = outer.path().join("tmp");
    std::fs::create_dir(&tmp).unwrap();
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o1777)).unwrap();
    let base = tmp.join("flakes");
    let squat = Command::new("runuser")
        .args(["-u", USER, "--", "mkdir", "-m", "1777"])
        .arg(&base)
        .output()
        .unwrap();
    assert!(squat.status.success(), "{squat:?}");
    use_ids_dir(&w, &base);
    let name = unique("basesquat");
    let (app, _guard) = w.register_resume(&name);
    w.app(&app, &["-c", "echo kept > /tmp/state"], None)
        .success();
    let run = w.app(&app, &["-c", "cat /tmp/state"], None);
    assert_eq!(run.stdout(), "kept\n", "{run}");
    assert!(tmp.join("flakes-0/0").join(&name).is_dir());
    assert!(
        std::fs::read_dir(&base).unwrap().next().is_none(),
        "theirs untouched"
    );
}

/// A 25-character flake name with a 63-character `@NAME` (the longest valid) is as fast
/// as any: the socket is reached through the held directory, not its long path.
#[test]
fn the_longest_names_keep_resume_warm() {
    require_resume!();
    let w = World::new();
    let name = format!("{:x<25}", unique("long"));
    let instance = format!("@{}", "i".repeat(63));
    let (app, _guard) = w.register_resume(&name);
    let long_socket = w.path(&format!("ids/0/{name}{instance}/run/agent.sock"));
    assert!(long_socket.as_os_str().len() > 108);
    w.app(&app, &[&instance, "-c", "echo kept > /tmp/state"], None)
        .success();
    let run = w.app(&app, &[&instance, "-c", "cat /tmp/state"], None);
    assert_eq!(run.stdout(), "kept\n", "the instance kept its state: {run}");
    assert!(
        run.elapsed < Duration::from_secs(1),
        "a warm call, not podman exec: {run}"
    );
}

/// Under an init podman adds (`--init`) the agent is the init's first child, and is
/// recognised as the instance's agent: calls are served, the second one warm.
#[test]
fn the_agent_under_an_init_is_recognised() {
    require_resume!();
    let w = World::new();
    let name = unique("underinit");
    let app = w.bin.join(&name);
    let app_s = app.display().to_string();
    w.ctl(&[
        "podman",
        "register",
        "--container",
        util::IMAGE,
        "--app",
        &app_s,
        "--target",
        "/bin/sh",
        "--resume",
        "--opt",
        r"\--network none",
        "--opt",
        r"\--init",
    ])
    .success();
    let _guard = util::Containers(name.clone());
    w.app(&app, &["-c", "echo kept > /tmp/state"], None)
        .success();
    let run = w.app(&app, &["-c", "cat /tmp/state"], None);
    assert_eq!(run.stdout(), "kept\n", "{run}");
    assert!(run.elapsed < Duration::from_secs(1), "warm: {run}");
}

/// A user inside the instance can replace `run/agent.sock` with a symlink to any socket of
/// the host (the directory is mounted into the instance): the launcher must not even
/// connect to it, whatever serves it.
#[test]
fn a_symlink_in_place_of_the_agent_socket_is_never_connected_to() {
    require_resume!();
    let w = World::new();
    let name = unique("sockln");
    let (app, _guard) = w.register_resume(&name);
    w.app(&app, &["-c", "true"], None).success();
    let socket = w.path(&format!("ids/0/{name}/run/agent.sock"));
    let logs = open_tempdir("flake-sockln-");
    let log = logs.path().join("log");
    std::fs::write(&log, "").unwrap();
    let host_socket = logs.path().join("host.sock");
    let script = format!(
        "{FAKE_AGENT}\nlog = sys.argv[2]\nlisten(sys.argv[1], None)\nprint('ready', flush=True)\nthreading.Event().wait()\n"
    );
    let mut host = Command::new("python3")
        .args(["-c", &script])
        .arg(&host_socket)
        .arg(&log)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    wait_ready(&mut host);
    std::fs::remove_file(&socket).unwrap();
    std::os::unix::fs::symlink(&host_socket, &socket).unwrap();
    let run = w.app(&app, &["-c", "echo served"], None);
    stop(host);
    assert_eq!(
        log_lines(&log),
        Vec::<String>::new(),
        "the host socket was connected to"
    );
    // The instance lost its socket: the launcher starts it afresh and serves the call.
    assert_eq!(run.stdout(), "served\n", "{run}");
}
