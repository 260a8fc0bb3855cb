// SPDX-License-Identifier: MIT
//! Unit tests of the launchers' front half, against registries in temporary directories.

use std::ffi::OsString;
use std::path::Path;

use super::*;
use crate::global::GlobalConfig;
use crate::host::Caller;

const CONTAINER: &str = "container:\n  name: localhost/busybox\n  host_app_path: /usr/bin/a\n";
const VM: &str = "
vm:
  name: leap
  host_app_path: /usr/bin/a
  runtime:
    firecracker:
      rootfs_image_path: /i/rootfs
      kernel_image_path: /i/kernel
";

/// A system and a user registry below one temporary directory.
struct World {
    dir: tempfile::TempDir,
}

impl World {
    fn new() -> Self {
        World {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn register(&self, mode: Mode, name: &str, yaml: &str) {
        let dir = self.settings().flakes_dir(mode);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(format!("{name}.yaml")), yaml).unwrap();
    }

    fn settings(&self) -> Settings {
        let mut system = GlobalConfig::default();
        system.generic.flakes_dir = Some(self.dir.path().join("system"));
        Settings {
            caller: Caller {
                uid: 1000,
                name: "user".into(),
                home: Some(self.dir.path().join("home")),
                runtime_dir: None,
            },
            system_path: self.dir.path().join("flakes.yml"),
            system,
            user_path: None,
            user: GlobalConfig::default(),
        }
    }

    fn resolve<E: LaunchedBy>(&self, argv: &[&str]) -> Result<Resolved<E>, LaunchError> {
        let argv: Vec<OsString> = argv.iter().map(OsString::from).collect();
        resolve(argv, || Ok(self.settings()))
    }
}

#[test]
fn the_flake_is_the_file_name_of_argv0() {
    let world = World::new();
    world.register(Mode::User, "aws", CONTAINER);
    let resolved = world
        .resolve::<ContainerFlake>(&["/usr/bin/aws", "@dev", "%remove", "ec2", "help"])
        .unwrap();
    assert_eq!(resolved.name.as_str(), "aws");
    assert_eq!(resolved.mode, Mode::User);
    assert_eq!(resolved.engine.image, "localhost/busybox");
    assert_eq!(resolved.call.instance.unwrap().as_str(), "dev");
    assert!(resolved.call.options.remove);
    assert_eq!(resolved.call.app_args, ["ec2", "help"].map(OsString::from));
    assert_eq!(
        resolved.config,
        world.settings().flakes_dir(Mode::User).join("aws.yaml")
    );
}

#[test]
fn a_system_registration_shadows_the_users() {
    let world = World::new();
    world.register(Mode::User, "aws", &CONTAINER.replace("busybox", "user"));
    world.register(Mode::System, "aws", CONTAINER);
    let resolved = world.resolve::<ContainerFlake>(&["aws"]).unwrap();
    assert_eq!(resolved.mode, Mode::System);
    assert_eq!(resolved.engine.image, "localhost/busybox");
}

#[test]
fn a_launcher_called_by_a_launchers_name_refuses_with_its_register_hint() {
    let world = World::new();
    for argv0 in [
        "podman-pilot",
        "/usr/bin/podman-pilot",
        "./firecracker-pilot",
    ] {
        let err = world.resolve::<ContainerFlake>(&[argv0]).unwrap_err();
        assert!(
            matches!(
                err,
                LaunchError::CalledDirectly {
                    launcher: Launcher::Podman
                }
            ),
            "{argv0}: {err}"
        );
        assert_eq!(
            err.to_string(),
            "podman-pilot is a launcher: call it through an app registered with \
             `flake-ctl podman register`"
        );
        let err = world.resolve::<VmFlake>(&[argv0, "x"]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "firecracker-pilot is a launcher: call it through an app registered with \
             `flake-ctl firecracker register`"
        );
    }
}

#[test]
fn the_refusal_comes_before_the_global_configuration_is_read() {
    let argv = ["podman-pilot"].map(OsString::from);
    let err = resolve::<ContainerFlake, _>(argv, || panic!("settings read")).unwrap_err();
    assert!(matches!(err, LaunchError::CalledDirectly { .. }), "{err}");
}

#[test]
fn a_flake_of_the_other_engine_is_refused_with_the_command_that_fits() {
    let world = World::new();
    world.register(Mode::User, "box", CONTAINER);
    world.register(Mode::User, "leap", VM);
    let err = world.resolve::<VmFlake>(&["/usr/bin/box"]).unwrap_err();
    assert_eq!(
        err.to_string(),
        "flake 'box' is a podman flake; register it again with flake-ctl podman"
    );
    let err = world
        .resolve::<ContainerFlake>(&["/usr/bin/leap"])
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "flake 'leap' is a firecracker flake; register it again with flake-ctl firecracker"
    );
    assert_eq!(
        world.resolve::<VmFlake>(&["leap"]).unwrap().engine.image,
        "leap"
    );
}

/// The variant of `err`, for table tests.
fn kind(err: &LaunchError) -> &'static str {
    match err {
        LaunchError::CalledDirectly { .. } => "called directly",
        LaunchError::Name(_) => "name",
        LaunchError::CallArgs(_) => "call args",
        LaunchError::Global(_) => "global",
        LaunchError::Registry(_) => "registry",
        LaunchError::WrongEngine { .. } => "wrong engine",
    }
}

#[test]
fn inputs_that_name_no_flake_are_refused_in_order() {
    let world = World::new();
    let cases: [(&[&str], &str); 4] = [
        (&[], "name"),
        (&["/usr/bin/.hidden"], "name"),
        (&["aws", "@bad/name"], "call args"),
        (&["aws"], "registry"),
    ];
    for (argv, expected) in cases {
        let err = world.resolve::<ContainerFlake>(argv).unwrap_err();
        assert_eq!(kind(&err), expected, "{argv:?}: {err}");
    }
}

#[test]
fn a_broken_global_configuration_is_reported() {
    let world = World::new();
    let argv = ["aws"].map(OsString::from);
    let broken = || {
        GlobalConfig::parse(Path::new("/etc/flakes.yml"), "generic: [").map(|_| world.settings())
    };
    let err = resolve::<ContainerFlake, _>(argv, broken).unwrap_err();
    assert!(matches!(err, LaunchError::Global(_)), "{err}");
}

#[test]
fn every_refusal_is_the_launchers_own_failure() {
    let world = World::new();
    for argv in [&["podman-pilot"][..], &["aws"], &["aws", "@bad/name"]] {
        let err = world.resolve::<ContainerFlake>(argv).unwrap_err();
        assert_eq!(PilotExit::from(&err), PilotExit::LauncherFailure, "{err}");
    }
}
