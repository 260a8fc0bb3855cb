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

/// The record an OCI pull leaves in the image directory `dir`, with `config`.
fn oci_record(dir: &std::path::Path, config: vm_pilot::oci::ImageConfig) {
    let record = vm_pilot::oci::OciRecord {
        rootfs: vm_pilot::oci::Origin {
            reference: "127.0.0.1:5000/tools:1".into(),
            digest: Some(format!("sha256:{}", "d".repeat(64))),
            image_id: "e".repeat(64),
        },
        kernel: None,
        config,
    };
    vm_pilot::oci::write(dir, &record).unwrap();
}

fn image_config(cmd: &[&str], env: &[&str]) -> vm_pilot::oci::ImageConfig {
    vm_pilot::oci::ImageConfig {
        cmd: cmd.iter().map(|s| s.to_string()).collect(),
        env: env.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    }
}

/// `--target /` registers a VM flake on the image's entry command only when the image
/// records one (it was made from an OCI image with an entrypoint or a command) and the
/// record is sound; otherwise nothing is written.
#[test]
fn register_on_the_image_entry_command_needs_a_sound_oci_record() {
    let w = World::new();
    let image = fake_image(&w, "leap", false);
    let app = w.bin.join("tool").display().to_string();
    let config = w.home.join(".config/flakes/tool.yaml");
    let refused = |needle: &str| {
        let run = register(&w, "leap", &app, &["--target", "/"]);
        assert_ne!(run.code(), 0, "{run}");
        assert!(
            run.stderr().contains(needle) && run.stderr().trim_end().lines().count() == 1,
            "{run}"
        );
        assert!(!config.exists() && !w.bin.join("tool").exists(), "{run}");
    };
    refused("--target / asks for the entry command of VM image 'leap', which was not made from an OCI image");
    oci_record(&image, image_config(&[], &["A=1"]));
    refused("records neither an entrypoint nor a command");
    oci_record(&image, image_config(&["/bin/app"], &["BAD KEY=1"]));
    refused("not a usable image record: Env entry 'BAD KEY=1' has no valid variable name");
    oci_record(&image, image_config(&["/bin/app"], &["A=1"]));
    register(&w, "leap", &app, &["--target", "/"]).success();
    assert!(
        yaml(&w, "tool").contains("target_app_path: /\n"),
        "{}",
        yaml(&w, "tool")
    );
    let relative = register(
        &w,
        "leap",
        &w.bin.join("t2").display().to_string(),
        &["--target", "bin/x"],
    );
    assert_ne!(relative.code(), 0, "{relative}");
    assert!(
        relative
            .stderr()
            .contains("or / for the image's entry command"),
        "{relative}"
    );
}

/// A call of a flake on the image's entry command whose image lost its record, or whose
/// record is hostile, fails before any VM starts, naming the flake's file or the record.
#[test]
fn a_call_on_the_entry_command_of_an_image_without_a_sound_record_is_refused() {
    let w = World::new();
    let image = fake_image(&w, "leap", false);
    oci_record(&image, image_config(&["/bin/app"], &[]));
    let app = w.bin.join("tool");
    register(
        &w,
        "leap",
        &app.display().to_string(),
        &["--target", "/", "--no-net"],
    )
    .success();
    let config = w
        .home
        .join(".config/flakes/tool.yaml")
        .display()
        .to_string();
    std::fs::remove_file(image.join(vm_pilot::oci::RECORD_FILE)).unwrap();
    let run = w.app(&app, &[], None);
    run.expect_code(125);
    let want = format!(
        "firecracker-pilot: target_app_path / in {config} asks for the entry command of VM \
         image 'leap', which was not made from an OCI image"
    );
    assert!(run.stderr().starts_with(&want), "{run}");
    let hostile = [
        (
            image_config(&["/bin/app\0x"], &[]),
            "an argument of Cmd holds a NUL byte",
        ),
        (image_config(&["/bin/app"], &["A=1\0"]), "NUL"),
        (
            image_config(&["/bin/app"], &["=1"]),
            "no valid variable name",
        ),
        (
            vm_pilot::oci::ImageConfig {
                working_dir: Some("srv".into()),
                ..image_config(&["/bin/app"], &[])
            },
            "WorkingDir 'srv' is not an absolute path",
        ),
    ];
    for (config, needle) in hostile {
        oci_record(&image, config);
        let run = w.app(&app, &[], None);
        run.expect_code(125);
        assert!(
            run.stderr()
                .contains("oci-image.json is not a usable image record")
                && run.stderr().contains(needle)
                && run.stderr().trim_end().lines().count() == 1,
            "{run}"
        );
    }
}

