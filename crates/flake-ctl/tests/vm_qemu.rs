// SPDX-License-Identifier: MIT
//! VM flakes run for real: QEMU microvm (TCG) boots the fixture kernel with a busybox rootfs
//! whose init is our `sci`, and the app behaves like a local program.
//!
//! Needs the VM fixtures (`FLAKE_VM_FIXTURES`) and the static `sci` (`FLAKE_SCI`, built by
//! `make agent`); required when `FLAKE_TEST_REQUIRE_VM=1`.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::tests_outside_test_module
)]

mod util;

use std::path::PathBuf;
use std::process::{Command, Stdio};

use util::World;

/// Kills, when a test ends (also by failing), every VMM still running for its world, so a
/// failed test leaves no resume VM behind.
struct KillVms(PathBuf);

impl Drop for KillVms {
    fn drop(&mut self) {
        let _ = Command::new("pkill")
            .arg("-KILL")
            .arg("-f")
            .arg(format!("qemu-system.*{}", self.0.display()))
            .status();
    }
}

fn inputs() -> Option<(PathBuf, PathBuf)> {
    let fixtures = std::env::var_os("FLAKE_VM_FIXTURES").map(PathBuf::from);
    let sci = std::env::var_os("FLAKE_SCI").map(PathBuf::from);
    match (fixtures, sci) {
        (Some(f), Some(s)) if f.join("kernel/vmlinux").is_file() && s.is_file() => Some((f, s)),
        _ => {
            let required = std::env::var("FLAKE_TEST_REQUIRE_VM").is_ok_and(|v| v == "1");
            assert!(
                !required,
                "VM fixtures or static sci missing (make vm-fixtures agent)"
            );
            eprintln!("SKIP: needs FLAKE_VM_FIXTURES and FLAKE_SCI");
            None
        }
    }
}

/// Registers `name` as a QEMU VM flake on a busybox rootfs with sci as init.
fn vm_flake(w: &World, fixtures: &std::path::Path, sci: &std::path::Path, name: &str) -> PathBuf {
    vm_flake_with(w, fixtures, sci, name, &[], "")
}

/// [`vm_flake`] with extra `register` arguments and extra `vm.runtime` YAML lines (indented
/// by four spaces) in the flake's fragment.
fn vm_flake_with(
    w: &World,
    fixtures: &std::path::Path,
    sci: &std::path::Path,
    name: &str,
    register: &[&str],
    runtime_yaml: &str,
) -> PathBuf {
    let tree = w.path("guest");
    for dir in [
        "mnt",
        "overlayroot",
        "bin",
        "usr/sbin",
        "dev",
        "proc",
        "sys",
        "tmp",
        "etc",
        "root",
        "run",
    ] {
        std::fs::create_dir_all(tree.join(dir)).unwrap();
    }
    std::fs::copy("/bin/busybox", tree.join("bin/busybox")).unwrap();
    let applets = [
        "sh", "cat", "echo", "printf", "uname", "wc", "head", "true", "sleep", "test", "[", "ls",
        "stty", "tty", "mount", "id",
    ];
    for applet in applets {
        let link = tree.join("bin").join(applet);
        if !link.exists() {
            std::os::unix::fs::symlink("busybox", link).unwrap();
        }
    }
    // The rootfs has no sci: the component pull installs it (FLAKE_SCI), without root.
    assert!(sci.is_file());
    let rootfs = w.path("guest.ext4");
    let made = Command::new("mkfs.ext4")
        .args(["-q", "-F", "-d"])
        .arg(&tree)
        .arg(&rootfs)
        .arg("32M")
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(made.success());
    let kernel = fixtures.join("kernel/vmlinux").display().to_string();
    let pull = [
        "firecracker",
        "--user",
        "pull",
        "--name",
        "guest",
        "--rootfs",
    ];
    let rootfs_s = rootfs.display().to_string();
    if !w
        .home
        .join(".config/flakes/firecracker/images/guest")
        .exists()
    {
        w.ctl(&[&pull[..], &[rootfs_s.as_str(), "--kernel", kernel.as_str()]].concat())
            .success();
    }
    let app = w.bin.join(name);
    let app_s = app.display().to_string();
    let args = [
        "firecracker",
        "--user",
        "register",
        "--vm",
        "guest",
        "--app",
        &app_s,
        "--target",
        "/bin/sh",
        "--vmm",
        "qemu",
        "--no-net",
    ];
    w.ctl(&[&args[..], register].concat()).success();
    let fragment = w.home.join(format!(".config/flakes/{name}.d/small.yaml"));
    std::fs::write(
        fragment,
        format!(
            "vm:\n  runtime:\n{runtime_yaml}    firecracker:\n      mem_size_mib: 256\n      vcpu_count: 1\n"
        ),
    )
    .unwrap();
    app
}

