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
    let tree = w.path("guest");
    for dir in [
        "bin", "usr/sbin", "dev", "proc", "sys", "tmp", "etc", "root", "run",
    ] {
        std::fs::create_dir_all(tree.join(dir)).unwrap();
    }
    std::fs::copy("/bin/busybox", tree.join("bin/busybox")).unwrap();
    for applet in ["sh", "cat", "echo", "printf", "uname", "wc", "head", "true"] {
        std::os::unix::fs::symlink("busybox", tree.join("bin").join(applet)).unwrap();
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
    w.ctl(&[&pull[..], &[rootfs_s.as_str(), "--kernel", kernel.as_str()]].concat())
        .success();
    let app = w.bin.join(name);
    let app_s = app.display().to_string();
    w.ctl(&[
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
    ])
    .success();
    let fragment = w.home.join(format!(".config/flakes/{name}.d/small.yaml"));
    std::fs::write(
        fragment,
        "vm:\n  runtime:\n    firecracker:\n      mem_size_mib: 256\n      vcpu_count: 1\n",
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
