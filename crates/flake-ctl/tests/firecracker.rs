// SPDX-License-Identifier: MIT
//! `flake-ctl firecracker register/remove` and VM flakes in `list`, in user mode.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::tests_outside_test_module
)]

mod util;

use std::path::PathBuf;

use util::World;

/// A pulled-looking VM image in the user's registry.
fn fake_image(w: &World, name: &str, initrd: bool) -> PathBuf {
    let dir = w.home.join(".config/flakes/firecracker/images").join(name);
    std::fs::create_dir_all(&dir).unwrap();
    let mut files = vec!["rootfs", "kernel"];
    if initrd {
        files.push("initrd");
    }
    for file in files {
        std::fs::write(dir.join(file), file).unwrap();
    }
    dir
}

/// `flake-ctl firecracker --user register --vm VM --app APP EXTRA...`.
fn register(w: &World, vm: &str, app: &str, extra: &[&str]) -> util::Run {
    let mut args = vec![
        "firecracker",
        "--user",
        "register",
        "--vm",
        vm,
        "--app",
        app,
    ];
    args.extend_from_slice(extra);
    w.ctl(&args)
}

fn yaml(w: &World, name: &str) -> String {
    std::fs::read_to_string(w.home.join(".config/flakes").join(format!("{name}.yaml"))).unwrap()
}

#[test]
fn register_list_call_and_remove_round_trip() {
    let w = World::new();
    let image = fake_image(&w, "leap", true);
    let app = w.bin.join("mybash").display().to_string();
    let register = [
        "firecracker",
        "--user",
        "register",
        "--vm",
        "leap",
        "--app",
        &app,
        "--target",
        "/bin/bash",
        "--overlay-size",
        "20GiB",
        "--resume",
        "--idle-timeout",
        "90",
    ];
    w.ctl(&register).success();
    let text = yaml(&w, "mybash");
    for needle in [
        "idle_timeout: 90",
        "name: leap",
        "overlay_size: 20GiB",
        "vmm: firecracker",
        "sci_resume=1",
        "initrd_path:",
        "ip=dhcp",
    ] {
        assert!(text.contains(needle), "{needle} missing:\n{text}");
    }
    let list = w.ctl(&["list", "--user", "--format", "json"]);
    list.success();
    let rows: serde_json::Value = serde_json::from_str(&list.stdout()).unwrap();
    assert_eq!(rows[0]["engine"], "firecracker");
    assert_eq!(rows[0]["target"], "/bin/bash");

    // Without firecracker on PATH the launch fails up front, naming what is missing.
    let run = w.app(std::path::Path::new(&app), &["-c", "true"], None);
    run.expect_code(125);
    assert!(
        run.stderr().contains("firecracker not found on PATH"),
        "{run}"
    );

    w.ctl(&["firecracker", "remove", "--user", "--vm", "leap"])
        .success();
    assert!(!image.exists());
    assert!(!PathBuf::from(&app).is_symlink());
    w.ctl(&["firecracker", "remove", "--user", "--vm", "leap"])
        .expect_code(1);
}

#[test]
fn overlay_sizes_and_no_net() {
    let w = World::new();
    fake_image(&w, "core", false);
    for (i, size) in ["20G", "20g", "512MiB", "1.5GB"].iter().enumerate() {
        let app = w.bin.join(format!("ok{i}")).display().to_string();
        register(&w, "core", &app, &["--overlay-size", size]).success();
    }
    let before = w.tree();
    for size in ["20gigs", "0", "", "1.2.3G", "20 G B"] {
        let app = w.bin.join("bad").display().to_string();
        let run = register(&w, "core", &app, &["--overlay-size", size]);
        assert_ne!(run.code(), 0, "{size}: {run}");
        assert!(
            run.stderr().contains("size") || run.stderr().contains("overlay"),
            "{run}"
        );
        assert_eq!(w.tree(), before, "nothing left by a refused registration");
    }
    let app = w.bin.join("fireshell").display().to_string();
    w.ctl(&[
        "firecracker",
        "--user",
        "register",
        "--app",
        &app,
        "--target",
        "/bin/bash",
        "--vm",
        "core",
        "--no-net",
    ])
    .success();
    let text = yaml(&w, "fireshell");
    assert!(
        text.contains("network: false") && !text.contains("ip=") && !text.contains("rd.neednet"),
        "{text}"
    );
}

#[test]
fn clear_errors_for_missing_images_and_includes_without_overlay() {
    let w = World::new();
    let app = w.bin.join("x").display().to_string();
    let run = register(&w, "nope", &app, &[]);
    run.expect_code(1);
    assert!(
        run.stderr().contains("pull") && run.stderr().contains("rootfs"),
        "{run}"
    );
    let run = register(&w, "../etc", &app, &[]);
    run.expect_code(1);
    fake_image(&w, "core", false);
    let tar = w.path("inc.tar");
    std::fs::write(&tar, "").unwrap();
    let run = register(
        &w,
        "core",
        &app,
        &["--include-tar", &tar.display().to_string()],
    );
    run.expect_code(2);
    assert!(run.stderr().contains("--overlay-size"), "{run}");
    // An idle timeout is a resume VM's: without --resume it is refused, naming both.
    let idle = register(&w, "core", &app, &["--idle-timeout", "60"]);
    idle.expect_code(2);
    assert!(
        idle.stderr().contains("--idle-timeout") && idle.stderr().contains("--resume"),
        "{idle}"
    );
    let word = register(&w, "core", &app, &["--resume", "--idle-timeout", "soon"]);
    word.expect_code(2);
    assert!(word.stderr().contains("soon"), "{word}");
}