#[test]
fn vm_app_behaves_like_a_local_program() {
    let Some((fixtures, sci)) = inputs() else {
        return;
    };
    let w = World::new();
    let _vms = KillVms(w.dir.path().to_path_buf());
    let app = vm_flake(&w, &fixtures, &sci, "vmsh");

    let run = w.app(
        &app,
        &["-c", "echo from the guest; echo to stderr >&2; exit 3"],
        None,
    );
    run.expect_code(3);
    assert_eq!(
        run.stdout(),
        "from the guest\n",
        "no kernel or VMM output mixed in: {run}"
    );
    assert_eq!(run.stderr(), "to stderr\n", "{run}");

    let run = w.app(
        &app,
        &[
            "-c",
            "printf '[%s]\\n' \"$@\"",
            "sh",
            "a b",
            "\"quoted\"",
            "it's",
            "x=\"1\" init=/bin/sh",
        ],
        None,
    );
    run.success();
    assert_eq!(
        run.stdout(),
        "[a b]\n[\"quoted\"]\n[it's]\n[x=\"1\" init=/bin/sh]\n",
        "arguments arrive intact: {run}"
    );

    let data: Vec<u8> = (0..2000)
        .map(|i| format!("line {i}\n"))
        .collect::<String>()
        .into_bytes();
    let run = w.app(&app, &["-c", "cat; echo done"], Some(&data));
    run.success();
    let mut want = data.clone();
    want.extend(b"done\n");
    assert_eq!(
        run.output.stdout, want,
        "stdin streams and EOF reaches the app"
    );

    let run = w.app(&app, &["-c", "wc -c"], None);
    run.success();
    assert_eq!(
        run.stdout().trim(),
        "0",
        "stdin from /dev/null is an immediate EOF: {run}"
    );
}

#[test]
fn show_lists_a_running_vm_until_it_ends() {
    let Some((fixtures, sci)) = inputs() else {
        return;
    };
    let w = World::new();
    let _vms = KillVms(w.dir.path().to_path_buf());
    let app = vm_flake(&w, &fixtures, &sci, "vmshow");
    let mut child = w
        .command(&app)
        .args(["-c", "sleep 4"])
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let show = w.ctl(&["firecracker", "show", "--format", "json"]);
        let rows: serde_json::Value = serde_json::from_str(&show.stdout()).unwrap();
        let running = rows.as_array().unwrap().iter().any(|r| {
            r["name"].as_str().is_some_and(|n| n.starts_with("vmshow#")) && r["status"] == "running"
        });
        if running {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "never shown as running: {show}"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    assert!(child.wait().unwrap().success());
    let show = w.ctl(&["firecracker", "show"]);
    assert!(show.stdout().contains("No instance(s) found"), "{show}");
}

#[test]
fn ctrl_c_reaches_the_app_in_the_guest() {
    let Some((fixtures, sci)) = inputs() else {
        return;
    };
    let w = World::new();
    let _vms = KillVms(w.dir.path().to_path_buf());
    let app = vm_flake(&w, &fixtures, &sci, "vmsig");
    let script = "trap 'echo got INT; exit 9' INT; echo ready; while true; do sleep 1; done";
    let mut child = w
        .command(&app)
        .args(["-c", script])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(child.stdout.take().unwrap()));
    assert_eq!(lines.next().unwrap().unwrap(), "ready");
    Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert_eq!(lines.next().unwrap().unwrap(), "got INT");
    assert_eq!(child.wait().unwrap().code(), Some(9));
}