/// The record chooses what a call runs, in which environment and as whom: one that
/// another user may have written (a mode others may write, a directory others may change,
/// another user's file) is refused before any VM starts, whichever flake uses it.
#[test]
fn a_record_others_may_write_is_not_used() {
    use std::os::unix::fs::PermissionsExt;
    let w = World::new();
    let image = fake_image(&w, "leap", false);
    oci_record(&image, image_config(&["/bin/app"], &["A=1"]));
    let app = w.bin.join("tool");
    register(
        &w,
        "leap",
        &app.display().to_string(),
        &["--target", "/", "--no-net"],
    )
    .success();
    let record = image.join(vm_pilot::oci::RECORD_FILE);
    let mode = |path: &std::path::Path, mode: u32| {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    };
    let refused = |needle: &str| {
        let run = w.app(&app, &[], None);
        run.expect_code(125);
        let err = run.stderr();
        assert!(
            err.contains("oci-image.json may have been written by another user")
                && err.contains(needle)
                && err.trim_end().lines().count() == 1,
            "{run}"
        );
    };
    mode(&record, 0o666);
    refused("others may write it (mode 666)");
    mode(&record, 0o664);
    refused("others may write it (mode 664)");
    mode(&record, 0o644);
    mode(&image, 0o777);
    // The directory is refused for the VM's kernel before the record is read.
    let run = w.app(&app, &[], None);
    run.expect_code(125);
    assert!(run.stderr().contains("has mode 777"), "{run}");
    mode(&image, 0o755);
    if std::os::unix::fs::chown(&record, Some(65534), None).is_ok() {
        refused("it belongs to uid 65534");
    }
}

/// `firecracker show` names the OCI image, digest and image id an instance's VM image was
/// made from, in every format; other images show none.
#[test]
fn show_names_the_oci_image_of_an_instance() {
    let w = World::new();
    let image = fake_image(&w, "leap", false);
    oci_record(&image, image_config(&["/bin/app"], &[]));
    register(
        &w,
        "leap",
        &w.bin.join("tool").display().to_string(),
        &["--target", "/"],
    )
    .success();
    fake_image(&w, "plain", false);
    register(&w, "plain", &w.bin.join("other").display().to_string(), &[]).success();
    for label in ["tool@1", "other@1"] {
        std::fs::create_dir_all(w.path("ids/0/.vm").join(label)).unwrap();
    }
    let show = w.ctl(&["firecracker", "show", "--format", "json"]);
    let rows: serde_json::Value = serde_json::from_str(&show.stdout()).unwrap();
    let row = |name: &str| {
        rows.as_array()
            .unwrap()
            .iter()
            .find(|r| r["name"] == name)
            .cloned()
            .unwrap_or_else(|| panic!("no {name}: {show}"))
    };
    let tool = row("tool@1");
    assert_eq!(tool["oci_image"], "127.0.0.1:5000/tools:1", "{show}");
    assert_eq!(
        tool["digest"],
        format!("sha256:{}", "d".repeat(64)),
        "{show}"
    );
    assert_eq!(tool["image_id"], "e".repeat(64), "{show}");
    let other = row("other@1");
    assert!(
        other["oci_image"].is_null() && other["digest"].is_null(),
        "{show}"
    );
    let csv = w.ctl(&["firecracker", "show", "--format", "csv"]);
    let text = csv.stdout();
    assert!(
        text.lines()
            .next()
            .unwrap()
            .ends_with(",oci_image,digest,image_id"),
        "{csv}"
    );
    let digest = format!(
        "127.0.0.1:5000/tools:1,sha256:{},{}",
        "d".repeat(64),
        "e".repeat(64)
    );
    assert!(
        text.lines()
            .any(|l| l.starts_with("tool@1,") && l.ends_with(&digest)),
        "{csv}"
    );
    let table = w.ctl(&["firecracker", "show"]);
    assert!(table.stdout().contains("DIGEST"), "{table}");
}

