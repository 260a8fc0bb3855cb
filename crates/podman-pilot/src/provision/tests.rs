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
    let record = Record {
        fingerprint: 7,
        key: 9,
        image: "localhost/flake-pilot/app:9-1".into(),
        stage: "localhost/flake-pilot/app:9".into(),
        hosts: 1,
        listed: vec!["/etc/a b".into(), "/usr/lib/x.so".into()],
        index: index.clone(),
        stamp: record::stamp(&index),
    };
    record.save(&path).unwrap();
    let loaded = Record::load(&path).unwrap();
    assert_eq!(loaded, record);
    assert!(loaded.fresh(7));
    assert!(!loaded.fresh(8), "other inputs");
    std::thread::sleep(std::time::Duration::from_millis(20));
    std::fs::write(&index, "[1]").unwrap();
    assert!(!loaded.fresh(7), "store changed");
    assert!(Record::load(&fx.dir.path().join("none")).is_none());
    let tampered = std::fs::read_to_string(&path).unwrap() + "listed /../etc/shadow\n";
    std::fs::write(&path, tampered).unwrap();
    assert!(
        Record::load(&path).is_none(),
        "a bad entry voids the record"
    );
}

#[test]
fn host_file_digest_follows_changes_and_missing_files_are_named() {
    let fx = Fixture::new();
    let file = fx.dir.path().join("libdep.so");
    std::fs::write(&file, "one").unwrap();
    let f = flake(Some("base"), &[]);
    let include = Include::default();
    let p = fx.provisioner(&f, &include);
    let listed = vec![file.clone()];
    let first = hostfiles::digest(&p, &listed).unwrap();
    assert_eq!(first, hostfiles::digest(&p, &listed).unwrap());
    std::fs::write(&file, "two").unwrap();
    assert_ne!(first, hostfiles::digest(&p, &listed).unwrap(), "changed");
    std::fs::remove_file(&file).unwrap();
    let err = hostfiles::digest(&p, &listed).unwrap_err();
    assert!(
        matches!(&err, ProvisionError::MissingHostFile { path, .. } if *path == file),
        "{err}"
    );
    assert!(err.to_string().contains("%ignore_sync_error"), "{err}");
    let mut ignoring = fx.provisioner(&f, &include);
    ignoring.ignore_sync_error = true;
    assert!(hostfiles::digest(&ignoring, &listed).is_ok());
}

#[test]
fn lists_refuse_bad_entries_naming_image_and_entry() {
    let fx = Fixture::new();
    let f = flake(Some("base"), &[]);
    let include = Include::default();
    let p = fx.provisioner(&f, &include);
    let ok = hostfiles::parse(&p, "img", "removed", "# comment\n\n/usr/lib/a\r\n/b\n").unwrap();
    assert_eq!(ok, [PathBuf::from("/usr/lib/a"), PathBuf::from("/b")]);
    let err = hostfiles::parse(&p, "img", "removed", "/ok\n/../../tmp/victim\n")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("image img") && err.contains("/../../tmp/victim") && err.contains("/removed"),
        "{err}"
    );
    let err = hostfiles::parse(&p, "img", "systemfiles", "/a\u{1b}[2J\n")
        .unwrap_err()
        .to_string();
    assert!(
        !err.contains('\u{1b}') && err.contains("\\u{1b}"),
        "escaped: {err}"
    );
}

#[test]
fn staging_copies_files_links_and_bare_directories() {
    let dir = tempfile::tempdir().unwrap();
    let host = dir.path().join("host");
    std::fs::create_dir_all(host.join("etc/sub")).unwrap();
    std::fs::write(host.join("etc/file"), "content").unwrap();
    std::fs::write(host.join("etc/sub/inner"), "inner").unwrap();
    std::os::unix::fs::symlink("/etc/shadow", host.join("etc/link")).unwrap();
    let staging = beneath::Staging::create(&dir.path().join("stage")).unwrap();
    for name in ["etc/file", "etc/link", "etc/sub"] {
        staging
            .copy(&host.join(name), Path::new(name), false, None)
            .unwrap();
    }
    let staged = dir.path().join("stage");
    assert_eq!(
        std::fs::read_to_string(staged.join("etc/file")).unwrap(),
        "content"
    );
    assert_eq!(
        std::fs::read_link(staged.join("etc/link")).unwrap(),
        Path::new("/etc/shadow"),
        "a link is copied as a link, not followed"
    );
    assert!(staged.join("etc/sub").is_dir());
    assert!(!staged.join("etc/sub/inner").exists(), "not recursive");
    let err = staging
        .copy(&host.join("etc/file"), Path::new("etc/file"), false, None)
        .unwrap_err();
    assert!(
        err.to_string().contains("File exists"),
        "never overwritten: {err}"
    );
}

