// SPDX-License-Identifier: MIT
//! Layered flakes, includes and host dependencies against real podman.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::tests_outside_test_module
)]

mod util;

use std::path::{Path, PathBuf};
use std::process::Command;

use util::{unique, World, IMAGE};

/// Images made from directory trees for one test, removed (with what was assembled from
/// them) when dropped.
struct Images {
    names: Vec<String>,
    flake: String,
}

impl Images {
    fn new(flake: &str) -> Self {
        Images {
            names: Vec::new(),
            flake: flake.to_string(),
        }
    }

    /// Imports `tree` as `localhost/<flake>-<suffix>:1`.
    fn import(&mut self, tree: &Path, suffix: &str) -> String {
        let name = format!("localhost/{}-{suffix}:1", self.flake);
        let tar = Command::new("tar")
            .args(["--xattrs", "--xattrs-include=*", "--numeric-owner", "-C"])
            .arg(tree)
            .args(["-cf", "-", "."])
            .output()
            .unwrap();
        assert!(tar.status.success(), "{tar:?}");
        let mut import = Command::new("podman")
            .args(["import", "-q", "-", &name])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::io::Write::write_all(&mut import.stdin.take().unwrap(), &tar.stdout).unwrap();
        assert!(import.wait().unwrap().success());
        self.names.push(name.clone());
        name
    }

    /// Tags of images assembled for the flake.
    fn assembled(&self) -> Vec<String> {
        assembled_for(&self.flake)
    }
}

