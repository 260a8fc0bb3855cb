// SPDX-License-Identifier: MIT
//! Command construction of one-shot launches, case by case.

use std::ffi::OsString;

use flakes::config::{ContainerRuntime, LaunchMode, RunAs};

use super::*;

fn flake(target: Target, podman: &[&str]) -> ContainerFlake {
    ContainerFlake {
        image: "localhost/busybox".into(),
        target,
        host_app_path: None,
        base: None,
        layers: Vec::new(),
        check_host_dependencies: false,
        execute_systemfiles: false,
        runtime: ContainerRuntime {
            runas: RunAs::Root,
            mode: LaunchMode::OneShot,
            podman: podman.iter().map(|s| s.to_string()).collect(),
        },
    }
}

fn call(args: &[&str]) -> CallArgs {
    CallArgs::parse(args.iter().map(OsString::from)).unwrap()
}

fn env(key: &str) -> Option<String> {
    (key == "HOME").then(|| "/home/u".to_string())
}

fn render(flake: &ContainerFlake, call: &CallArgs, terminal: Terminal) -> String {
    let engine = Engine::new("/usr/bin/podman".into());
    let name = FlakeName::new("app").unwrap();
    command(
        &name,
        flake,
        call,
        &engine,
        with_streams(flake, call, terminal),
        &env,
    )
    .unwrap()
    .to_string()
}

/// Streams as `choose` decides them when stderr is like stdout.
fn with_streams(
    flake: &ContainerFlake,
    call: &CallArgs,
    terminal: Terminal,
) -> (Terminal, Streams) {
    let terminals = [terminal.stdin, terminal.stdout, terminal.stdout];
    (terminal, Streams::choose(flake, call, terminal, terminals))
}

const BASE: &str = "/usr/bin/podman run --rm --log-driver=passthrough --interactive";
const PIPE: Terminal = Terminal {
    stdin: false,
    stdout: false,
};
const TTY: Terminal = Terminal {
    stdin: true,
    stdout: true,
};

#[test]
fn plain_program_with_arguments() {
    let got = render(
        &flake(Target::Program("/bin/sh".into()), &[]),
        &call(&["-c", "echo hi"]),
        PIPE,
    );
    assert_eq!(
        got,
        format!(
            "{BASE} --init --quiet --label=io.flake-pilot.flake=app --entrypoint /bin/sh \
             -- localhost/busybox -c 'echo hi'"
        )
    );
}

#[test]
fn terminal_only_when_both_ends_are_terminals() {
    let f = flake(Target::ImageEntrypoint, &["-ti"]);
    let cases = [
        (TTY, &[][..], true),
        (PIPE, &[][..], false),
        (
            Terminal {
                stdin: true,
                stdout: false,
            },
            &[][..],
            false,
        ),
        (
            Terminal {
                stdin: false,
                stdout: true,
            },
            &[][..],
            false,
        ),
        (
            Terminal {
                stdin: true,
                stdout: false,
            },
            &["%interactive"][..],
            true,
        ),
        (
            Terminal {
                stdin: false,
                stdout: true,
            },
            &["%interactive"][..],
            false,
        ),
    ];
    for (terminal, args, want_tty) in cases {
        let got = render(&f, &call(args), terminal);
        assert_eq!(
            got.contains("--tty"),
            want_tty,
            "{terminal:?} {args:?}: {got}"
        );
        assert!(!got.contains("-ti"), "{got}");
    }
}

#[test]
fn image_entrypoint_and_flake_name_targets() {
    let got = render(
        &flake(Target::ImageEntrypoint, &[]),
        &call(&["ec2", "help"]),
        PIPE,
    );
    assert!(
        got.ends_with("--label=io.flake-pilot.flake=app -- localhost/busybox ec2 help"),
        "{got}"
    );
    let got = render(&flake(Target::FlakeName, &[]), &call(&[]), PIPE);
    assert!(
        got.ends_with("--entrypoint app -- localhost/busybox"),
        "{got}"
    );
}

