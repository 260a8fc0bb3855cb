// SPDX-License-Identifier: MIT
//! `flake-ctl firecracker update` against real podman, the local registry on
//! 127.0.0.1:5000, skopeo and a real QEMU guest: a VM image made from a pushed image
//! follows the registry (a dry run reports a new push and changes nothing, an update
//! rebuilds, a second one is a quick no-op), a saved state of the old image is never
//! restored onto the new rootfs, and an image made from components is skipped.
//!
//! Needs root, podman, the registry, the VM fixtures and `sci` (see `util::vm`).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::tests_outside_test_module
)]

mod util;

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use util::registry::{podman, registry_ready, Images, REGISTRY};
use util::vm::vm_world;
use util::World;

/// Builds version `version` of the test image as `local` and pushes it to `remote`.
fn publish(images: &Images, w: &World, local: &str, remote: &str, version: &str) {
    let dir = w.path(&format!("context-{version}"));
    std::fs::create_dir_all(&dir).unwrap();
    let containerfile = format!("FROM {}\nRUN echo {version} > /version\n", util::IMAGE);
    std::fs::write(dir.join("Containerfile"), containerfile).unwrap();
    build_and_push(images, &dir, local, remote);
}

/// Publishes a `FROM scratch` image carrying `kernel` at `/boot/vmlinux`, and a note
/// `version` that makes each version another image.
fn publish_kernel(
    images: &Images,
    w: &World,
    (local, remote): (&str, &str),
    kernel: &Path,
    version: &str,
) {
    let dir = w.path(&format!("kernel-{version}"));
    std::fs::create_dir_all(dir.join("tree/boot")).unwrap();
    std::fs::copy(kernel, dir.join("tree/boot/vmlinux")).unwrap();
    std::fs::write(dir.join("tree/version"), version).unwrap();
    std::fs::write(dir.join("Containerfile"), "FROM scratch\nCOPY tree/ /\n").unwrap();
    build_and_push(images, &dir, local, remote);
}

/// Builds `dir` as `local`, pushes it to `remote` and drops the local name, so that a
/// pull fetches it from the registry as a host that did not build it would. The remote
/// name stays where the last pull put it.
fn build_and_push(images: &Images, dir: &Path, local: &str, remote: &str) {
    let dir_s = dir.display().to_string();
    let id = podman(&["build", "-q", "--no-cache", "-t", local, &dir_s]);
    images.add(id.trim());
    podman(&["push", "-q", "--tls-verify=false", local, remote]);
    podman(&["rmi", "--", local]);
}

/// Held by each test of this file: podman 4.3 loses layers now and then ("layer not
/// known") when one process removes an image while another pulls one that shares layers.
static PODMAN_STORAGE: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn storage_lock() -> std::sync::MutexGuard<'static, ()> {
    PODMAN_STORAGE
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// True when the registry answers; otherwise a visible skip (a failure under `make test`).
/// True when skopeo is installed; otherwise a visible skip: the dry runs ask the registry.
fn skopeo_ready() -> bool {
    let installed = Command::new("skopeo").arg("--version").output().is_ok();
    if !installed {
        util::skip("skopeo is not installed: the dry run cannot ask the registry");
    }
    installed
}

/// Unmounts a tmpfs when dropped.
struct Tmpfs(PathBuf);

impl Drop for Tmpfs {
    fn drop(&mut self) {
        // Lazily: a VM killed only after this (on a failed assertion) may still hold it.
        let _ = Command::new("umount").arg("--lazy").arg(&self.0).status();
    }
}

/// Puts the world's VM image registry on a tmpfs, so that the pulls do not depend on the
/// free space of the host's disk. `None` after a visible skip when it cannot be mounted.
fn registry_on_tmpfs(w: &World) -> Option<Tmpfs> {
    let images_dir = w.home.join(".config/flakes/firecracker/images");
    std::fs::create_dir_all(&images_dir).unwrap();
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=256m", "tmpfs"])
        .arg(&images_dir)
        .status()
        .is_ok_and(|s| s.success());
    if !mounted {
        util::skip("cannot mount a tmpfs for the VM image registry");
        return None;
    }
    Some(Tmpfs(images_dir))
}

fn image_dir(w: &World, name: &str) -> PathBuf {
    w.home.join(".config/flakes/firecracker/images").join(name)
}