/// Tags of images assembled for `flake`.
fn assembled_for(flake: &str) -> Vec<String> {
    let filter = format!("label=io.flake-pilot.assembled={flake}");
    let out = Command::new("podman")
        .args([
            "images",
            "--filter",
            &filter,
            "--format",
            "{{.Repository}}:{{.Tag}}",
        ])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

impl Drop for Images {
    fn drop(&mut self) {
        for image in self.assembled().iter().chain(&self.names) {
            let _ = Command::new("podman").args(["rmi", "-f", image]).output();
        }
    }
}

fn write(path: &Path, text: &str, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// Makes the world's directory searchable by every user: host dependencies are only taken
/// from paths any local user could read, and a temporary directory is private.
fn public(w: &World) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(w.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
}

fn register(w: &World, name: &str, extra: &[&str]) -> PathBuf {
    let app = w.bin.join(name);
    let app_s = app.display().to_string();
    let mut args = vec!["podman", "register", "--app", &app_s];
    args.extend(extra);
    args.extend(["--opt", r"\--network none"]);
    w.ctl(&args).success();
    app
}

/// Runs `check` on the mounted root of `image` (host tools see xattrs and owners exactly).
fn with_mounted(image: &str, check: impl FnOnce(&Path)) {
    let out = Command::new("podman")
        .args(["image", "mount", image])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let root = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    check(&root);
    let _ = Command::new("podman")
        .args(["image", "umount", image])
        .output();
}

#[test]
fn delta_on_base_with_layers_keeps_owners_and_capabilities() {
    require_podman!();
    let w = World::new();
    let name = unique("layered");
    let mut images = Images::new(&name);
    let trees = w.path("trees");
    write(
        &trees.join("delta/usr/bin/hello"),
        "#!/bin/sh\necho \"delta on $(cat /etc/layered)\"\n",
        0o755,
    );
    write(&trees.join("l1/etc/layered"), "layer one\n", 0o644);
    write(&trees.join("l1/data/owned"), "x\n", 0o640);
    std::os::unix::fs::chown(trees.join("l1/data/owned"), Some(1234), Some(5678)).unwrap();
    std::fs::copy("/bin/busybox", trees.join("l1/bin/pinger")).ok();
    std::fs::create_dir_all(trees.join("l1/bin")).unwrap();
    std::fs::copy("/bin/busybox", trees.join("l1/bin/pinger")).unwrap();
    let setcap = Command::new("setcap")
        .args(["cap_net_raw+ep"])
        .arg(trees.join("l1/bin/pinger"))
        .status()
        .unwrap();
    assert!(setcap.success());
    write(&trees.join("l2/etc/layered"), "layer two\n", 0o644);
    let delta = images.import(&trees.join("delta"), "delta");
    let l1 = images.import(&trees.join("l1"), "l1");
    let l2 = images.import(&trees.join("l2"), "l2");
    let app = register(
        &w,
        &name,
        &[
            "--container",
            &delta,
            "--base",
            IMAGE,
            "--layer",
            &l1,
            &l2,
            "--target",
            "/usr/bin/hello",
        ],
    );

    let first = w.app(&app, &[], None);
    first.success();
    assert_eq!(
        first.stdout(),
        "delta on layer two\n",
        "the later layer wins: {first}"
    );
    let second = w.app(&app, &[], None);
    second.success();
    assert_eq!(second.stdout(), first.stdout());
    let assembled = images.assembled();
    let keep = assembled.clone();
    assert_eq!(assembled.len(), 1, "{assembled:?}");
    with_mounted(&assembled[0], |root| {
        let caps = Command::new("getcap")
            .arg(root.join("bin/pinger"))
            .output()
            .unwrap();
        assert!(
            String::from_utf8_lossy(&caps.stdout).contains("cap_net_raw"),
            "{caps:?}"
        );
        use std::os::unix::fs::MetadataExt;
        let meta = std::fs::metadata(root.join("data/owned")).unwrap();
        assert_eq!(
            (meta.uid(), meta.gid(), meta.mode() & 0o777),
            (1234, 5678, 0o640)
        );
    });
    w.ctl(&["podman", "remove", "--app", &app.display().to_string()])
        .success();
    assert!(images.assembled().is_empty(), "remove collects {keep:?}");
}

#[test]
fn includes_appear_and_changes_are_seen_on_the_next_launch() {
    require_podman!();
    let w = World::new();
    let name = unique("incl");
    let images = Images::new(&name);
    let src = w.path("tar-src");
    write(&src.join("opt/licence/key"), "from tar\n", 0o644);
    let tar = w.path("include.tar");
    let made = Command::new("tar")
        .arg("-C")
        .arg(&src)
        .arg("-cf")
        .arg(&tar)
        .arg(".")
        .status()
        .unwrap();
    assert!(made.success());
    let host_dir = w.path("certs");
    write(&host_dir.join("ca.pem"), "version one\n", 0o644);
    let tar_s = tar.display().to_string();
    let dir_s = host_dir.display().to_string();
    let app = register(
        &w,
        &name,
        &[
            "--container",
            IMAGE,
            "--target",
            "/bin/cat",
            "--include-tar",
            &tar_s,
            "--include-path",
            &dir_s,
        ],
    );
    let inside = format!("{}/ca.pem", host_dir.display());
    let run = w.app(&app, &["/opt/licence/key", &inside], None);
    run.success();
    assert_eq!(run.stdout(), "from tar\nversion one\n", "{run}");

    std::thread::sleep(std::time::Duration::from_millis(20));
    write(&host_dir.join("ca.pem"), "version two\n", 0o644);
    let run = w.app(&app, &[&inside], None);
    assert_eq!(run.stdout(), "version two\n", "{run}");
    assert_eq!(
        images.assembled().len(),
        1,
        "the outdated assembly is removed"
    );

    std::fs::remove_file(host_dir.join("ca.pem")).unwrap();
    std::fs::remove_dir(&host_dir).unwrap();
    let run = w.app(&app, &[&inside], None);
    run.expect_code(125);
    assert!(
        run.stderr().contains(&dir_s) && run.stderr().contains("include.path"),
        "{run}"
    );
}

#[test]
fn missing_layer_is_a_clear_error_and_leaves_nothing() {
    require_podman!();
    let w = World::new();
    let name = unique("nolayer");
    let images = Images::new(&name);
    let missing = format!("localhost/{name}-never:1");
    let app = register(
        &w,
        &name,
        &[
            "--container",
            IMAGE,
            "--base",
            IMAGE,
            "--layer",
            &missing,
            "--target",
            "/bin/true",
        ],
    );
    let run = w.app(&app, &[], None);
    run.expect_code(125);
    assert!(
        run.stderr().contains(&missing) && run.stderr().contains(&name),
        "{run}"
    );
    assert_eq!(run.stderr().lines().count(), 1, "{run}");
    assert!(images.assembled().is_empty());
    assert!(util::containers_of(&name).is_empty());
    let cache = w.path("ids/0/.cache");
    let left: Vec<_> = std::fs::read_dir(&cache)
        .map(|d| d.filter_map(Result::ok).map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(
        left.iter().all(|f| f.to_string_lossy().ends_with(".lock")),
        "{left:?}"
    );
}

#[test]
fn host_dependencies_listed_by_the_image_are_provisioned_not_executed() {
    require_podman!();
    let w = World::new();
    public(&w);
    let name = unique("hostdeps");
    let mut images = Images::new(&name);
    let host_file = w.path("host-secret.conf");
    write(&host_file, "from the host\n", 0o644);
    let marker = w.path("systemfiles-ran");
    let trees = w.path("trees");
    write(
        &trees.join("delta/removed"),
        &format!("{}\n", host_file.display()),
        0o644,
    );
    write(
        &trees.join("delta/systemfiles"),
        &format!("#!/bin/sh\ntouch {}\n", marker.display()),
        0o755,
    );
    let delta = images.import(&trees.join("delta"), "delta");
    let app = register(
        &w,
        &name,
        &[
            "--container",
            &delta,
            "--base",
            IMAGE,
            "--target",
            "/bin/cat",
            "--check-host-dependencies",
        ],
    );
    let run = w.app(&app, &[&host_file.display().to_string()], None);
    run.success();
    assert_eq!(run.stdout(), "from the host\n", "{run}");
    assert!(!marker.exists(), "/systemfiles must never run on the host");
}

#[test]
fn systemfiles_script_runs_only_when_the_flake_opts_in() {
    require_podman!();
    let w = World::new();
    public(&w);
    let name = unique("sysexec");
    let mut images = Images::new(&name);
    let host_file = w.path("generated-list-entry");
    write(&host_file, "listed by a script\n", 0o644);
    let marker = w.path("script-ran");
    let trees = w.path("trees");
    let script = format!(
        "#!/bin/sh\ntouch {}\necho {}\n",
        marker.display(),
        host_file.display()
    );
    write(&trees.join("delta/systemfiles"), &script, 0o755);
    let delta = images.import(&trees.join("delta"), "delta");
    let app = register(
        &w,
        &name,
        &[
            "--container",
            &delta,
            "--base",
            IMAGE,
            "--target",
            "/bin/cat",
            "--check-host-dependencies",
        ],
    );
    std::fs::write(
        w.flakes.join(format!("{name}.d/exec.yaml")),
        "container:\n  execute_systemfiles: true\n",
    )
    .unwrap();
    let run = w.app(&app, &[&host_file.display().to_string()], None);
    run.success();
    assert_eq!(run.stdout(), "listed by a script\n", "{run}");
    assert!(marker.exists(), "the opted-in script ran on the host");
}

/// An image's host-dependency list is hostile input: an entry that climbs out with `..`
/// (here onto a host file) must be refused before anything is copied, so the file that the
/// entry names, read and written at once, is never truncated.
#[test]
fn listed_host_path_with_dot_dot_is_refused_and_the_victim_untouched() {
    require_podman!();
    let w = World::new();
    let name = unique("hostile");
    let mut images = Images::new(&name);
    let victim = w.path("victim");
    write(&victim, "precious\n", 0o644);
    let entry = format!("{}{}", "/..".repeat(32), victim.display());
    let (app, delta) = delta_listing(&w, &mut images, &name, &[&entry], &[]);
    let run = w.app(&app, &["-c", "true"], None);
    assert_eq!(
        std::fs::read_to_string(&victim).unwrap(),
        "precious\n",
        "the victim was written: {run}"
    );
    run.expect_code(125);
    assert_eq!(run.stderr().lines().count(), 1, "{run}");
    assert!(
        run.stderr().contains(&delta) && run.stderr().contains(&entry),
        "names the image and the entry: {run}"
    );
}

/// A delta flake provisions the host files its images list without any flag (as Flake
/// Pilot 3.1 did), and every launch sees them as they are then: new content after a
/// change, a clear refusal once one is gone, unless `%ignore_sync_error`.
#[test]
fn delta_flake_gets_current_host_files_at_every_launch() {
    require_podman!();
    let w = World::new();
    public(&w);
    let name = unique("deltahost");
    let mut images = Images::new(&name);
    let host_file = w.path("host-lib.conf");
    write(&host_file, "version one\n", 0o644);
    let trees = w.path("trees");
    write(
        &trees.join("delta/removed"),
        &format!("# provided by the host\n{}\n", host_file.display()),
        0o644,
    );
    let delta = images.import(&trees.join("delta"), "delta");
    let app = register(
        &w,
        &name,
        &[
            "--container",
            &delta,
            "--base",
            IMAGE,
            "--target",
            "/bin/sh",
        ],
    );
    let script = format!("cat {} 2>/dev/null || echo gone", host_file.display());
    let run = w.app(&app, &["-c", &script], None);
    run.success();
    assert_eq!(run.stdout(), "version one\n", "{run}");

    write(&host_file, "version two\n", 0o644);
    let run = w.app(&app, &["-c", &script], None);
    run.success();
    assert_eq!(run.stdout(), "version two\n", "changed on the host: {run}");
    let run = w.app(&app, &["-c", &script], None);
    assert_eq!(run.stdout(), "version two\n", "unchanged since: {run}");

    std::fs::remove_file(&host_file).unwrap();
    let run = w.app(&app, &["-c", &script], None);
    run.expect_code(125);
    assert_eq!(run.stderr().lines().count(), 1, "{run}");
    assert!(
        run.stderr().contains(&host_file.display().to_string())
            && run.stderr().contains("%ignore_sync_error"),
        "{run}"
    );
    let run = w.app(&app, &["%ignore_sync_error", "-c", &script], None);
    run.success();
    assert_eq!(run.stdout(), "gone\n", "{run}");
    let run = w.app(&app, &["-c", &script], None);
    run.expect_code(125);
}

/// A listed host symlink is staged as a link; a later entry below it must never be written
/// through that link (which would land on, and truncate, the host file it points to).
#[test]
fn listed_entry_below_a_listed_link_never_writes_through_it() {
    require_podman!();
    let w = World::new();
    public(&w);
    let name = unique("linkwalk");
    let mut images = Images::new(&name);
    let outside = w.path("outside");
    write(&outside.join("victim"), "precious\n", 0o644);
    let link = w.path("dir/link");
    std::fs::create_dir_all(link.parent().unwrap()).unwrap();
    std::os::unix::fs::symlink(&outside, &link).unwrap();
    let below = format!("{}/victim", link.display());
    let entries = [link.to_str().unwrap(), below.as_str()];
    let (app, _delta) = delta_listing(&w, &mut images, &name, &entries, &[]);
    let run = w.app(&app, &["%ignore_sync_error", "-c", "true"], None);
    assert_eq!(
        std::fs::read_to_string(outside.join("victim")).unwrap(),
        "precious\n",
        "written through the link: {run}"
    );
    run.expect_code(125);
    assert_eq!(run.stderr().lines().count(), 1, "{run}");
    assert!(
        run.stderr().contains("symbolic link") && run.stderr().contains("victim"),
        "{run}"
    );
}

/// `register --info` prints the description an image ships, read beneath the image's mount
/// point: a description that is a link (to a host file, say) is refused, never followed.
#[test]
fn info_reads_the_description_inside_the_image_only() {
    require_podman!();
    let w = World::new();
    let name = unique("info");
    let mut images = Images::new(&name);
    let secret = w.path("host-secret");
    write(&secret, "host secret\n", 0o600);
    let trees = w.path("trees");
    write(
        &trees.join(format!("plain/{name}-plain.yaml")),
        "container:\n  name: shipped\n",
        0o644,
    );
    std::fs::create_dir_all(trees.join("linked")).unwrap();
    std::os::unix::fs::symlink(&secret, trees.join(format!("linked/{name}-linked.yaml"))).unwrap();
    let plain = images.import(&trees.join("plain"), "plain");
    let linked = images.import(&trees.join("linked"), "linked");
    let run = w.ctl(&["podman", "register", "--info", "--container", &plain]);
    run.success();
    assert_eq!(run.stdout(), "container:\n  name: shipped\n", "{run}");
    let run = w.ctl(&["podman", "register", "--info", "--container", &linked]);
    run.expect_code(1);
    assert!(!run.stdout().contains("host secret"), "{run}");
    assert!(!run.stderr().contains("host secret"), "{run}");
    assert!(run.stderr().contains("is a symbolic link"), "{run}");
}

/// Registers delta flake `name` on the test image whose delta lists `entries` in
/// `/removed` (plus `extra` files in its tree), running `/bin/sh`.
fn delta_listing(
    w: &World,
    images: &mut Images,
    name: &str,
    entries: &[&str],
    extra: &[(&str, u64)],
) -> (PathBuf, String) {
    let tree = w.path(&format!("trees/{name}"));
    write(
        &tree.join("removed"),
        &format!("{}\n", entries.join("\n")),
        0o644,
    );
    for (file, size) in extra {
        let path = tree.join(file);
        std::fs::File::create(&path)
            .unwrap()
            .set_len(*size)
            .unwrap();
    }
    let delta = images.import(&tree, name.rsplit('-').next().unwrap());
    let app = register(
        w,
        name,
        &[
            "--container",
            &delta,
            "--base",
            IMAGE,
            "--target",
            "/bin/sh",
        ],
    );
    (app, delta)
}

/// Asserts that launching `app` stops with one line naming `delta`, `entry` and `why`,
/// also with `%ignore_sync_error` (which forgives only missing files).
fn assert_refused(w: &World, app: &Path, delta: &str, entry: &str, why: &str) {
    for args in [&["-c", "true"][..], &["%ignore_sync_error", "-c", "true"]] {
        let run = w.app(app, args, None);
        run.expect_code(125);
        assert_eq!(run.stderr().lines().count(), 1, "{run}");
        let err = run.stderr();
        assert!(
            err.contains(delta) && err.contains(entry) && err.contains(why),
            "names the image, the entry and why ({why}): {run}"
        );
    }
}

/// A hostile image asks for host files that only root may read (a private key, the
/// shadow file, a registry credential): host dependencies give an image only what any
/// local user could read, so the copy is refused and the content lands in no image.
#[test]
fn host_files_only_root_can_read_are_refused() {
    require_podman!();
    let w = World::new();
    public(&w);
    let name = unique("hostsecret");
    let mut images = Images::new(&name);
    let secret = w.path("root-only/id_ed25519");
    write(&secret, "PRIVATE KEY MATERIAL\n", 0o600);
    let hidden = w.path("private-dir/readable.conf");
    write(&hidden, "behind a private directory\n", 0o644);
    std::fs::set_permissions(
        w.path("private-dir"),
        std::os::unix::fs::PermissionsExt::from_mode(0o700),
    )
    .unwrap();
    let cases = [
        (secret.display().to_string(), "not readable by other users"),
        (
            hidden.display().to_string(),
            "not searchable by other users",
        ),
    ];
    for (i, (entry, why)) in cases.iter().enumerate() {
        let flake = format!("{name}-c{i}");
        let (app, delta) = delta_listing(&w, &mut images, &flake, &[entry], &[]);
        assert_refused(&w, &app, &delta, entry, why);
        let run = w.app(&app, &["-c", &format!("cat {entry}")], None);
        assert!(!run.stdout().contains("PRIVATE") && !run.stdout().contains("behind"));
        let assembled = assembled_for(&flake);
        for image in &assembled {
            with_mounted(image, |root| {
                assert!(
                    !root.join(&entry[1..]).exists(),
                    "{entry} copied into {image}"
                );
            });
        }
        images.names.extend(assembled);
    }
}

/// Files of pseudo file systems are no host dependencies: `/proc/self/pagemap` (a regular
/// file of about 256 GiB when opened `O_PATH`), `/proc/kcore` and sysfs files are refused
/// before anything is read.
#[test]
fn pseudo_file_system_entries_are_refused() {
    require_podman!();
    let w = World::new();
    let name = unique("hostproc");
    let mut images = Images::new(&name);
    let cases = [
        ("/proc/self/pagemap", "procfs"),
        ("/proc/self/status", "procfs"),
        ("/sys/kernel/profiling", "sysfs"),
    ];
    for (i, (entry, why)) in cases.into_iter().enumerate() {
        if !Path::new(entry).exists() {
            util::skip(&format!("{entry} does not exist on this host"));
            continue;
        }
        let flake = format!("{name}-c{i}");
        let (app, delta) = delta_listing(&w, &mut images, &flake, &[entry], &[]);
        let started = std::time::Instant::now();
        assert_refused(&w, &app, &delta, entry, why);
        assert!(started.elapsed() < std::time::Duration::from_secs(120));
        images.names.extend(assembled_for(&flake));
    }
}

/// A listed host file over the per-file limit (1 GiB; here a sparse file, so nothing is
/// written) is refused by its size before it is read.
#[test]
fn host_files_over_the_size_limit_are_refused() {
    require_podman!();
    let w = World::new();
    public(&w);
    let name = unique("hostbig");
    let mut images = Images::new(&name);
    let big = w.path("huge.so");
    write(&big, "", 0o644);
    std::fs::File::options()
        .write(true)
        .open(&big)
        .unwrap()
        .set_len((1 << 30) + 1)
        .unwrap();
    let entry = big.display().to_string();
    let (app, delta) = delta_listing(&w, &mut images, &name, &[&entry], &[]);
    let started = std::time::Instant::now();
    assert_refused(&w, &app, &delta, &entry, "more than the limit");
    assert!(
        started.elapsed() < std::time::Duration::from_secs(120),
        "refused by its size, not after copying: {:?}",
        started.elapsed()
    );
}

/// The build makes every copied file root-owned, so a setuid program of an unprivileged
/// user must lose its setuid and setgid bits (it would become setuid-root); root's keep
/// theirs.
#[test]
fn setuid_bits_of_users_files_are_not_copied() {
    require_podman!();
    use std::os::unix::fs::PermissionsExt;
    let w = World::new();
    public(&w);
    let name = unique("hostsuid");
    let mut images = Images::new(&name);
    let user = w.path("user-tool");
    let root = w.path("root-tool");
    for path in [&user, &root] {
        write(path, "#!/bin/sh\n", 0o755);
    }
    std::os::unix::fs::chown(&user, Some(1000), Some(1000)).unwrap();
    std::fs::set_permissions(&user, std::fs::Permissions::from_mode(0o6755)).unwrap();
    std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o4755)).unwrap();
    let (user_s, root_s) = (user.display().to_string(), root.display().to_string());
    let (app, _) = delta_listing(&w, &mut images, &name, &[&user_s, &root_s], &[]);
    let script = format!("stat -c '%a %u' {user_s} {root_s}");
    let run = w.app(&app, &["-c", &script], None);
    run.success();
    // podman 4.3's build also drops them from every file it copies from a build context
    // (root's as well); the staging's own masking is covered by the unit test
    // `host_policy_caps_sizes_and_masks_setuid_of_users_files`.
    let stdout = run.stdout();
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.first(), Some(&"755 0"), "{run}");
    assert!(matches!(lines.get(1), Some(&"4755 0" | &"755 0")), "{run}");
}