#[test]
fn options_expanded_in_order_before_the_image() {
    let f = flake(
        Target::Program("/bin/x".into()),
        &["--net host", "--volume %HOME/ai:/root/ai", "-e K=v w"],
    );
    let engine = Engine::new("/usr/bin/podman".into());
    let name = FlakeName::new("app").unwrap();
    let cmd = command(
        &name,
        &f,
        &call(&[]),
        &engine,
        with_streams(&f, &call(&[]), PIPE),
        &env,
    )
    .unwrap();
    let args: Vec<String> = cmd
        .get_args()
        .iter()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    let at = args.iter().position(|a| a == "--net").unwrap();
    assert_eq!(
        args[at..at + 4],
        ["--net", "host", "--volume", "/home/u/ai:/root/ai"]
    );
    // The environment value goes to podman in an inherited file, not on its command line.
    let file = args[at + 4].strip_prefix("--env-file=").unwrap();
    assert_eq!(std::fs::read_to_string(file).unwrap(), "K=v w\n");
    assert_eq!(args[at + 5..at + 7], ["--entrypoint", "/bin/x"]);
    assert!(!args.concat().contains("v w"), "{args:?}");
}

#[test]
fn flake_init_setting_wins_and_progress_shows_pulls() {
    let got = render(
        &flake(Target::ImageEntrypoint, &["--init=false"]),
        &call(&["%progress"]),
        PIPE,
    );
    assert!(
        !got.contains("--init --") && got.contains("--init=false"),
        "{got}"
    );
    assert!(!got.contains("--quiet"), "{got}");
}

#[test]
fn instance_name_labels_the_container_and_is_not_an_app_argument() {
    let got = render(
        &flake(Target::ImageEntrypoint, &[]),
        &call(&["@dev", "x"]),
        PIPE,
    );
    assert!(got.contains("--label=io.flake-pilot.instance=dev"), "{got}");
    assert!(got.ends_with("localhost/busybox x"), "{got}");
}

#[test]
fn escaped_arguments_reach_the_app() {
    let got = render(
        &flake(Target::ImageEntrypoint, &[]),
        &call(&["--", "@x", "%s"]),
        PIPE,
    );
    assert!(got.ends_with("localhost/busybox @x %s"), "{got}");
}

#[test]
fn static_init_is_passed_when_available() {
    let engine =
        Engine::new("/usr/bin/podman".into()).with_init(Some("/usr/bin/tini-static".into()));
    let name = FlakeName::new("app").unwrap();
    let f = flake(Target::ImageEntrypoint, &[]);
    let got = command(
        &name,
        &f,
        &call(&[]),
        &engine,
        with_streams(&f, &call(&[]), PIPE),
        &env,
    )
    .unwrap()
    .to_string();
    assert!(
        got.contains("--init --init-path=/usr/bin/tini-static --quiet"),
        "{got}"
    );
}

#[test]
fn expansion_loop_is_an_error() {
    let engine = Engine::new("/usr/bin/podman".into());
    let name = FlakeName::new("app").unwrap();
    let looping = |k: &str| (k == "A").then(|| "%A".to_string());
    let f = flake(Target::ImageEntrypoint, &["-e %A"]);
    let err = command(
        &name,
        &f,
        &call(&[]),
        &engine,
        with_streams(&f, &call(&[]), PIPE),
        &looping,
    )
    .unwrap_err();
    assert!(matches!(err, PodmanError::Options(_)), "{err}");
}

#[test]
fn app_gets_the_callers_descriptors_unless_a_terminal_or_the_flake_decides() {
    let plain = flake(Target::ImageEntrypoint, &[]);
    let logged = flake(Target::ImageEntrypoint, &["--log-driver=journald"]);
    let none = call(&[]);
    let cases = [
        (&plain, PIPE, [false; 3], Streams::Direct),
        (&plain, TTY, [true; 3], Streams::Terminal),
        // `app | head -1` typed at a terminal: stdin and stderr are the terminal.
        (
            &plain,
            PIPE,
            [true, false, true],
            Streams::Relayed([true, false, true]),
        ),
        (
            &plain,
            PIPE,
            [false, false, true],
            Streams::Relayed([false, false, true]),
        ),
        (&logged, PIPE, [false; 3], Streams::Engine),
        (&logged, TTY, [true; 3], Streams::Terminal),
    ];
    for (f, terminal, terminals, want) in cases {
        let got = Streams::choose(f, &none, terminal, terminals);
        assert_eq!(got, want, "{terminals:?} {:?}", f.runtime.podman);
        let line = command(
            &FlakeName::new("app").unwrap(),
            f,
            &none,
            &Engine::new("/usr/bin/podman".into()),
            (terminal, got),
            &env,
        )
        .unwrap()
        .to_string();
        let passthrough = matches!(want, Streams::Direct | Streams::Relayed(_));
        assert_eq!(
            line.contains("--log-driver=passthrough"),
            passthrough,
            "{line}"
        );
    }
}