#[test]
fn staging_never_writes_through_a_link_or_outside_its_root() {
    let dir = tempfile::tempdir().unwrap();
    let outside = dir.path().join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    let victim = outside.join("victim");
    std::fs::write(&victim, "precious").unwrap();
    let source = dir.path().join("source");
    std::fs::write(&source, "attacker").unwrap();
    let root = dir.path().join("stage");
    let staging = beneath::Staging::create(&root).unwrap();
    // A link staged by an earlier entry (or planted) as a parent of a later destination.
    std::os::unix::fs::symlink(&outside, root.join("dir")).unwrap();
    std::os::unix::fs::symlink(&victim, root.join("file")).unwrap();
    let cases = [
        ("dir/victim", "link in a parent component"),
        ("file", "link as the destination itself"),
        ("../outside/victim", "dot-dot"),
        ("/abs/victim", "absolute"),
        ("a/./b", "dot"),
    ];
    for (dest, why) in cases {
        let err = staging.copy(&source, Path::new(dest), false, None);
        assert!(err.is_err(), "{why}: {dest} was written");
    }
    let err = staging
        .copy(&source, Path::new("dir/victim"), false, None)
        .unwrap_err();
    assert!(
        matches!(err, beneath::StageError::ThroughLink { .. }),
        "{err}"
    );
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious");
    assert!(!outside.join("b").exists());
}

#[test]
fn staging_refuses_special_files_without_opening_them() {
    let dir = tempfile::tempdir().unwrap();
    let staging = beneath::Staging::create(&dir.path().join("stage")).unwrap();
    let err = staging
        .copy(Path::new("/dev/null"), Path::new("dev/null"), false, None)
        .unwrap_err();
    assert!(
        matches!(err, beneath::StageError::Unsupported { .. }),
        "{err}"
    );
    let missing = staging
        .copy(&dir.path().join("gone"), Path::new("gone"), false, None)
        .unwrap_err();
    assert!(missing.is_missing_source(), "{missing}");
}

#[test]
fn repository_names_are_lower_case() {
    let fx = Fixture::new();
    let f = flake(None, &[]);
    assert_eq!(fx.provisioner(&f, &Include::default()).repo_name(), "app");
}

#[test]
fn reading_in_an_image_never_follows_a_link() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("mount");
    std::fs::create_dir_all(root.join("sub")).unwrap();
    std::fs::write(root.join("app.yaml"), "shipped").unwrap();
    std::fs::write(dir.path().join("secret"), "host").unwrap();
    std::os::unix::fs::symlink(dir.path().join("secret"), root.join("link.yaml")).unwrap();
    std::os::unix::fs::symlink(dir.path(), root.join("up")).unwrap();
    assert_eq!(read_in_image(&root, "app.yaml", 64).unwrap(), "shipped");
    let err = read_in_image(&root, "link.yaml", 64).unwrap_err();
    assert!(
        matches!(
            err,
            StageError::NotRegular {
                kind: "symbolic link",
                ..
            }
        ),
        "{err}"
    );
    for name in ["up/secret", "../secret", "sub"] {
        assert!(read_in_image(&root, name, 64).is_err(), "{name}");
    }
    assert!(read_in_image(&root, "app.yaml", 3).is_err(), "limit");
}

/// A directory any user may search: a temporary directory is private (0700), and nothing
/// below a private directory passes the host policy.
fn public_dir() -> tempfile::TempDir {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    dir
}

