// SPDX-License-Identifier: MIT
//! Registration and removal against a real temporary filesystem.

use super::*;
use crate::host::Mode;

struct Fixture {
    dir: tempfile::TempDir,
    registry: Registry,
    pilot: PathBuf,
}

impl Fixture {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let registry = Registry::new(dir.path().join("flakes"), Mode::System);
        let pilot = dir.path().join("lib/podman-pilot");
        std::fs::create_dir_all(pilot.parent().unwrap()).unwrap();
        std::fs::write(&pilot, "").unwrap();
        Fixture {
            dir,
            registry,
            pilot,
        }
    }
    fn app(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }
    fn registration(&self, app: &Path, force: bool) -> Registration<'_> {
        Registration {
            registry: &self.registry,
            app: app.into(),
            pilot: self.pilot.clone(),
            yaml: format!(
                "container:\n  name: img\n  host_app_path: {}\n",
                app.display()
            ),
            force,
        }
    }
    fn files(&self) -> Vec<String> {
        let mut out = Vec::new();
        for entry in walk(self.dir.path()) {
            out.push(
                entry
                    .strip_prefix(self.dir.path())
                    .unwrap()
                    .display()
                    .to_string(),
            );
        }
        out.sort();
        out
    }
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        out.push(path.clone());
        if path.is_dir() && !path.is_symlink() {
            out.extend(walk(&path));
        }
    }
    out
}

#[test]
fn register_creates_symlink_yaml_and_fragment_dir() {
    let fx = Fixture::new();
    let app = fx.app("bin/sub/aws");
    let name = fx.registration(&app, false).commit().unwrap();
    assert_eq!(name.as_str(), "aws");
    assert_eq!(std::fs::read_link(&app).unwrap(), fx.pilot);
    assert!(fx.registry.config_path(&name).is_file());
    assert!(fx.registry.fragments_dir(&name).is_dir());
    assert!(
        !fx.files().iter().any(|f| f.ends_with(".tmp")),
        "{:?}",
        fx.files()
    );
}

#[test]
fn existing_registration_needs_force_and_force_replaces_it() {
    let fx = Fixture::new();
    let app = fx.app("bin/aws");
    fx.registration(&app, false).commit().unwrap();
    let err = fx.registration(&app, false).commit().unwrap_err();
    assert!(matches!(err, RegisterError::AppExists { .. }), "{err}");
    std::fs::write(fx.registry.dir().join("aws.d/keep.yaml"), "{}").unwrap();
    fx.registration(&app, true).commit().unwrap();
    assert!(
        fx.registry.dir().join("aws.d/keep.yaml").exists(),
        "fragments survive --force"
    );
}

#[test]
fn force_replaces_dangling_symlink_but_never_a_real_program() {
    let fx = Fixture::new();
    let app = fx.app("bin/tool");
    std::fs::create_dir_all(app.parent().unwrap()).unwrap();
    std::os::unix::fs::symlink("/nonexistent/target", &app).unwrap();
    fx.registration(&app, true).commit().unwrap();
    assert_eq!(std::fs::read_link(&app).unwrap(), fx.pilot);

    let real = fx.app("bin/vim");
    std::fs::write(&real, "#!/bin/sh\n").unwrap();
    let err = fx.registration(&real, true).commit().unwrap_err();
    assert!(matches!(err, RegisterError::NotAFlake { .. }), "{err}");
    assert_eq!(std::fs::read_to_string(&real).unwrap(), "#!/bin/sh\n");

    let other_link = fx.app("bin/sh");
    std::os::unix::fs::symlink("/bin/sh", &other_link).unwrap();
    let err = fx.registration(&other_link, true).commit().unwrap_err();
    assert!(err.to_string().contains("a symlink to /bin/sh"), "{err}");
}

#[test]
fn same_basename_from_another_path_is_refused_even_with_force() {
    let fx = Fixture::new();
    fx.registration(&fx.app("usr/bin/foo"), false)
        .commit()
        .unwrap();
    for force in [false, true] {
        let err = fx
            .registration(&fx.app("opt/x/foo"), force)
            .commit()
            .unwrap_err();
        assert!(matches!(err, RegisterError::NameTaken { .. }), "{err}");
        assert!(
            !fx.app("opt").exists(),
            "nothing created for the refused app"
        );
    }
}