/// `validate` reports what a launch would refuse: a flake on the entry command of an image
/// without one, and a hostile record, at the line that sets `target_app_path`.
#[test]
fn validate_reports_an_entry_command_the_image_does_not_have() {
    let w = World::new();
    let image = fake_image(&w, "leap", false);
    oci_record(&image, image_config(&["/bin/app"], &[]));
    register(
        &w,
        "leap",
        &w.bin.join("tool").display().to_string(),
        &["--target", "/"],
    )
    .success();
    w.ctl(&["validate", "--user", "tool"]).success();
    oci_record(&image, image_config(&[], &[]));
    let run = w.ctl(&["validate", "--user", "--format", "json", "tool"]);
    run.expect_code(1);
    let rows: serde_json::Value = serde_json::from_str(&run.stdout()).unwrap();
    let row = &rows[0];
    assert!(
        row["file"].as_str().unwrap().ends_with("tool.yaml"),
        "{run}"
    );
    assert!(row["line"].as_u64().is_some(), "{run}");
    assert!(
        row["problem"]
            .as_str()
            .unwrap()
            .contains("records neither an entrypoint nor a command"),
        "{run}"
    );
    oci_record(&image, image_config(&["/bin/app"], &["NO_VALUE"]));
    let run = w.ctl(&["validate", "--user", "tool"]);
    run.expect_code(1);
    assert!(run.stdout().contains("is not KEY=VALUE"), "{run}");
}