fn write_mode(path: &Path, bytes: &[u8], mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, bytes).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

fn refusal(err: beneath::StageError) -> String {
    match err {
        beneath::StageError::Refused { reason, .. } => reason,
        other => panic!("not refused by the policy: {other}"),
    }
}

#[test]
fn host_policy_copies_only_what_any_user_could_read() {
    use std::os::unix::fs::PermissionsExt;
    let dir = public_dir();
    let host = dir.path().join("host");
    write_mode(&host.join("lib/libok.so"), b"shared", 0o644);
    write_mode(&host.join("etc/secret"), b"root only", 0o600);
    write_mode(&host.join("private/inner"), b"hidden", 0o644);
    std::fs::set_permissions(host.join("private"), std::fs::Permissions::from_mode(0o700)).unwrap();
    std::os::unix::fs::symlink(host.join("private"), host.join("lib/via-link")).unwrap();
    let staging = beneath::Staging::create(&dir.path().join("stage")).unwrap();
    let policy = policy::HostPolicy::default();
    let copy =
        |source: &Path, dest: &str| staging.copy(source, Path::new(dest), false, Some(&policy));
    copy(&host.join("lib/libok.so"), "lib/libok.so").unwrap();
    let cases: Vec<(PathBuf, &str)> = vec![
        (host.join("etc/secret"), "not readable by other users"),
        (host.join("private/inner"), "not searchable"),
        (host.join("lib/via-link/inner"), "not searchable"),
        ("/proc/self/pagemap".into(), "procfs"),
        ("/proc/self/status".into(), "procfs"),
        ("/proc/kcore".into(), "procfs"),
        ("/sys/kernel/profiling".into(), "sysfs"),
        ("/sys/fs/cgroup/cgroup.controllers".into(), "cgroup"),
    ];
    for (i, (source, why)) in cases.iter().enumerate() {
        if !source.exists() {
            println!("SKIP {}: not on this host", source.display());
            continue;
        }
        let reason = refusal(copy(source, &format!("case{i}")).unwrap_err());
        assert!(reason.contains(why), "{}: {reason}", source.display());
        assert!(!dir.path().join(format!("stage/case{i}")).exists());
    }
    let missing = copy(&host.join("gone"), "gone").unwrap_err();
    assert!(missing.is_missing_source(), "still only missing: {missing}");
}

#[test]
fn host_policy_caps_sizes_and_masks_setuid_of_users_files() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let dir = public_dir();
    let host = dir.path().join("host");
    write_mode(&host.join("a"), &[b'a'; 16], 0o644);
    write_mode(&host.join("b"), &[b'b'; 17], 0o644);
    write_mode(&host.join("c"), &[b'c'; 10], 0o644);
    write_mode(&host.join("user-suid"), b"#!/bin/sh\n", 0o6755);
    std::os::unix::fs::chown(host.join("user-suid"), Some(1000), Some(1000)).unwrap();
    std::fs::set_permissions(
        host.join("user-suid"),
        std::fs::Permissions::from_mode(0o6755),
    )
    .unwrap();
    write_mode(&host.join("root-suid"), b"#!/bin/sh\n", 0o4755);
    let stage = dir.path().join("stage");
    let staging = beneath::Staging::create(&stage).unwrap();
    let policy = policy::HostPolicy::new(16, 45);
    let copy = |name: &str| staging.copy(&host.join(name), Path::new(name), false, Some(&policy));
    copy("a").unwrap();
    assert!(refusal(copy("b").unwrap_err()).contains("per host file"));
    copy("user-suid").unwrap();
    copy("root-suid").unwrap();
    assert!(
        refusal(copy("c").unwrap_err()).contains("in total"),
        "16 + 10 + 10 + 10 > 45"
    );
    assert!(!stage.join("b").exists() && !stage.join("c").exists());
    let mode = |name: &str| std::fs::metadata(stage.join(name)).unwrap().mode() & 0o7777;
    assert_eq!(
        mode("user-suid"),
        0o755,
        "a user's setuid file loses the bits"
    );
    assert_eq!(mode("root-suid"), 0o4755, "root's keeps them");
}