/// Device, inode and change time of `path`: the same after a no-op, new after a rebuild.
fn identity(path: &Path) -> (u64, u64, i64, i64) {
    let meta = std::fs::metadata(path).unwrap();
    (meta.dev(), meta.ino(), meta.ctime(), meta.ctime_nsec())
}

/// The recorded digest of the rootfs (`part` "rootfs") or kernel image of VM image `name`.
fn recorded(w: &World, name: &str, part: &str) -> String {
    let text = std::fs::read_to_string(image_dir(w, name).join("oci-image.json")).unwrap();
    let record: serde_json::Value = serde_json::from_str(&text).unwrap();
    record[part]["digest"].as_str().unwrap().to_string()
}

/// The recorded OCI image id of the rootfs of VM image `name`.
fn image_id(w: &World, name: &str) -> String {
    let text = std::fs::read_to_string(image_dir(w, name).join("oci-image.json")).unwrap();
    let record: serde_json::Value = serde_json::from_str(&text).unwrap();
    record["rootfs"]["image_id"].as_str().unwrap().to_string()
}

/// Whether podman's storage holds image `id`.
fn stored(id: &str) -> bool {
    let exists = Command::new("podman")
        .args(["image", "exists", id])
        .status();
    exists.unwrap().success()
}

fn digest(w: &World, name: &str) -> String {
    recorded(w, name, "rootfs")
}

/// The saved VM states of flake `name`.
fn states_of(w: &World, name: &str) -> Vec<String> {
    let dir = w.home.join(".config/flakes/firecracker/states");
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut states: Vec<String> = entries
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|f| f.starts_with(&format!("{name}-")) && f.ends_with(".vmstate"))
        .collect();
    states.sort();
    states
}

/// `firecracker --user update ARGS...`.
fn update(w: &World, args: &[&str]) -> util::Run {
    w.ctl(&[&["firecracker", "--user", "update"], args].concat())
}

/// The entry of VM image `vm` in a JSON report.
fn entry<'a>(report: &'a serde_json::Value, vm: &str) -> &'a serde_json::Value {
    let images = report["images"].as_array().unwrap();
    images.iter().find(|i| i["image"] == vm).unwrap()
}