/// A list file is read through a bound: a `/removed` of 24 MiB (limit 16 MiB) is refused
/// by its size, quickly, and never written out. The cache directory is a small tmpfs here:
/// a copy of the list would not fit (and was silently skipped before, launching without
/// the host files).
#[test]
fn oversized_list_is_refused_without_being_copied_out() {
    require_podman!();
    let w = World::new();
    let name = unique("biglist");
    let mut images = Images::new(&name);
    let ids = w.path("ids");
    std::fs::create_dir_all(&ids).unwrap();
    let mount = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=8m,mode=0755", "flake-test-ids"])
        .arg(&ids)
        .status()
        .unwrap();
    assert!(mount.success(), "mount a tmpfs on {}", ids.display());
    struct Unmount(PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        }
    }
    let _unmount = Unmount(ids.clone());
    let tree = w.path("trees/biglist");
    std::fs::create_dir_all(&tree).unwrap();
    let mut list = "/etc/hostname\n".repeat(64).into_bytes();
    list.resize(24 << 20, b'\n');
    std::fs::write(tree.join("removed"), &list).unwrap();
    let delta = images.import(&tree, "delta");
    std::fs::remove_file(tree.join("removed")).unwrap();
    let app = register(
        &w,
        &name,
        &[
            "--container",
            &delta,
            "--base",
            IMAGE,
            "--target",
            "/bin/true",
        ],
    );
    let run = w.app(&app, &[], None);
    run.expect_code(125);
    assert_eq!(run.stderr().lines().count(), 1, "{run}");
    assert!(
        run.stderr().contains(&delta)
            && run.stderr().contains("/removed")
            && run.stderr().contains("larger than"),
        "{run}"
    );
    assert!(
        run.elapsed < std::time::Duration::from_secs(60),
        "{:?}",
        run.elapsed
    );
}

