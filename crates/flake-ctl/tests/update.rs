// SPDX-License-Identifier: MIT
//! `flake-ctl podman update` and digest pinning against real podman and the local registry
//! on 127.0.0.1:5000: a tag moves in the registry, and the flakes on it follow only when
//! updated, while a flake pinned to a digest keeps its content.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::tests_outside_test_module
)]

mod util;

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;
use util::registry::{registry_ready, REGISTRY};
use util::{unique, World, IMAGE};

/// [`util::registry::podman`], trimmed.
fn podman(args: &[&str]) -> String {
    util::registry::podman(args).trim().to_string()
}

fn image_exists(image: &str) -> bool {
    Command::new("podman")
        .args(["image", "exists", image])
        .status()
        .unwrap()
        .success()
}

fn image_id(image: &str) -> String {
    podman(&["image", "inspect", "--format", "{{.Id}}", image])
}

/// Images and containers of one test, removed when dropped (registry tags stay: they are
/// unique to the test process).
struct Scratch {
    images: Vec<String>,
    flakes: Vec<String>,
}

impl Scratch {
    /// Builds `localhost/<tag>` from busybox with `/etc/version` saying `version`.
    fn build(&mut self, dir: &Path, tag: &str, version: &str) -> String {
        let context = dir.join(tag.replace([':', '/'], "_"));
        std::fs::create_dir_all(&context).unwrap();
        std::fs::write(context.join("version"), format!("{version}\n")).unwrap();
        std::fs::write(
            context.join("Containerfile"),
            format!("FROM {IMAGE}\nCOPY version /etc/version\n"),
        )
        .unwrap();
        let name = format!("localhost/{tag}");
        let ctx = context.display().to_string();
        podman(&["build", "-q", "--layers=false", "-t", &name, &ctx]);
        self.images.push(name.clone());
        name
    }

    /// Pushes `source` to the registry as `dest`, then drops the name `source`: the
    /// image is then known under registry names only, as one pulled from there.
    fn push(&mut self, source: &str, dest: &str) {
        podman(&["push", "-q", source, &format!("docker://{dest}")]);
        self.images.push(image_id(source));
        self.images.push(dest.to_string());
        podman(&["untag", source]);
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        for flake in &self.flakes {
            for id in util::containers_of(flake) {
                let _ = Command::new("podman")
                    .args(["rm", "-f", "-t", "0", &id])
                    .output();
            }
            let filter = format!("label=io.flake-pilot.assembled={flake}");
            let out = Command::new("podman")
                .args(["images", "-q", "--filter", &filter])
                .output()
                .unwrap();
            for id in String::from_utf8_lossy(&out.stdout).lines() {
                let _ = Command::new("podman").args(["rmi", "-f", id]).output();
            }
        }
        for image in self.images.iter().rev() {
            let _ = Command::new("podman").args(["rmi", "-f", image]).output();
        }
    }
}

fn register(w: &World, name: &str, extra: &[&str]) -> PathBuf {
    let app = w.bin.join(name);
    let app_s = app.display().to_string();
    let mut args = vec![
        "podman",
        "register",
        "--app",
        &app_s,
        "--target",
        "/bin/cat",
        "--opt",
        r"\--network none",
    ];
    args.extend(extra);
    w.ctl(&args).success();
    app
}

/// What the flake's instance has in `/etc/version`.
fn version(w: &World, app: &Path) -> String {
    let run = w.app(app, &["/etc/version"], None);
    run.success();
    run.stdout().trim().to_string()
}

fn json(run: &util::Run) -> Value {
    serde_json::from_str(&run.stdout()).unwrap_or_else(|e| panic!("{e}: {run}"))
}

/// The report entry of `image`.
fn entry<'a>(report: &'a Value, image: &str) -> &'a Value {
    report["images"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["image"] == image)
        .unwrap_or_else(|| panic!("no entry for {image}: {report:#}"))
}

fn assembled(flake: &str) -> Vec<String> {
    let filter = format!("label=io.flake-pilot.assembled={flake}");
    podman(&[
        "images",
        "--filter",
        &filter,
        "--format",
        "{{.Repository}}:{{.Tag}}",
    ])
    .lines()
    .map(str::to_string)
    .collect()
}