#[test]
fn update_follows_the_registry_and_never_restores_an_old_state_onto_a_new_rootfs() {
    require_podman!();
    let _storage = storage_lock();
    if !registry_ready() {
        return;
    }
    let Some((_vms, w, fixtures, _sci)) = vm_world() else {
        return;
    };
    if !skopeo_ready() {
        return;
    }
    let Some(_tmpfs) = registry_on_tmpfs(&w) else {
        return;
    };
    let id = std::process::id();
    let local = format!("localhost/fcupdate-{id}-app:1");
    let remote = format!("{REGISTRY}/fcupdate-{id}/app:1");
    let images = Images::new(vec![local.clone(), remote.clone()]);
    publish(&images, &w, &local, &remote, "one");
    let kernel = fixtures.join("kernel/vmlinux");
    let kernel_s = kernel.display().to_string();
    let pull = ["firecracker", "--user", "pull", "--name", "upd"];
    w.ctl(&[&pull[..], &["--oci", &remote, "--kernel", &kernel_s]].concat())
        .success();
    let rootfs_s = fixtures.join("rootfs.ext4").display().to_string();
    let components = ["--rootfs", &rootfs_s, "--kernel", &kernel_s];
    w.ctl(
        &[
            &["firecracker", "--user", "pull", "--name", "plain"],
            &components[..],
        ]
        .concat(),
    )
    .success();
    let app = util::vm::register_small(&w, "upd", "updsh", &[]);
    let resume = util::vm::register_small(&w, "upd", "updres", &["--resume"]);
    let plain_app = util::vm::register_small(&w, "plain", "plainsh", &[]);
    let rootfs = image_dir(&w, "upd").join("rootfs");

    // The first call boots and (on the console channel) saves its VM.
    let states = util::vm::default_channels_only("saved states of an updated image");
    let first = w.app(&app, &["-c", "cat /version", "%progress"], None);
    first.success();
    assert_eq!(first.stdout(), "one\n", "{first}");
    let old_states = states_of(&w, "updsh");
    if states {
        assert_eq!(old_states.len(), 1, "the first call saved its VM: {first}");
    }

    // A resume VM runs on the image while it is updated.
    let running = w.app(&resume, &["-c", "cat /version"], None);
    running.success();
    assert_eq!(running.stdout(), "one\n", "{running}");

    // Nothing new: up to date; the component image is skipped, which is no failure.
    let same = update(&w, &["--all"]);
    same.success();
    let out = same.stdout();
    assert!(
        out.contains(&format!("upd: up to date: {remote} sha256:")),
        "{same}"
    );
    assert!(
        out.contains("plain: not from a registry; pull it again with firecracker pull --force"),
        "{same}"
    );
    assert!(out.ends_with("all up to date\n"), "{same}");

    // A new push: the dry run asks the registry, reports old -> new and changes nothing.
    let old_digest = digest(&w, "upd");
    let old_id = image_id(&w, "upd");
    assert!(stored(&old_id), "pull --oci keeps the image it pulled");
    let before = identity(&rootfs);
    publish(&images, &w, &local, &remote, "two");
    let dry = update(&w, &["--all", "--dry-run", "--format", "json"]);
    dry.success();
    let report: serde_json::Value = serde_json::from_str(&dry.stdout()).unwrap();
    assert_eq!(report["dry_run"], true);
    let upd = entry(&report, "upd");
    assert_eq!(upd["status"], "changed", "{dry}");
    assert_eq!(upd["old_digest"], old_digest.as_str());
    let new_digest = upd["new_digest"].as_str().unwrap().to_string();
    assert!(
        new_digest.starts_with("sha256:") && new_digest != old_digest,
        "{dry}"
    );
    assert_eq!(upd["flakes"], serde_json::json!(["updres", "updsh"]));
    assert_eq!(entry(&report, "plain")["status"], "skipped");
    assert_eq!(identity(&rootfs), before, "a dry run rebuilds nothing");
    assert_eq!(digest(&w, "upd"), old_digest);

    // The update rebuilds the image from the new digest, with the same kernel file.
    let plain_s = plain_app.display().to_string();
    let app_s = app.display().to_string();
    let rebuilt = update(&w, &["--app", &app_s, "--app", &plain_s]);
    rebuilt.success();
    let line = format!("upd: changed: {remote} {old_digest} -> {new_digest} (kernel file kept)");
    assert!(rebuilt.stdout().contains(&line), "{rebuilt}");
    assert_ne!(identity(&rootfs), before, "a new rootfs");
    assert_eq!(digest(&w, "upd"), new_digest);
    let kernel_now = std::fs::read(image_dir(&w, "upd").join("kernel")).unwrap();
    assert!(
        kernel_now == std::fs::read(&kernel).unwrap(),
        "the kernel is kept"
    );
    let removed = format!(
        "  removed the old image {} ({remote}) from podman's storage",
        &old_id[..12]
    );
    assert!(rebuilt.stdout().contains(&removed), "{rebuilt}");
    assert!(
        !stored(&old_id),
        "the replaced image is gone from podman's storage"
    );
    assert!(stored(&image_id(&w, "upd")));
    // The resume VM keeps the old image open and runs on it until it ends.
    let hint = "  VM updres keeps running on the old image until it ends";
    assert!(rebuilt.stdout().contains(hint), "{rebuilt}");
    let old = w.app(&resume, &["-c", "cat /version", "%remove"], None);
    old.success();
    assert_eq!(old.stdout(), "one\n", "{old}");
    let new = w.app(&resume, &["-c", "cat /version", "%remove"], None);
    new.success();
    assert_eq!(
        new.stdout(),
        "two\n",
        "the next VM runs the new image: {new}"
    );

    // Again: up to date, quickly, nothing touched.
    let after = identity(&rootfs);
    let started = Instant::now();
    let again = update(&w, &["--vm", "upd", "--format", "json"]);
    let no_op = started.elapsed();
    again.success();
    let report: serde_json::Value = serde_json::from_str(&again.stdout()).unwrap();
    assert_eq!(entry(&report, "upd")["status"], "unchanged", "{again}");
    assert_eq!(identity(&rootfs), after);
    eprintln!("update of an unchanged VM image: {no_op:?}");
    assert!(no_op.as_secs() < 10, "a no-op update is quick: {no_op:?}");

    // The next call runs the new tree, booted: the old image's state is not restored.
    let second = w.app(&app, &["-c", "cat /version", "%progress"], None);
    second.success();
    assert_eq!(second.stdout(), "two\n", "{second}");
    if states {
        assert!(!second.stderr().contains("restoring the VM"), "{second}");
        let new_states = states_of(&w, "updsh");
        assert_eq!(new_states.len(), 1, "{new_states:?}");
        assert_ne!(
            new_states, old_states,
            "a state of the new rootfs replaced the old"
        );
    }

    // An image that is not there is a named failure; the others are still handled.
    let missing = update(&w, &["--vm", "nosuchvm", "--vm", "upd"]);
    missing.expect_code(1);
    assert!(
        missing
            .stdout()
            .contains("nosuchvm: failed: no VM image nosuchvm"),
        "{missing}"
    );
    assert!(missing.stdout().contains("upd: up to date"), "{missing}");
    assert!(missing.stderr().contains("1 failure(s)"), "{missing}");
}