/// The VMM pid `flake-ctl firecracker show` reports for instance `label` while it runs.
fn running_vm(w: &World, label: &str) -> Option<String> {
    let show = w.ctl(&["firecracker", "show", "--format", "json"]);
    let rows: serde_json::Value = serde_json::from_str(&show.stdout()).unwrap();
    rows.as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == label && r["status"] == "running")
        .and_then(|r| r["id"].as_str().map(str::to_string))
}

/// A host directory and a tar archive to include, and the register arguments naming them.
fn includes(w: &World) -> Vec<String> {
    let dir = w.path("incl/etc/app");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("conf"), "from an include path\n").unwrap();
    let staged = w.path("tarred/usr/share");
    std::fs::create_dir_all(&staged).unwrap();
    std::fs::write(staged.join("note"), "from an include tar\n").unwrap();
    let archive = w.path("files.tar");
    let made = Command::new("tar")
        .arg("-C")
        .arg(w.path("tarred"))
        .arg("-cf")
        .arg(&archive)
        .arg("usr")
        .status()
        .unwrap();
    assert!(made.success());
    vec![
        "--include-path".into(),
        w.path("incl/etc/app").display().to_string(),
        "--include-tar".into(),
        archive.display().to_string(),
    ]
}

#[test]
fn resume_vm_keeps_state_serves_calls_and_is_removed() {
    let Some((fixtures, sci)) = inputs() else {
        return;
    };
    let w = World::new();
    let _vms = KillVms(w.dir.path().to_path_buf());
    let extra = includes(&w);
    let mut register: Vec<&str> = vec!["--resume", "--overlay-size", "64MiB"];
    register.extend(extra.iter().map(String::as_str));
    let app = vm_flake_with(&w, &fixtures, &sci, "vmres", &register, "");
    let conf = w.path("incl/etc/app/conf").display().to_string();

    let first = w.app(
        &app,
        &[
            "-c",
            &format!("echo kept > /tmp/state; cat {conf} /usr/share/note"),
        ],
        None,
    );
    first.success();
    assert_eq!(
        first.stdout(),
        "from an include path\nfrom an include tar\n",
        "include files are in the VM: {first}"
    );
    let pid = running_vm(&w, "vmres").expect("the resume VM keeps running");

    let started = std::time::Instant::now();
    let second = w.app(&app, &["-c", "cat /tmp/state; exit 4"], None);
    let warm = started.elapsed();
    second.expect_code(4);
    assert_eq!(
        second.stdout(),
        "kept\n",
        "state survives between calls: {second}"
    );
    assert_eq!(
        running_vm(&w, "vmres"),
        Some(pid.clone()),
        "the same VM served it"
    );
    eprintln!("warm resume call into the VM: {warm:?}");

    // Calls run side by side (one guest channel port each).
    let started = std::time::Instant::now();
    let children: Vec<_> = (0..2)
        .map(|_| {
            w.command(&app)
                .args(["-c", "sleep 3"])
                .stdin(Stdio::null())
                .spawn()
                .unwrap()
        })
        .collect();
    for mut child in children {
        assert!(child.wait().unwrap().success());
    }
    assert!(
        started.elapsed() < std::time::Duration::from_millis(5500),
        "two 3 s calls took {:?}",
        started.elapsed()
    );

    let other = w.app(&app, &["@other", "-c", "cat /tmp/state"], None);
    other.expect_code(1);
    assert!(
        running_vm(&w, "vmres@other").is_some(),
        "@NAME is its own VM"
    );
    w.app(&app, &["@other", "%remove", "-c", "true"], None)
        .success();

    let removed = w.app(&app, &["%remove", "-c", "cat /tmp/state"], None);
    removed.success();
    assert_eq!(removed.stdout(), "kept\n");
    assert_eq!(running_vm(&w, "vmres"), None, "%remove ends the VM");
    let show = w.ctl(&["firecracker", "show"]);
    assert!(show.stdout().contains("No instance(s) found"), "{show}");
    let storage = w.home.join(".config/flakes/firecracker/storage");
    let left: Vec<_> = std::fs::read_dir(&storage)
        .map(|d| d.map(|e| e.unwrap().file_name()).collect())
        .unwrap_or_default();
    assert!(
        left.is_empty(),
        "the overlay goes with the instance: {left:?}"
    );
    // Gone, or a zombie waiting for a parent that does not reap (no init here).
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let state = stat.rsplit_once(") ").map(|(_, rest)| rest.chars().next());
    assert!(
        matches!(state, None | Some(Some('Z' | 'X'))),
        "the VMM process is gone: {stat}"
    );
}