#[test]
fn show_marks_instances_whose_vmm_is_gone_as_stale() {
    let w = World::new();
    let empty = w.ctl(&["firecracker", "show"]);
    empty.success();
    assert!(empty.stdout().contains("No instance(s) found"), "{empty}");
    let instance = w.path("ids/0/.vm/mybash@4242");
    std::fs::create_dir_all(&instance).unwrap();
    // pid 1 is alive, but it is not this instance's VMM: a reused pid must not count.
    std::fs::write(instance.join("vmm.pid"), "1").unwrap();
    let show = w.ctl(&["firecracker", "show", "--format", "csv"]);
    show.success();
    assert!(
        show.stdout()
            .lines()
            .any(|l| l.starts_with("mybash@4242,root,,stale,")),
        "{show}"
    );
}

#[test]
fn a_qemu_flake_on_vsock_without_the_vsock_device_says_what_to_install() {
    let w = World::new();
    fake_image(&w, "leap", false);
    let registered = |app: &str, extra: &[&str], path: &std::path::Path, channel: &str| {
        let mut cmd = w.command(util::bin_dir().join("flake-ctl"));
        cmd.args(["firecracker", "--user", "register", "--vm", "leap", "--app"])
            .arg(w.bin.join(app))
            .args(["--vmm", "qemu", "--no-net"])
            .args(extra)
            .env("PATH", path)
            .env("FLAKE_QEMU_CHANNEL", channel);
        let run = util::Run::from_command(cmd);
        run.success();
        run.stdout()
    };
    // A search path with the device on it, and one without.
    let with = w.path("with-device");
    std::fs::create_dir_all(&with).unwrap();
    let device = with.join("vhost-device-vsock");
    std::fs::write(&device, "#!/bin/sh\n").unwrap();
    std::fs::set_permissions(&device, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let without = w.path("without-device");
    std::fs::create_dir_all(&without).unwrap();

    let missing = registered("res-a", &["--resume"], &without, "vsock");
    assert!(
        missing.contains("vhost-device-vsock is not installed")
            && missing.contains("cargo install --locked vhost-device-vsock --version 0.3.0"),
        "{missing}"
    );
    let installed = registered("res-b", &["--resume"], &with, "vsock");
    assert!(!installed.contains("vhost-device-vsock"), "{installed}");
    // The default channel needs no device: a note would only be noise.
    let default = registered("res-c", &["--resume"], &without, "");
    assert!(!default.contains("vhost-device-vsock"), "{default}");
}

#[test]
fn both_launchers_refuse_their_own_names_and_the_other_engines_flakes_alike() {
    let w = World::new();
    fake_image(&w, "leap", false);
    register(&w, "leap", &w.bin.join("vmapp").display().to_string(), &[]).success();
    // A container flake as `flake-ctl podman register` writes it (no podman needed here).
    std::fs::create_dir_all(&w.flakes).unwrap();
    let container = "container:\n  name: localhost/busybox\n  host_app_path: /usr/bin/box\n";
    std::fs::write(w.flakes.join("box.yaml"), container).unwrap();
    let pilots = util::bin_dir();
    let links = w.path("links");
    std::fs::create_dir_all(&links).unwrap();
    std::os::unix::fs::symlink(pilots.join("podman-pilot"), links.join("vmapp")).unwrap();
    std::os::unix::fs::symlink(pilots.join("firecracker-pilot"), links.join("box")).unwrap();
    let cases = [
        (
            pilots.join("podman-pilot"),
            "podman-pilot: podman-pilot is a launcher: call it through an app registered with \
             `flake-ctl podman register`",
        ),
        (
            pilots.join("firecracker-pilot"),
            "firecracker-pilot: firecracker-pilot is a launcher: call it through an app \
             registered with `flake-ctl firecracker register`",
        ),
        (
            links.join("vmapp"),
            "podman-pilot: flake 'vmapp' is a firecracker flake; register it again with \
             flake-ctl firecracker",
        ),
        (
            links.join("box"),
            "firecracker-pilot: flake 'box' is a podman flake; register it again with \
             flake-ctl podman",
        ),
    ];
    for (program, line) in cases {
        let run = w.app(&program, &["-c", "true"], None);
        run.expect_code(125);
        assert_eq!(run.stderr().trim_end(), line, "{run}");
    }
}

#[test]
fn firecracker_pilot_logs_like_podman_pilot() {
    let w = World::new();
    fake_image(&w, "leap", false);
    let app = w.bin.join("mybash");
    register(&w, "leap", &app.display().to_string(), &[]).success();
    let fragments = w.home.join(".config/flakes/mybash.d");
    std::fs::create_dir_all(&fragments).unwrap();
    std::fs::write(fragments.join("notes.txt"), "not a fragment").unwrap();
    // The flake loads (and warns), then the launch stops before any VM: no firecracker.
    let run = w.app(&app, &["-c", "true"], None);
    run.expect_code(125);
    let err = run.stderr();
    assert!(
        err.lines().any(|l| l.contains("WARN")
            && l.contains("skipping non-YAML entry")
            && l.contains("notes.txt")),
        "the fragment warning is missing: {run}"
    );
    assert!(
        err.lines()
            .last()
            .is_some_and(|l| l.starts_with("firecracker-pilot: firecracker not found on PATH")),
        "{run}"
    );
    // FLAKE_LOG_LEVEL quiets it, as for podman-pilot.
    let mut quiet = w.command(&app);
    quiet.args(["-c", "true"]).env("FLAKE_LOG_LEVEL", "error");
    let quiet = util::Run::from_command(quiet);
    quiet.expect_code(125);
    assert_eq!(quiet.stderr().lines().count(), 1, "{quiet}");
}