#[test]
fn a_kernel_from_an_image_is_pulled_again_with_it() {
    require_podman!();
    let _storage = storage_lock();
    if !registry_ready() || !skopeo_ready() {
        return;
    }
    let Some((_vms, w, fixtures, _sci)) = vm_world() else {
        return;
    };
    let Some(_tmpfs) = registry_on_tmpfs(&w) else {
        return;
    };
    let id = std::process::id();
    let (local, remote) = (
        format!("localhost/fcupdate-{id}-kapp:1"),
        format!("{REGISTRY}/fcupdate-{id}/kapp:1"),
    );
    let (klocal, kremote) = (
        format!("localhost/fcupdate-{id}-kernel:1"),
        format!("{REGISTRY}/fcupdate-{id}/kernel:1"),
    );
    let images = Images::new(vec![
        local.clone(),
        remote.clone(),
        klocal.clone(),
        kremote.clone(),
    ]);
    let kernel = fixtures.join("kernel/vmlinux");
    publish(&images, &w, &local, &remote, "one");
    publish_kernel(&images, &w, (&klocal, &kremote), &kernel, "one");
    let pull = ["firecracker", "--user", "pull", "--name", "kupd", "--oci"];
    w.ctl(&[&pull[..], &[&remote, "--kernel-oci", &kremote]].concat())
        .success();
    let (old_rootfs, old_kernel) = (digest(&w, "kupd"), recorded(&w, "kupd", "kernel"));
    // A container flake pinned to the old kernel image keeps it in podman's storage.
    let pinned = format!("{kremote}@{old_kernel}");
    let pinned_app = w.bin.join("kpinned").display().to_string();
    w.ctl(&[
        "podman",
        "--user",
        "register",
        "--container",
        &pinned,
        "--app",
        &pinned_app,
        "--target",
        "/vmlinux",
    ])
    .success();

    // Only the kernel image moved: the dry run sees it, the update rebuilds with it.
    publish_kernel(&images, &w, (&klocal, &kremote), &kernel, "two");
    let dry = update(&w, &["--vm", "kupd", "--dry-run", "--format", "json"]);
    dry.success();
    let report: serde_json::Value = serde_json::from_str(&dry.stdout()).unwrap();
    let kupd = entry(&report, "kupd");
    assert_eq!(kupd["status"], "changed", "{dry}");
    assert_eq!(kupd["new_digest"], old_rootfs.as_str(), "{dry}");
    assert_eq!(kupd["old_kernel_digest"], old_kernel.as_str(), "{dry}");
    let new_kernel = kupd["new_kernel_digest"].as_str().unwrap().to_string();
    assert_ne!(new_kernel, old_kernel, "{dry}");
    assert_eq!(
        recorded(&w, "kupd", "kernel"),
        old_kernel,
        "a dry run changes nothing"
    );

    let rebuilt = update(&w, &["--vm", "kupd"]);
    rebuilt.success();
    let line = format!("(kernel from {kremote} {old_kernel} -> {new_kernel})");
    assert!(rebuilt.stdout().contains(&line), "{rebuilt}");
    assert_eq!(recorded(&w, "kupd", "kernel"), new_kernel);
    assert_eq!(digest(&w, "kupd"), old_rootfs);
    let kept = format!("): container flake image {pinned} uses it");
    assert!(rebuilt.stdout().contains(&kept), "{rebuilt}");
    let again = update(&w, &["--vm", "kupd"]);
    again.success();
    assert!(again.stdout().ends_with("all up to date\n"), "{again}");
}