#[test]
fn failed_registration_leaves_nothing_behind() {
    let fx = Fixture::new();
    // The app's parent is a file, so the symlink step fails after the YAML was staged.
    std::fs::write(fx.app("blocker"), "").unwrap();
    let before = fx.files();
    let err = fx
        .registration(&fx.app("blocker/app"), false)
        .commit()
        .unwrap_err();
    assert!(matches!(err, RegisterError::Io { .. }), "{err}");
    // The registry directory and its lock are the registry's, not the flake's.
    let after: Vec<String> = fx
        .files()
        .into_iter()
        .filter(|f| f != "flakes" && f != "flakes/.registry.lock")
        .collect();
    assert_eq!(after, before);
}

#[test]
fn failed_registration_in_new_directories_removes_them() {
    let fx = Fixture::new();
    let registration = Registration {
        pilot: PathBuf::new(),
        ..fx.registration(&fx.app("a/b/c/app"), false)
    };
    // An empty pilot path makes symlink() fail with ENOENT after the dirs were created.
    let err = registration.commit().unwrap_err();
    assert!(matches!(err, RegisterError::Io { .. }), "{err}");
    assert!(!fx.app("a").exists());
    assert!(!fx
        .registry
        .config_path(&FlakeName::new("app").unwrap())
        .exists());
    assert!(!fx
        .registry
        .fragments_dir(&FlakeName::new("app").unwrap())
        .exists());
}

#[test]
fn relative_and_unnamed_app_paths_are_refused() {
    let fx = Fixture::new();
    for app in ["bin/aws", "/", "/usr/bin/.hidden"] {
        assert!(
            fx.registration(Path::new(app), false).check().is_err(),
            "{app}"
        );
    }
}

#[test]
fn remove_checks_ownership_unless_forced() {
    let fx = Fixture::new();
    let app = fx.app("bin/aws");
    fx.registration(&app, false).commit().unwrap();
    let name = remove_app(&fx.registry, &app, false, "podman").unwrap();
    assert!(!app.exists() && !app.is_symlink());
    assert!(!fx.registry.config_path(&name).exists());
    assert!(!fx.registry.fragments_dir(&name).exists());
    let err = remove_app(&fx.registry, &app, false, "podman").unwrap_err();
    assert!(matches!(err, RegisterError::NotRegistered { .. }), "{err}");
    remove_app(&fx.registry, &app, true, "podman").unwrap();
}

#[test]
fn remove_force_cleans_dangling_symlink_but_not_real_files() {
    let fx = Fixture::new();
    let app = fx.app("bin/gone");
    std::fs::create_dir_all(app.parent().unwrap()).unwrap();
    std::os::unix::fs::symlink("/nonexistent", &app).unwrap();
    remove_app(&fx.registry, &app, true, "podman").unwrap();
    assert!(!app.is_symlink());
    let real = fx.app("bin/real");
    std::fs::write(&real, "x").unwrap();
    assert!(remove_app(&fx.registry, &real, true, "podman").is_err());
    assert!(real.exists());
}

#[test]
fn remove_refuses_a_flake_of_the_other_engine_even_forced() {
    let fx = Fixture::new();
    let app = fx.app("bin/aws");
    fx.registration(&app, false).commit().unwrap();
    for force in [false, true] {
        let err = remove_app(&fx.registry, &app, force, "firecracker").unwrap_err();
        let text = err.to_string();
        assert!(matches!(err, RegisterError::WrongEngine { .. }), "{text}");
        assert!(
            text.contains("podman flake") && text.contains("flake-ctl podman remove --app"),
            "{text}"
        );
    }
    assert!(app.is_symlink(), "nothing removed");
    assert!(fx.registry.config_path(&app_name(&app).unwrap()).is_file());
}

#[test]
fn a_failed_registration_keeps_a_directory_another_one_filled() {
    let fx = Fixture::new();
    let app = fx.app("bin/aws");
    fx.registration(&app, false).commit().unwrap();
    let other = fx.app("other/aws");
    let err = fx.registration(&other, false).commit().unwrap_err();
    assert!(matches!(err, RegisterError::NameTaken { .. }), "{err}");
    assert!(fx.registry.config_path(&app_name(&app).unwrap()).is_file());
    assert!(!other.is_symlink() && !other.parent().unwrap().exists());
}