/// A podman transport prefix (`oci:`, `dir:`, `docker-archive:` ...) makes podman read an
/// image from a local path: such a name is refused at registration and, written into a
/// flake file by hand, at launch.
#[test]
fn image_names_with_a_transport_are_refused() {
    require_podman!();
    let w = World::new();
    let name = unique("transport");
    let app = w.bin.join(&name);
    let app_s = app.display().to_string();
    for (flag, value) in [
        ("--container", "oci:/tmp/evil"),
        ("--container", "dir:evil"),
        ("--base", "docker-archive:/tmp/x.tar"),
        ("--layer", "containers-storage:x"),
    ] {
        let pair = format!("{flag}={value}");
        let mut args = vec!["podman", "register", "--app", &app_s, "--target", "/bin/id"];
        if flag == "--container" {
            args.push(&pair);
        } else {
            args.extend(["--container", IMAGE, &pair, "--base", IMAGE]);
            if flag == "--base" {
                args.pop();
                args.pop();
            }
        }
        let run = w.ctl(&args);
        run.expect_code(1);
        assert_eq!(run.stderr().lines().count(), 1, "{run}");
        assert!(
            run.stderr().contains(flag) && run.stderr().contains("transport"),
            "{run}"
        );
        assert!(
            !app.exists() && !app.is_symlink(),
            "nothing registered: {run}"
        );
    }
    w.register(&name, "/bin/id", &[r"\--network none"]);
    let _guard = util::Containers(name.clone());
    let config = w.flakes.join(format!("{name}.yaml"));
    let text = std::fs::read_to_string(&config).unwrap();
    let edited = text.replace(&format!("name: {IMAGE}"), "name: oci-archive:/tmp/evil.tar");
    assert_ne!(text, edited, "{text}");
    std::fs::write(&config, edited).unwrap();
    let run = w.app(&app, &[], None);
    run.expect_code(125);
    assert_eq!(run.stderr().lines().count(), 1, "{run}");
    assert!(
        run.stderr().contains(&config.display().to_string()) && run.stderr().contains("transport"),
        "{run}"
    );
    assert!(util::containers_of(&name).is_empty());
}