#[test]
fn one_shot_overlay_is_fresh_every_call() {
    let Some((fixtures, sci)) = inputs() else {
        return;
    };
    let w = World::new();
    let _vms = KillVms(w.dir.path().to_path_buf());
    let extra = includes(&w);
    let mut register: Vec<&str> = vec!["--overlay-size", "32MiB"];
    register.extend(extra.iter().map(String::as_str));
    let app = vm_flake_with(&w, &fixtures, &sci, "vmfresh", &register, "");
    let first = w.app(
        &app,
        &[
            "-c",
            "test -e /tmp/mark && echo stale; echo x > /tmp/mark && cat /usr/share/note",
        ],
        None,
    );
    first.success();
    assert_eq!(first.stdout(), "from an include tar\n", "{first}");
    let second = w.app(&app, &["-c", "test -e /tmp/mark && echo stale; true"], None);
    second.success();
    assert_eq!(
        second.stdout(),
        "",
        "a one-shot VM starts from a fresh overlay: {second}"
    );
}

#[test]
fn idle_resume_vm_powers_off_and_restarts_with_its_overlay() {
    let Some((fixtures, sci)) = inputs() else {
        return;
    };
    let w = World::new();
    let _vms = KillVms(w.dir.path().to_path_buf());
    let app = vm_flake_with(
        &w,
        &fixtures,
        &sci,
        "vmidle",
        &["--resume", "--overlay-size", "32MiB"],
        "    idle_timeout: 2\n",
    );
    w.app(&app, &["-c", "echo persisted > /root/file; sync"], None)
        .success();
    assert!(running_vm(&w, "vmidle").is_some());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while running_vm(&w, "vmidle").is_some() {
        assert!(
            std::time::Instant::now() < deadline,
            "the idle VM did not power off"
        );
        std::thread::sleep(std::time::Duration::from_millis(250));
    }
    let again = w.app(&app, &["-c", "cat /root/file"], None);
    again.success();
    assert_eq!(
        again.stdout(),
        "persisted\n",
        "the overlay outlives the VM: {again}"
    );
    w.app(&app, &["%remove", "-c", "true"], None).success();
}

#[test]
fn terminal_calls_get_a_pty_in_the_guest() {
    let Some((fixtures, sci)) = inputs() else {
        return;
    };
    let w = World::new();
    let _vms = KillVms(w.dir.path().to_path_buf());
    let app = vm_flake(&w, &fixtures, &sci, "vmtty");
    let probe = "if [ -t 0 ] && [ -t 1 ]; then echo TTY; else echo NOTTY; fi; exit 5";
    let piped = w.app(&app, &["-c", probe], Some(b""));
    assert_eq!(piped.stdout(), "NOTTY\n", "{piped}");
    let out = util::in_pty(&w, &app, &["-c", probe]);
    assert!(out.contains("TTY\r\n") && !out.contains("NOTTY"), "{out:?}");
}