/// A PATH with podman but without skopeo.
fn path_without_skopeo(w: &World) -> PathBuf {
    let dir = w.path("no-skopeo");
    std::fs::create_dir_all(&dir).unwrap();
    let podman = Command::new("sh")
        .args(["-c", "command -v podman"])
        .output()
        .unwrap();
    let podman = String::from_utf8_lossy(&podman.stdout).trim().to_string();
    std::os::unix::fs::symlink(podman, dir.join("podman")).unwrap();
    dir
}

#[test]
fn update_follows_a_moved_tag_and_removes_what_the_old_image_left() {
    require_podman!();
    if !registry_ready() {
        return;
    }
    let w = World::new();
    let id = unique("upd");
    let mut scratch = Scratch {
        images: Vec::new(),
        flakes: Vec::new(),
    };
    let src = w.path("src");
    let (v1, v2) = (
        scratch.build(&src, &format!("{id}-src:v1"), "v1"),
        scratch.build(&src, &format!("{id}-src:v2"), "v2"),
    );
    let (e1, e2) = (
        scratch.build(&src, &format!("{id}-src:e1"), "e1"),
        scratch.build(&src, &format!("{id}-src:e2"), "e2"),
    );
    let (f1, f2) = (
        scratch.build(&src, &format!("{id}-src:f1"), "f1"),
        scratch.build(&src, &format!("{id}-src:f2"), "f2"),
    );
    let main_ref = format!("{REGISTRY}/flake-pilot/{id}:1");
    let other_ref = format!("{REGISTRY}/flake-pilot/{id}-other:1");
    scratch.push(&v1, &main_ref);
    scratch.push(&e1, &other_ref);
    // An image that also has a name of its own, given by someone else.
    let named_ref = format!("{REGISTRY}/flake-pilot/{id}-named:1");
    let own_name = format!("localhost/{id}-keep:1");
    scratch.push(&f1, &named_ref);
    podman(&["pull", "-q", &named_ref]);
    podman(&["tag", &named_ref, &own_name]);
    scratch.images.push(own_name.clone());
    let f1_id = image_id(&named_ref);
    podman(&["pull", "-q", &main_ref]);
    let v1_digest = podman(&["image", "inspect", "--format", "{{.Digest}}", &main_ref]);
    let pinned_ref = format!("{REGISTRY}/flake-pilot/{id}:1@{v1_digest}");
    scratch.images.push(pinned_ref.clone());

    let [plain, layered, pinned, other] =
        ["plain", "layered", "pinned", "other"].map(|n| format!("{id}-{n}"));
    scratch.flakes = vec![
        plain.clone(),
        layered.clone(),
        pinned.clone(),
        other.clone(),
    ];
    let plain_app = register(&w, &plain, &["--container", &main_ref]);
    let layered_app = register(&w, &layered, &["--container", &main_ref, "--base", IMAGE]);
    let pinned_app = register(&w, &pinned, &["--container", &pinned_ref]);
    let digest_only = format!("{REGISTRY}/flake-pilot/{id}@{v1_digest}");
    let by_digest = format!("{id}-bydigest");
    scratch.flakes.push(by_digest.clone());
    let by_digest_app = register(&w, &by_digest, &["--container", &digest_only]);
    let other_app = register(&w, &other, &["--container", &other_ref]);
    let named = format!("{id}-named");
    scratch.flakes.push(named.clone());
    register(&w, &named, &["--container", &named_ref]);
    for app in [&plain_app, &layered_app, &pinned_app, &by_digest_app] {
        assert_eq!(version(&w, app), "v1");
    }
    assert_eq!(version(&w, &other_app), "e1");
    let old_assembly = assembled(&layered);
    assert_eq!(old_assembly.len(), 1, "{old_assembly:?}");
    let (v1_id, e1_id) = (image_id(&main_ref), image_id(&other_ref));

    // list shows the pinned digest; JSON also the local digest of the others.
    let table = w.ctl(&["list"]);
    table.success();
    assert!(table.stdout().contains(&v1_digest), "{table}");
    let rows = json(w.ctl(&["list", "--format", "json"]).success());
    let row = |name: &str| {
        rows.as_array()
            .unwrap()
            .iter()
            .find(|r| r["name"] == name)
            .unwrap()
            .clone()
    };
    assert_eq!(row(&pinned)["digest"], v1_digest.as_str());
    assert_eq!(row(&pinned)["pinned"], true);
    assert_eq!(row(&plain)["digest"], v1_digest.as_str());
    assert_eq!(row(&plain)["pinned"], false);

    // The tags move in the registry; nothing local changes yet.
    scratch.push(&v2, &main_ref);
    scratch.push(&e2, &other_ref);
    scratch.push(&f2, &named_ref);
    // Instances of the plain flake on the old image: one stopped, one running.
    let stopped = format!("{id}-stopped");
    let running = format!("{id}-running");
    let label = format!("io.flake-pilot.flake={plain}");
    podman(&[
        "create", "--name", &stopped, "--label", &label, &main_ref, "true",
    ]);
    podman(&[
        "run",
        "-d",
        "--network",
        "none",
        "--name",
        &running,
        "--label",
        &label,
        &main_ref,
        "sleep",
        "600",
    ]);

    let dry = w.ctl(&["podman", "update", "--all", "--dry-run", "--format", "json"]);
    dry.success();
    let report = json(&dry);
    assert_eq!(report["dry_run"], true);
    assert_eq!(entry(&report, &main_ref)["status"], "changed", "{report:#}");
    assert_eq!(entry(&report, &other_ref)["status"], "changed");
    assert_eq!(entry(&report, &pinned_ref)["status"], "pinned");
    assert_eq!(entry(&report, IMAGE)["status"], "local");
    let planned = report["removed"].to_string();
    assert!(planned.contains(&old_assembly[0]), "{report:#}");
    assert!(planned.contains(&stopped), "{report:#}");
    assert_eq!(
        report["assembled"][0]["flake"],
        layered.as_str(),
        "{report:#}"
    );
    assert!(report["kept"].to_string().contains(&running), "{report:#}");
    // Nothing changed.
    assert_eq!(image_id(&main_ref), v1_id);
    assert_eq!(assembled(&layered), old_assembly);
    assert!(util::containers_of(&plain).len() == 2);
    let path = path_without_skopeo(&w);
    let mut cmd = w.command(util::bin_dir().join("flake-ctl"));
    cmd.env("PATH", &path)
        .args(["podman", "update", "--app"])
        .arg(&plain_app)
        .arg("--dry-run");
    let dry = util::Run::from_command(cmd);
    dry.success();
    assert!(
        dry.stdout().contains("would be pulled") && dry.stdout().contains(&v1_digest),
        "{dry}"
    );
    assert!(!dry.stdout().contains("up to date"), "{dry}");

    // --app limits the update to that flake's images.
    let only = w.ctl(&[
        "podman",
        "update",
        "--app",
        &other_app.display().to_string(),
        "--format",
        "json",
    ]);
    only.success();
    let report = json(&only);
    assert_eq!(report["images"].as_array().unwrap().len(), 1, "{report:#}");
    let changed = entry(&report, &other_ref);
    assert_eq!(changed["status"], "changed");
    assert_eq!(changed["old_id"], e1_id.as_str());
    assert!(
        !image_exists(&e1_id),
        "the unused old image is removed: {report:#}"
    );
    assert_eq!(version(&w, &other_app), "e2");
    assert_eq!(version(&w, &plain_app), "v1", "not updated yet");

    let update = w.ctl(&["podman", "update", "--all"]);
    update.success();
    let out = update.stdout();
    assert!(out.contains(&format!("{main_ref}: changed")), "{update}");
    assert!(
        out.contains("pinned, not pulled") && out.contains("local, skipped"),
        "{update}"
    );
    assert!(
        out.contains(&format!("removed assembled image {}", old_assembly[0])),
        "{update}"
    );
    assert!(out.contains(&format!("podman rm -f {running}")), "{update}");
    assert!(!image_exists(&old_assembly[0]));
    let new_assembly = assembled(&layered);
    assert_eq!(
        new_assembly.len(),
        1,
        "assembled again by the update: {update}"
    );
    assert!(
        out.contains(&format!(
            "assembled flake {layered} again: {}",
            new_assembly[0]
        )),
        "{update}"
    );
    assert_eq!(
        util::containers_of(&plain).len(),
        1,
        "the stopped one is removed"
    );
    assert!(image_exists(&v1_id), "the pinned flake keeps the old image");
    assert!(
        out.contains(&format!(
            "kept image {} (was {main_ref}): a registered flake still uses it",
            &v1_id[..12]
        )),
        "{update}"
    );
    assert!(
        out.contains(&format!("it is still named {own_name}")) && image_exists(&f1_id),
        "an old image with a name of its own stays: {update}"
    );
    for app in [&plain_app, &layered_app] {
        assert_eq!(version(&w, app), "v2");
    }
    assert_eq!(version(&w, &pinned_app), "v1", "pinned to its digest");
    assert_eq!(version(&w, &by_digest_app), "v1", "pinned to its digest");
    assert_eq!(
        assembled(&layered),
        new_assembly,
        "the launch used the new assembly"
    );

    let again = w.ctl(&["podman", "update", "--all"]);
    again.success();
    assert!(again.stdout().contains("all up to date"), "{again}");

    // A flake file that does not load fails `--all` (named), not an update of others.
    let broken = w.flakes.join(format!("{id}-broken.yaml"));
    std::fs::write(&broken, "container:\n  name: busybox\n  bogus: 1\n").unwrap();
    let run = w.ctl(&["podman", "update", "--all"]);
    run.expect_code(1);
    assert!(
        run.stdout().contains(&format!("failed: flake {id}-broken")),
        "{run}"
    );
    let plain_s = plain_app.display().to_string();
    w.ctl(&["podman", "update", "--app", &plain_s]).success();
    std::fs::remove_file(&broken).unwrap();

    // A failing image is named, the others are still handled, and the exit code is 1.
    let missing = format!("{REGISTRY}/flake-pilot/{id}-missing:1");
    let missing_flake = format!("{id}-missing");
    register(&w, &missing_flake, &["--container", &missing]);
    let failed = w.ctl(&["podman", "update", "--all"]);
    failed.expect_code(1);
    assert!(
        failed.stdout().contains(&format!("{missing}: failed: "))
            && failed.stderr().contains("1 failure(s)")
            && failed.stdout().contains(&format!("{main_ref}: up to date")),
        "{failed}"
    );
}

