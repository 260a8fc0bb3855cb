// SPDX-License-Identifier: MIT
//! The life of a registration as users and operators meet it: concurrent and interrupted
//! registrations, removal by the right engine's command leaving nothing behind, and how
//! errors are reported (once, with the launcher's exit code, without secrets).
//!
//! Tests that need podman, the static agent, the VM fixtures or the `flaketest` user skip
//! with a message where those are missing.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::tests_outside_test_module
)]

mod util;

use std::collections::BTreeSet;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use util::{containers_of, Run, World, IMAGE};

const USER: &str = "flaketest";

/// The world's paths, as a set, for before/after comparisons.
fn tree_set(w: &World) -> BTreeSet<String> {
    w.tree().into_iter().collect()
}

/// Paths that appeared between `before` and `after`, minus the per-user directories a
/// first registration or launch creates for every flake (registry, app and state bases).
fn left_behind(before: &BTreeSet<String>, after: &BTreeSet<String>) -> Vec<String> {
    let bases = [
        "flakes",
        "flakes/.registry.lock",
        "bin",
        "ids",
        "ids/0",
        "ids/0/.cache",
        "ids/0/.vm",
        "home/.config/flakes",
        "home/.config/flakes/firecracker/storage",
        "home/.config/flakes/firecracker/states",
    ];
    after
        .difference(before)
        .filter(|p| !bases.contains(&p.as_str()))
        .cloned()
        .collect()
}

