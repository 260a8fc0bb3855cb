// SPDX-License-Identifier: MIT
//! Containerfile generation and fingerprints, without podman.

use flakes::config::{ContainerRuntime, LaunchMode, RunAs, Target};

use super::*;

fn flake(base: Option<&str>, layers: &[&str]) -> ContainerFlake {
    ContainerFlake {
        image: "delta".into(),
        target: Target::ImageEntrypoint,
        host_app_path: None,
        base: base.map(str::to_string),
        layers: layers.iter().map(|s| s.to_string()).collect(),
        check_host_dependencies: false,
        execute_systemfiles: false,
        runtime: ContainerRuntime {
            runas: RunAs::Root,
            mode: LaunchMode::OneShot,
            podman: Vec::new(),
        },
    }
}

struct Fixture {
    dir: tempfile::TempDir,
    engine: Engine,
    name: FlakeName,
}

impl Fixture {
    fn new() -> Self {
        Fixture {
            dir: tempfile::tempdir().unwrap(),
            engine: Engine::new("/usr/bin/podman".into()),
            name: FlakeName::new("App").unwrap(),
        }
    }
    fn provisioner<'a>(
        &'a self,
        flake: &'a ContainerFlake,
        include: &'a Include,
    ) -> Provisioner<'a> {
        Provisioner {
            engine: &self.engine,
            name: &self.name,
            config: Path::new("/etc/app.yaml"),
            flake,
            include,
            cache_dir: self.dir.path().join("cache"),
            progress: false,
            ignore_sync_error: false,
        }
    }
}

#[test]
fn containerfile_layers_in_order_then_includes() {
    let fx = Fixture::new();
    let tar = fx.dir.path().join("x.tar");
    std::fs::write(&tar, "").unwrap();
    let tree = fx.dir.path().join("etc-include");
    std::fs::create_dir_all(tree.join("sub")).unwrap();
    std::fs::write(tree.join("sub/file"), "data").unwrap();
    std::os::unix::fs::symlink("sub/file", tree.join("link")).unwrap();
    let f = flake(Some("base"), &["l1", "l2"]);
    let include = Include {
        tar: vec![tar],
        path: vec![tree.clone()],
    };
    let p = fx.provisioner(&f, &include);
    let context = context::BuildContext::stage(&p).unwrap();
    let text = std::fs::read_to_string(context.containerfile()).unwrap();
    assert_eq!(
        text,
        "FROM base\nCOPY --from=l1 / /\nCOPY --from=l2 / /\nCOPY --from=delta / /\nADD include-0.tar /\nCOPY paths/ /\n"
    );
    let staged = context
        .dir()
        .join("paths")
        .join(tree.strip_prefix("/").unwrap());
    assert_eq!(
        std::fs::read_to_string(staged.join("sub/file")).unwrap(),
        "data"
    );
    assert_eq!(
        std::fs::read_link(staged.join("link")).unwrap(),
        Path::new("sub/file")
    );
    let dir = context.dir().to_path_buf();
    drop(context);
    assert!(!dir.exists(), "context removed");
}

#[test]
fn plain_image_with_includes_starts_from_itself() {
    let fx = Fixture::new();
    let f = flake(None, &[]);
    let include = Include::default();
    let p = fx.provisioner(&f, &include);
    let context = context::BuildContext::stage(&p).unwrap();
    assert_eq!(
        std::fs::read_to_string(context.containerfile()).unwrap(),
        "FROM delta\n"
    );
}

#[test]
fn fingerprint_follows_include_changes_and_missing_includes_are_named() {
    let fx = Fixture::new();
    let file = fx.dir.path().join("cert.pem");
    std::fs::write(&file, "one").unwrap();
    let f = flake(Some("base"), &[]);
    let include = Include {
        tar: Vec::new(),
        path: vec![file.clone()],
    };
    let first = context::fingerprint(&fx.provisioner(&f, &include)).unwrap();
    assert_eq!(
        first,
        context::fingerprint(&fx.provisioner(&f, &include)).unwrap()
    );
    std::fs::write(&file, "changed content").unwrap();
    assert_ne!(
        first,
        context::fingerprint(&fx.provisioner(&f, &include)).unwrap()
    );
    let other = flake(Some("base2"), &[]);
    assert_ne!(
        first,
        context::fingerprint(&fx.provisioner(&other, &include)).unwrap()
    );

    let missing = Include {
        tar: vec![fx.dir.path().join("gone.tar")],
        path: Vec::new(),
    };
    let err = context::fingerprint(&fx.provisioner(&f, &missing))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("include.tar") && err.contains("gone.tar") && err.contains("/etc/app.yaml"),
        "{err}"
    );
}

#[test]
fn image_names_cannot_inject_instructions() {
    let fx = Fixture::new();
    let f = flake(Some("base\nRUN rm -rf /"), &[]);
    let err = fx.provisioner(&f, &Include::default()).image().unwrap_err();
    assert!(
        matches!(
            err,
            PodmanError::Provision(ProvisionError::BadImageName { .. })
        ),
        "{err}"
    );
}

#[test]
fn records_round_trip_and_go_stale_with_the_store() {
    let fx = Fixture::new();
    let index = fx.dir.path().join("images.json");
    std::fs::write(&index, "[]").unwrap();
    let path = fx.dir.path().join("app.record");
    Record::new(
        7,
        "localhost/flake-pilot/app:1".into(),
        (index.clone(), record::stamp(&index)),
    )
    .save(&path)
    .unwrap();
    let loaded = Record::load(&path).unwrap();
    assert_eq!(
        loaded.clone().fresh(7).as_deref(),
        Some("localhost/flake-pilot/app:1")
    );
    assert_eq!(loaded.clone().fresh(8), None, "other inputs");
    std::thread::sleep(std::time::Duration::from_millis(20));
    std::fs::write(&index, "[1]").unwrap();
    assert_eq!(loaded.fresh(7), None, "store changed");
    assert!(Record::load(&fx.dir.path().join("none")).is_none());
}

#[test]
fn repository_names_are_lower_case() {
    let fx = Fixture::new();
    let f = flake(None, &[]);
    assert_eq!(fx.provisioner(&f, &Include::default()).repo_name(), "app");
}