#[test]
fn update_needs_a_registered_container_flake() {
    require_podman!();
    let w = World::new();
    let run = w.ctl(&["podman", "update"]);
    run.expect_code(2);
    let app = w.bin.join("nothing").display().to_string();
    let run = w.ctl(&["podman", "update", "--app", &app]);
    run.expect_code(1);
    assert!(
        run.stderr()
            .contains("no container flake nothing is registered"),
        "{run}"
    );
}

/// A pulled-looking VM image in the user's registry, with the record an image made from
/// an OCI image keeps when `digest` is given.
fn vm_image(w: &World, name: &str, digest: Option<&str>) {
    let dir = w.home.join(".config/flakes/firecracker/images").join(name);
    std::fs::create_dir_all(&dir).unwrap();
    for file in ["rootfs", "kernel"] {
        std::fs::write(dir.join(file), file).unwrap();
    }
    if let Some(digest) = digest {
        let record = serde_json::json!({
            "rootfs": {"reference": "registry.example.com/app:1", "digest": digest,
                       "image_id": "e1108c96a165"},
        });
        std::fs::write(dir.join("oci-image.json"), record.to_string()).unwrap();
    }
}

#[test]
fn list_shows_the_oci_digest_of_vm_flakes() {
    let w = World::new();
    let digest = format!("sha256:{}", "5e".repeat(32));
    vm_image(&w, "from-oci", Some(&digest));
    vm_image(&w, "plain", None);
    for (vm, app) in [("from-oci", "ocivm"), ("plain", "plainvm")] {
        let app = w.bin.join(app).display().to_string();
        w.ctl(&[
            "firecracker",
            "--user",
            "register",
            "--vm",
            vm,
            "--app",
            &app,
        ])
        .success();
    }
    let rows = json(w.ctl(&["list", "--user", "--format", "json"]).success());
    let digest_of = |name: &str| {
        rows.as_array()
            .unwrap()
            .iter()
            .find(|r| r["name"] == name)
            .unwrap()["digest"]
            .clone()
    };
    assert_eq!(digest_of("ocivm"), digest.as_str(), "{rows:#}");
    assert!(digest_of("plainvm").is_null(), "{rows:#}");
    let table = w.ctl(&["list", "--user"]);
    assert!(table.stdout().contains(&digest), "{table}");
}