/// Lines of `podman ARGS` output.
fn podman_lines(args: &[&str]) -> Vec<String> {
    let out = Command::new("podman").args(args).output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

fn assembled_images(name: &str) -> Vec<String> {
    podman_lines(&[
        "images",
        "-q",
        "--filter",
        &format!("label=io.flake-pilot.assembled={name}"),
    ])
}

#[test]
fn concurrent_registrations_of_one_name_only_one_succeeds() {
    let w = World::new();
    let name = util::unique("race");
    let ctl = util::bin_dir().join("flake-ctl");
    for round in 0..3 {
        let children: Vec<_> = (0..12)
            .map(|i| {
                let app = w.path(&format!("r{round}/d{i}/{name}"));
                w.command(&ctl)
                    .args(["podman", "register", "--container", IMAGE, "--app"])
                    .arg(app)
                    .stdout(Stdio::null())
                    .stderr(Stdio::piped())
                    .spawn()
                    .unwrap()
            })
            .collect();
        let outputs: Vec<_> = children
            .into_iter()
            .map(|c| c.wait_with_output().unwrap())
            .collect();
        let winners = outputs.iter().filter(|o| o.status.success()).count();
        assert_eq!(winners, 1, "round {round}: {outputs:?}");
        for lost in outputs.iter().filter(|o| !o.status.success()) {
            let stderr = String::from_utf8_lossy(&lost.stderr);
            assert_eq!(lost.status.code(), Some(1), "{stderr}");
            assert!(stderr.contains("is already registered for"), "{stderr}");
            assert_eq!(stderr.lines().count(), 1, "{stderr}");
        }
        let apps: Vec<String> = w
            .tree()
            .into_iter()
            .filter(|p| p.starts_with(&format!("r{round}/")) && p.ends_with(&name))
            .collect();
        assert_eq!(apps.len(), 1, "one app path: {apps:?}");
        assert!(!w.tree().iter().any(|p| p.ends_with(".tmp")));
        let app = w.path(&apps[0]).display().to_string();
        w.ctl(&["podman", "remove", "--app", &app]).success();
    }
}

#[test]
fn files_of_a_registration_killed_midway_are_collected() {
    let w = World::new();
    let name = util::unique("killed");
    std::fs::create_dir_all(&w.flakes).unwrap();
    std::fs::create_dir_all(&w.bin).unwrap();
    // What a `kill -9` between staging and renaming leaves: the staged YAML and the staged
    // app symlink of a process that is gone (no pid reaches 10^9).
    let staged_yaml = w.flakes.join(format!(".{name}.yaml.999999999.tmp"));
    std::fs::write(&staged_yaml, "container:\n  name: x\n").unwrap();
    let staged_link = w.bin.join(format!(".{name}.flake.999999999.tmp"));
    std::os::unix::fs::symlink(util::bin_dir().join("podman-pilot"), &staged_link).unwrap();

    w.ctl(&["list"]).success();
    assert!(!staged_yaml.exists(), "list collects a staged YAML");

    std::fs::write(&staged_yaml, "container:\n  name: x\n").unwrap();
    let app = w.register(&name, "/bin/true", &[]);
    assert!(!staged_yaml.exists(), "registration collects a staged YAML");
    assert!(!staged_link.is_symlink(), "and the staged app symlink");
    w.ctl(&["podman", "remove", "--app", &app.display().to_string()])
        .success();
    assert!(
        !w.tree().iter().any(|p| p.contains(&name)),
        "{:?}",
        w.tree()
    );
}

#[test]
fn registrations_killed_at_any_moment_leave_nothing_that_blocks_the_next() {
    let w = World::new();
    let name = util::unique("kill9");
    let app = w.bin.join(&name);
    let ctl = util::bin_dir().join("flake-ctl");
    // Killed after 0 to ~20 ms: before, during and after staging and renaming.
    for step in 0..24u64 {
        let mut child = w
            .command(&ctl)
            .args([
                "podman",
                "register",
                "--force",
                "--container",
                IMAGE,
                "--app",
            ])
            .arg(&app)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(std::time::Duration::from_micros(step * 800));
        let _ = child.kill();
        let _ = child.wait();
    }
    w.ctl(&["list"]).success();
    let staged = |tree: &[String]| -> Vec<String> {
        tree.iter()
            .filter(|p| p.starts_with("flakes/") && p.ends_with(".tmp"))
            .cloned()
            .collect()
    };
    assert_eq!(
        staged(&w.tree()),
        Vec::<String>::new(),
        "list collected them"
    );
    let app_s = app.display().to_string();
    w.ctl(&[
        "podman",
        "register",
        "--force",
        "--container",
        IMAGE,
        "--app",
        &app_s,
    ])
    .success();
    assert!(
        !w.tree().iter().any(|p| p.ends_with(".tmp")),
        "{:?}",
        w.tree()
    );
    w.ctl(&["podman", "remove", "--app", &app_s]).success();
    assert!(
        !w.tree().iter().any(|p| p.contains(&name)),
        "{:?}",
        w.tree()
    );
}

/// A VM flake registration as `flake-ctl firecracker register` writes it (without needing
/// a pulled image).
fn vm_registration(w: &World, name: &str) -> PathBuf {
    let app = w.bin.join(name);
    std::fs::create_dir_all(&w.bin).unwrap();
    std::fs::create_dir_all(&w.flakes).unwrap();
    std::os::unix::fs::symlink(util::bin_dir().join("firecracker-pilot"), &app).unwrap();
    let yaml = format!(
        "vm:\n  name: guest\n  target_app_path: /bin/sh\n  host_app_path: {}\n  runtime:\n    \
         vmm: qemu\n",
        app.display()
    );
    std::fs::write(w.flakes.join(format!("{name}.yaml")), yaml).unwrap();
    app
}

#[test]
fn remove_refuses_the_flake_of_the_other_engine() {
    let w = World::new();
    let pod = w.register(&util::unique("pod"), "/bin/true", &[]);
    let vm = vm_registration(&w, &util::unique("vm"));
    let before = w.tree();
    let cases = [
        ("firecracker", &pod, "podman"),
        ("podman", &vm, "firecracker"),
    ];
    for (wrong, app, right) in cases {
        let app_s = app.display().to_string();
        for force in [&[][..], &["--force"][..]] {
            let run = w.ctl(&[&[wrong, "remove", "--app", &app_s][..], force].concat());
            run.expect_code(1);
            let stderr = run.stderr();
            assert_eq!(stderr.lines().count(), 1, "{run}");
            assert!(
                stderr.contains(&format!("is a {right} flake"))
                    && stderr.contains(&format!("flake-ctl {right} remove --app {app_s}")),
                "{run}"
            );
        }
    }
    assert_eq!(w.tree(), before, "nothing removed");
    w.ctl(&["podman", "remove", "--app", &pod.display().to_string()])
        .success();
    w.ctl(&["firecracker", "remove", "--app", &vm.display().to_string()])
        .success();
}

/// A delta image on the test image, removed again when dropped.
struct DeltaImage(String);

impl DeltaImage {
    fn new(w: &World, tag: &str) -> Self {
        let tree = w.path("delta/etc");
        std::fs::create_dir_all(&tree).unwrap();
        std::fs::write(tree.join("delta-note"), "from the delta\n").unwrap();
        let image = format!("localhost/{tag}-delta:1");
        let archive = w.path("delta.tar");
        let tarred = Command::new("tar")
            .arg("-C")
            .arg(w.path("delta"))
            .arg("-cf")
            .arg(&archive)
            .arg(".")
            .status()
            .unwrap();
        assert!(tarred.success());
        let imported = Command::new("podman")
            .arg("import")
            .arg("-q")
            .arg(&archive)
            .arg(&image)
            .stdout(Stdio::null())
            .status()
            .unwrap();
        assert!(imported.success());
        DeltaImage(image)
    }
}

impl Drop for DeltaImage {
    fn drop(&mut self) {
        let _ = Command::new("podman").args(["rmi", "-f", &self.0]).output();
    }
}

#[test]
fn remove_leaves_nothing_of_a_podman_flake_in_any_mode() {
    require_resume!();
    let w = World::new();
    let tag = util::unique("rmall");
    let delta = DeltaImage::new(&w, &tag);
    let modes: [(&str, &[&str]); 3] = [
        ("one", &["--target", "/bin/sh"]),
        ("res", &["--target", "/bin/sh", "--resume"]),
        ("lay", &["--target", "/bin/sh", "--base", IMAGE]),
    ];
    for (mode, extra) in modes {
        let name = format!("{tag}-{mode}");
        let _guard = util::Containers(name.clone());
        let container = if mode == "lay" { &delta.0 } else { IMAGE };
        let before = tree_set(&w);
        let app = w.bin.join(&name);
        let app_s = app.display().to_string();
        let register = [
            &[
                "podman",
                "register",
                "--container",
                container,
                "--app",
                &app_s,
                "--opt",
                r"\--network none",
            ][..],
            extra,
        ]
        .concat();
        w.ctl(&register).success();
        let run = w.app(&app, &["-c", "echo ran"], None);
        run.success();
        assert_eq!(run.stdout(), "ran\n", "{run}");
        if mode == "res" {
            assert!(!containers_of(&name).is_empty(), "the instance runs");
        }
        if mode == "lay" {
            assert!(
                !assembled_images(&name).is_empty(),
                "an image was assembled"
            );
        }
        w.ctl(&["podman", "remove", "--app", &app_s]).success();
        let left = left_behind(&before, &tree_set(&w));
        assert!(left.is_empty(), "{mode}: left {left:?}");
        assert!(
            !w.tree().iter().any(|p| p.contains(&name)),
            "{mode}: {:?}",
            w.tree()
        );
        assert_eq!(containers_of(&name), Vec::<String>::new(), "{mode}");
        assert_eq!(assembled_images(&name), Vec::<String>::new(), "{mode}");
    }
}

fn link_exists(name: &str) -> bool {
    std::path::Path::new("/sys/class/net").join(name).exists()
}

/// VMM processes whose command line names the world's directory.
fn vmm_processes(w: &World) -> Vec<String> {
    pgrep(&format!(
        "(qemu-system|firecracker).*{}",
        w.dir.path().display()
    ))
}

fn pgrep(pattern: &str) -> Vec<String> {
    let out = Command::new("pgrep")
        .args(["-f", pattern])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

#[test]
fn remove_stops_the_vms_of_a_flake_and_leaves_nothing() {
    let Some((_vms, w, fixtures, sci)) = util::vm::vm_world() else {
        return;
    };
    // A first flake pulls the image; what it leaves is the baseline.
    let seed = util::vm::vm_flake(&w, &fixtures, &sci, "vmseed");
    w.ctl(&[
        "firecracker",
        "--user",
        "remove",
        "--app",
        &seed.display().to_string(),
    ])
    .success();
    let before = tree_set(&w);
    let one = util::vm::vm_flake_with(
        &w,
        &fixtures,
        &sci,
        "vmrmone",
        &["--overlay-size", "16MiB"],
        "",
    );
    let res = util::vm::vm_flake_with(
        &w,
        &fixtures,
        &sci,
        "vmrmres",
        &["--resume", "--overlay-size", "16MiB", util::vm::WITH_NET],
        "",
    );
    w.app(&one, &["-c", "echo one"], None).success();
    w.app(&res, &["-c", "echo res"], None).success();
    w.app(&res, &["@second", "-c", "echo res"], None).success();
    assert!(
        util::vm::running_vm(&w, "vmrmres").is_some(),
        "the resume VM runs"
    );
    assert!(util::vm::running_vm(&w, "vmrmres@second").is_some());
    // The TAP devices root's launcher made for the two resume VMs.
    let taps: Vec<String> = ["vmrmres", "vmrmres@second"]
        .iter()
        .map(|label| {
            let marker = w.path(&format!("ids/0/.vm/{label}/tap.created"));
            // The device's name, then the namespace it was made in.
            let mark = std::fs::read_to_string(&marker).unwrap();
            mark.lines().next().unwrap_or_default().to_string()
        })
        .collect();
    for tap in &taps {
        assert!(link_exists(tap), "{tap} made for the VM");
    }
    for app in [&one, &res] {
        let run = w.ctl(&[
            "firecracker",
            "--user",
            "remove",
            "--app",
            &app.display().to_string(),
        ]);
        run.success();
    }
    for tap in &taps {
        assert!(!link_exists(tap), "{tap} removed with the flake");
    }
    assert_eq!(
        vmm_processes(&w),
        Vec::<String>::new(),
        "no VM left running"
    );
    let left = left_behind(&before, &tree_set(&w));
    assert!(left.is_empty(), "left {left:?}");
    let show = w.ctl(&["firecracker", "show"]);
    assert!(show.stdout().contains("No instance(s) found"), "{show}");
}

#[test]
fn an_engine_error_shows_no_environment_values() {
    require_resume!();
    let w = World::new();
    let name = util::unique("secret");
    let _guard = util::Containers(name.clone());
    let app = w.bin.join(&name);
    let app_s = app.display().to_string();
    let long = format!(r"\--label=padding={}", "p".repeat(600));
    w.ctl(&[
        "podman",
        "register",
        "--container",
        IMAGE,
        "--app",
        &app_s,
        "--target",
        "/bin/sh",
        "--resume",
        "--opt",
        r"\-e SECRET=xyz-hidden-1",
        "--opt",
        r"\--env=TOKEN=xyz-hidden-2",
        "--opt",
        &long,
        "--opt",
        r"\--memory not-a-size",
    ])
    .success();
    let run = w.app(&app, &["-c", "true"], None);
    run.expect_code(125);
    let stderr = run.stderr();
    assert!(!stderr.contains("xyz-hidden"), "{run}");
    assert!(
        stderr.contains("podman"),
        "the failing command is named: {run}"
    );
    assert!(stderr.len() < 1000, "the command line is cut: {run}");
    w.ctl(&["podman", "remove", "--app", &app_s]).success();
}

#[test]
fn pilot_debug_prints_the_engine_commands_masked() {
    require_podman!();
    let w = World::new();
    let name = util::unique("dbg");
    let app = w.register(
        &name,
        "/bin/echo",
        &[r"\-e SECRET=xyz-hidden", r"\--network none"],
    );
    let mut cmd = w.command(&app);
    cmd.arg("hello").env("PILOT_DEBUG", "1");
    let run = Run::from_command(cmd);
    run.success();
    assert_eq!(run.stdout(), "hello\n", "{run}");
    let stderr = run.stderr();
    assert!(
        stderr.contains("podman-pilot: running ") && stderr.contains(" run "),
        "{run}"
    );
    // The value travels in an inherited env file; the debug line shows neither it nor,
    // where it stays on the command line (through sudo), more than `SECRET=***`.
    assert!(
        stderr.contains("--env-file=/dev/fd/") && !stderr.contains("xyz-hidden"),
        "{run}"
    );
    let quiet = w.app(&app, &["hello"], None);
    assert_eq!(quiet.stderr(), "", "{quiet}");
    w.ctl(&["podman", "remove", "--app", &app.display().to_string()])
        .success();
}

#[test]
fn a_broken_global_config_is_reported_once_naming_key_and_known_keys() {
    let w = World::new();
    let app = w.register(&util::unique("cfg"), "/bin/true", &[]);
    let good = std::fs::read_to_string(&w.config).unwrap();
    std::fs::write(&w.config, format!("{good}  flake_dir: /x\n")).unwrap();
    let config = w.config.display().to_string();
    for run in [w.ctl(&["list"]), w.app(&app, &[], None)] {
        let stderr = run.stderr();
        assert_eq!(stderr.lines().count(), 1, "{run}");
        assert_eq!(stderr.matches("flake_dir").count(), 1, "said once: {run}");
        assert!(stderr.contains(&config), "names the file: {run}");
        assert!(
            stderr.contains("flakes_dir") && stderr.contains("podman_storage_conf"),
            "names the known keys: {run}"
        );
    }
    std::fs::write(&w.config, good).unwrap();
}

/// A directory the unprivileged user can read, holding copies of the binaries.
fn user_bin_dir() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::Builder::new()
        .prefix("flake-lifecycle-")
        .tempdir()
        .unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let bin = dir.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    for name in ["flake-ctl", "podman-pilot"] {
        std::fs::copy(util::bin_dir().join(name), bin.join(name)).unwrap();
    }
    (dir, bin)
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

fn as_user(script: &str) -> std::process::Output {
    Command::new("su")
        .args(["-", USER, "-c", script])
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

#[test]
fn a_permission_error_is_reported_once() {
    if !user_exists() {
        return;
    }
    let (keep, bin) = user_bin_dir();
    let config = keep.path().join("flakes.yml");
    let flakes = keep.path().join("flakes");
    std::fs::create_dir(&flakes).unwrap();
    std::fs::write(
        &config,
        format!("generic:\n  flakes_dir: {}\n", flakes.display()),
    )
    .unwrap();
    let script = format!(
        "FLAKES_CONFIG={} {} podman register --container {IMAGE} --app /tmp/{}",
        config.display(),
        bin.join("flake-ctl").display(),
        util::unique("denied"),
    );
    let out = as_user(&script);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert_eq!(
        stderr.matches("os error 13").count(),
        1,
        "said once: {stderr}"
    );
    assert!(stderr.contains(&flakes.display().to_string()), "{stderr}");
}

#[test]
fn a_root_flake_sudo_refuses_exits_125() {
    require_podman!();
    if !user_exists() {
        return;
    }
    let (keep, bin) = user_bin_dir();
    let config = keep.path().join("flakes.yml");
    let flakes = keep.path().join("flakes");
    std::fs::write(
        &config,
        format!("generic:\n  flakes_dir: {}\n", flakes.display()),
    )
    .unwrap();
    let name = util::unique("nosudo");
    let app = keep.path().join("apps").join(&name);
    let register = Command::new(bin.join("flake-ctl"))
        .env("FLAKES_CONFIG", &config)
        .args([
            "podman",
            "register",
            "--container",
            IMAGE,
            "--target",
            "/bin/sh",
        ])
        .args(["--opt", r"\--network none", "--app"])
        .arg(&app)
        .output()
        .unwrap();
    assert!(register.status.success(), "{register:?}");
    // The sudoers rule of the test user names /usr/bin/podman; a podman found first on
    // PATH is another program, which no rule allows.
    let other = keep.path().join("other");
    std::fs::create_dir(&other).unwrap();
    let podman = other.join("podman");
    std::fs::write(&podman, "#!/bin/sh\nexec /usr/bin/podman \"$@\"\n").unwrap();
    for path in [keep.path(), &keep.path().join("apps"), &other, &podman] {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let script = format!(
        "PATH={}:$PATH FLAKES_CONFIG={} {} -c 'exit 3'",
        other.display(),
        config.display(),
        app.display()
    );
    let out = as_user(&script);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(125), "{out:?}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("sudo") && stderr.contains(&name) && stderr.contains("sudoers"),
        "{stderr}"
    );
    // With the allowed podman the same call runs and exits with the app's status.
    let allowed = format!(
        "FLAKES_CONFIG={} {} -c 'exit 3'",
        config.display(),
        app.display()
    );
    assert_eq!(as_user(&allowed).status.code(), Some(3));
}