/// Sets the mode bits of `path`.
fn chmod(path: &std::path::Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// Runs `app` and expects the launch refused before any VMM starts: exit 125 and one line
/// naming `file` as changeable by another user, with `needle` (who may, or the fix).
fn expect_untrusted(w: &World, app: &std::path::Path, file: &std::path::Path, needle: &str) {
    let run = w.app(app, &[], None);
    run.expect_code(125);
    let err = run.stderr();
    let named = format!("{} may be changed by another user", file.display());
    assert!(
        err.contains(&named) && err.contains(needle) && err.trim_end().lines().count() == 1,
        "{needle}: {run}"
    );
}

/// Runs `app` and expects the trust check passed (the launch goes on and fails later
/// with these fake files, or without a VMM).
fn expect_trusted(w: &World, app: &std::path::Path) {
    let run = w.app(app, &[], None);
    assert!(
        !run.stderr().contains("may be changed by another user"),
        "{run}"
    );
}

/// The kernel, rootfs, initrd and guest init marker decide what root's VMs run: a file
/// or directory on their way that another user may write (or owns) refuses the launch
/// with exit 125 before any VMM starts, naming the file, who may change it and the fix;
/// `validate` and `doctor` report the same.
#[test]
fn vm_files_others_may_change_are_refused() {
    let w = World::new();
    let image = fake_image(&w, "leap", true);
    let app = w.bin.join("tool");
    register(&w, "leap", &app.display().to_string(), &["--no-net"]).success();
    let (rootfs, kernel, initrd) = (
        image.join("rootfs"),
        image.join("kernel"),
        image.join("initrd"),
    );
    let marker = image.join(vm_pilot::pull::GUEST_CHANNEL_FILE);
    std::fs::write(&marker, "").unwrap();
    expect_trusted(&w, &app);
    chmod(&rootfs, 0o666);
    expect_untrusted(&w, &app, &rootfs, "others may write it (mode 666)");
    let fix = format!("chmod go-w {}", rootfs.display());
    expect_untrusted(&w, &app, &rootfs, &fix);
    // A registration on such files is refused before anything is written.
    let second = w.bin.join("tool2");
    let run = register(&w, "leap", &second.display().to_string(), &["--no-net"]);
    run.expect_code(1);
    assert!(run.stderr().contains("mode 666"), "{run}");
    assert!(!second.exists() && !w.home.join(".config/flakes/tool2.yaml").exists());
    for (what, path) in [("validate", &rootfs), ("doctor", &rootfs)] {
        let args: &[&str] = match what {
            "validate" => &["validate", "--user"],
            _ => &["doctor", "--user", "--format", "json"],
        };
        let out = w.ctl(args).stdout();
        assert!(
            out.contains(&format!(
                "{} may be changed by another user",
                path.display()
            )) && out.contains("mode 666"),
            "{what}: {out}"
        );
    }
    chmod(&rootfs, 0o644);
    chmod(&kernel, 0o664);
    expect_untrusted(&w, &app, &kernel, "others may write it (mode 664)");
    chmod(&kernel, 0o644);
    chmod(&initrd, 0o646);
    expect_untrusted(&w, &app, &initrd, "mode 646");
    chmod(&initrd, 0o644);
    chmod(&marker, 0o664);
    expect_untrusted(&w, &app, &marker, "mode 664");
    chmod(&marker, 0o644);
    chmod(&image, 0o777);
    let dir = format!("its directory {} has mode 777", image.display());
    expect_untrusted(&w, &app, &kernel, &dir);
    chmod(&image, 0o775);
    expect_untrusted(&w, &app, &kernel, "has mode 775");
    // A directory further up counts as much as the image's own.
    let registry = image.parent().unwrap();
    chmod(registry, 0o757);
    expect_untrusted(&w, &app, &kernel, "has mode 757");
    chmod(registry, 0o755);
    // Sticky (as /tmp): others may add names, not replace root's files.
    chmod(&image, 0o1777);
    expect_trusted(&w, &app);
    chmod(&image, 0o755);
    std::os::unix::fs::chown(&rootfs, Some(65534), None).unwrap();
    expect_untrusted(&w, &app, &rootfs, "it belongs to uid 65534");
    // Another user's own file in a sticky directory is theirs to replace.
    chmod(&image, 0o1777);
    expect_untrusted(&w, &app, &rootfs, "it belongs to uid 65534");
    std::os::unix::fs::chown(&rootfs, Some(0), None).unwrap();
    chmod(&image, 0o755);
    expect_trusted(&w, &app);
}

/// A user's VM flake on files of their own, in their own home, launches past the check;
/// the same file made writable by others is refused for them too.
#[test]
fn a_users_own_vm_files_are_trusted_for_them() {
    let bin = util::bin_dir();
    let ctl = bin.join("flake-ctl");
    let name = format!("vmtrust-{}", std::process::id());
    let script = format!(
        r#"set -e
ctl={ctl}
img="$HOME/.config/flakes/firecracker/images/{name}"
app="$HOME/bin/{name}"
cleanup() {{ $ctl firecracker --user remove --app "$app" >/dev/null 2>&1 || true; rm -rf "$img"; }}
trap cleanup EXIT
test -x $ctl || exit 93
mkdir -p "$img" "$HOME/bin"
chmod go-w "$HOME" "$HOME/.config" "$HOME/.config/flakes" "$HOME/.config/flakes/firecracker" "$HOME/.config/flakes/firecracker/images" "$HOME/bin"
echo rootfs > "$img/rootfs"; echo kernel > "$img/kernel"
chmod 0644 "$img/rootfs" "$img/kernel"
$ctl firecracker --user register --vm {name} --app "$app" --no-net >/dev/null
"$app" 2>&1 || true
echo ----
chmod 0666 "$img/rootfs"
"$app" 2>&1 || echo "exit $?"
"#,
        ctl = ctl.display()
    );
    let Some(out) = util::vm::as_user_via(&[], &script) else {
        return;
    };
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    if out.status.code() == Some(93) {
        util::skip("the user flaketest cannot run the built flake-ctl");
        return;
    }
    let (own, loose) = text.split_once("----").unwrap_or_else(|| panic!("{text}"));
    assert!(!own.contains("may be changed by another user"), "{text}");
    assert!(
        loose.contains("rootfs may be changed by another user")
            && loose.contains("others may write it (mode 666)")
            && loose.contains("exit 125"),
        "{text}"
    );
}
