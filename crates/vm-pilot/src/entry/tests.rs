// SPDX-License-Identifier: MIT
//! The argv a call builds from an image's entry command, and the checks of hostile records.

use flakes::config::vm::VmFlake;

use super::*;
use crate::oci::{OciRecord, Origin};

fn config(entrypoint: &[&str], cmd: &[&str]) -> ImageConfig {
    ImageConfig {
        entrypoint: entrypoint.iter().map(|s| s.to_string()).collect(),
        cmd: cmd.iter().map(|s| s.to_string()).collect(),
        ..ImageConfig::default()
    }
}

/// The argv of a call with `args` of a flake on the entry command of an image with
/// `entrypoint` and `cmd`.
fn argv(entrypoint: &[&str], cmd: &[&str], args: &[&str]) -> Vec<String> {
    let args: Vec<OsString> = args.iter().map(OsString::from).collect();
    let image = check(&config(entrypoint, cmd)).unwrap();
    let command = GuestCommand {
        fixed: image.entrypoint,
        defaults: image.cmd,
        ..GuestCommand::default()
    };
    let argv = command.argv(&args);
    argv.into_iter()
        .map(|a| String::from_utf8(a).unwrap())
        .collect()
}

#[test]
fn call_arguments_replace_cmd_and_the_entrypoint_stays() {
    /// Entrypoint, command, call arguments, argv.
    type Case<'a> = (&'a [&'a str], &'a [&'a str], &'a [&'a str], &'a [&'a str]);
    let cases: &[Case] = &[
        (&["/e", "-v"], &["default"], &[], &["/e", "-v", "default"]),
        (
            &["/e", "-v"],
            &["default"],
            &["a", "b c"],
            &["/e", "-v", "a", "b c"],
        ),
        (&["/e"], &[], &[], &["/e"]),
        (&["/e"], &[], &["x"], &["/e", "x"]),
        (&[], &["/bin/sh"], &[], &["/bin/sh"]),
        (&[], &["/bin/sh"], &["ls", "-l"], &["ls", "-l"]),
        (&["/e"], &["-"], &["", "@x", "%y"], &["/e", "", "@x", "%y"]),
    ];
    for (entrypoint, cmd, args, want) in cases {
        assert_eq!(
            argv(entrypoint, cmd, args),
            *want,
            "{entrypoint:?} {cmd:?} {args:?}"
        );
    }
    let program = GuestCommand::program("/bin/sh");
    assert_eq!(program.argv(&[]), [b"/bin/sh".to_vec()]);
    assert_eq!(
        program.argv(&["-c".into()]),
        [b"/bin/sh".to_vec(), b"-c".to_vec()]
    );
    assert!(program.env().is_empty() && program.cwd().is_empty());
}

#[test]
fn env_and_working_dir_are_kept_as_given() {
    let entry = check(&ImageConfig {
        env: vec![
            "PATH=/usr/bin:/bin".into(),
            "A_B.c-d=x=y z".into(),
            "EMPTY=".into(),
        ],
        working_dir: Some("/srv/app dir".into()),
        ..ImageConfig::default()
    })
    .unwrap();
    let env: Vec<&[u8]> = entry.env.iter().map(Vec::as_slice).collect();
    assert_eq!(
        env,
        [&b"PATH=/usr/bin:/bin"[..], b"A_B.c-d=x=y z", b"EMPTY="]
    );
    assert_eq!(entry.cwd, b"/srv/app dir");
    let unset = check(&ImageConfig {
        working_dir: Some(String::new()),
        ..ImageConfig::default()
    })
    .unwrap();
    assert_eq!(unset.cwd, b"");
}

#[test]
fn hostile_records_are_refused_with_what_is_wrong() {
    let long = "x".repeat(MAX_ENTRY + 1);
    let many: Vec<String> = (0..=MAX_ENTRIES).map(|i| format!("V{i}=1")).collect();
    let big: Vec<String> = (0..MAX_ENTRIES)
        .map(|_| "y".repeat(MAX_TOTAL / 1000))
        .collect();
    let cases: Vec<(ImageConfig, &str)> = vec![
        (config(&["/e\0x"], &[]), "NUL"),
        (config(&[], &["a", "b\0"]), "NUL"),
        (config(&[long.as_str()], &[]), "longer"),
        (
            ImageConfig {
                cmd: big,
                ..ImageConfig::default()
            },
            "exceed",
        ),
        (
            ImageConfig {
                env: many,
                ..ImageConfig::default()
            },
            "more than",
        ),
        (env(&["NOVALUE"]), "KEY=VALUE"),
        (env(&["=value"]), "variable name"),
        (env(&["1A=x"]), "variable name"),
        (env(&["A B=x"]), "variable name"),
        (env(&["A\0=x"]), "variable name"),
        (env(&["A;rm=x"]), "variable name"),
        (env(&["A=x\0y"]), "NUL"),
        (env(&[&format!("A={long}")]), "longer"),
        (as_user("a b"), "USER[:GROUP]"),
        (as_user("app:"), "USER[:GROUP]"),
        (as_user(":staff"), "USER[:GROUP]"),
        (as_user("a:b:c"), "USER[:GROUP]"),
        (as_user("app\0"), "USER[:GROUP]"),
        (as_user(&"u".repeat(MAX_USER + 1)), "USER[:GROUP]"),
        (workdir("srv"), "absolute"),
        (workdir("/srv\0/x"), "absolute"),
        (workdir(&format!("/{long}")), "absolute"),
    ];
    for (config, needle) in cases {
        let err = check(&config).unwrap_err();
        assert!(err.contains(needle) && err.len() < 200, "{needle}: {err}");
    }
}

fn env(entries: &[&str]) -> ImageConfig {
    ImageConfig {
        env: entries.iter().map(|s| s.to_string()).collect(),
        ..ImageConfig::default()
    }
}

fn as_user(user: &str) -> ImageConfig {
    ImageConfig {
        user: Some(user.into()),
        ..ImageConfig::default()
    }
}

#[test]
fn users_pass_as_written_and_root_not_at_all() {
    let cases = [
        ("app", "app"),
        ("1000:1000", "1000:1000"),
        ("app:staff", "app:staff"),
        ("root:staff", "root:staff"),
        ("0:50", "0:50"),
        ("nobody.x-1", "nobody.x-1"),
        ("", ""),
        ("root", ""),
        ("0", ""),
        ("0:0", ""),
        ("root:root", ""),
        ("root:0", ""),
    ];
    for (user, want) in cases {
        assert_eq!(
            check(&as_user(user)).unwrap().user,
            want.as_bytes(),
            "{user}"
        );
    }
}

fn workdir(dir: &str) -> ImageConfig {
    ImageConfig {
        working_dir: Some(dir.into()),
        ..ImageConfig::default()
    }
}

fn flake(dir: &Path, target: Target) -> VmFlake {
    let mut flake = crate::firecracker::tests::flake(false, dir.join("kernel"), dir.join("rootfs"));
    flake.target = target;
    flake
}

fn record(config: ImageConfig) -> OciRecord {
    OciRecord {
        rootfs: Origin {
            reference: "127.0.0.1:5000/app:1".into(),
            digest: None,
            image_id: "c".repeat(64),
        },
        kernel: None,
        config,
    }
}

#[test]
fn a_flake_on_the_entry_command_needs_an_image_that_has_one() {
    let dir = tempfile::tempdir().unwrap();
    let file = Path::new("/etc/flakes/app.yaml");
    let entry_flake = flake(dir.path(), Target::ImageEntrypoint);
    let program_flake = flake(dir.path(), Target::Program("/bin/sh".into()));
    let for_flake = |flake: &VmFlake| GuestCommand::for_flake(flake, "app", file);
    // No record: a program flake runs as before, the entry command has nothing to run.
    assert_eq!(
        for_flake(&program_flake).unwrap(),
        GuestCommand::program("/bin/sh")
    );
    let named = flake(dir.path(), Target::FlakeName);
    assert_eq!(for_flake(&named).unwrap(), GuestCommand::program("app"));
    let err = for_flake(&entry_flake).unwrap_err().to_string();
    assert!(
        err.contains("/etc/flakes/app.yaml") && err.contains("not made from an OCI image"),
        "{err}"
    );
    oci::write(dir.path(), &record(env(&["A=1"]))).unwrap();
    let err = for_flake(&entry_flake).unwrap_err().to_string();
    assert!(err.contains("neither an entrypoint nor a command"), "{err}");
    assert!(
        err.contains("target_app_path") && !err.contains('\n'),
        "{err}"
    );
    // A program flake on an OCI image still gets its environment.
    let command = for_flake(&program_flake).unwrap();
    assert_eq!(command.env(), [b"A=1".to_vec()]);
    let err = require_entry_command(dir.path(), "img", "--target /").unwrap_err();
    assert!(err.to_string().starts_with("--target / asks for"), "{err}");
    let mut image = config(&[], &["/bin/app"]);
    image.working_dir = Some("/srv".into());
    oci::write(dir.path(), &record(image)).unwrap();
    let command = for_flake(&entry_flake).unwrap();
    assert_eq!(command.argv(&[]), [b"/bin/app".to_vec()]);
    assert_eq!(command.cwd(), b"/srv");
    require_entry_command(dir.path(), "img", "--target /").unwrap();
}

#[test]
fn a_bad_record_is_refused_for_every_flake_on_the_image() {
    let dir = tempfile::tempdir().unwrap();
    oci::write(dir.path(), &record(workdir("relative"))).unwrap();
    for target in [Target::ImageEntrypoint, Target::Program("/bin/sh".into())] {
        let err = GuestCommand::for_flake(&flake(dir.path(), target), "x", Path::new("/x.yaml"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(oci::RECORD_FILE) && err.contains("WorkingDir") && err.contains("pull"),
            "{err}"
        );
    }
}
