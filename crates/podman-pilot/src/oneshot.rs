// SPDX-License-Identifier: MIT
//! The one-shot launch: one `podman run --rm` that the launcher replaces itself with.
//!
//! Exec'ing the engine (instead of create + start + rm as the original did) gives the app's
//! exit status, signals and the terminal to the caller natively, and costs exactly one engine
//! process. The arguments are chosen so the instance behaves like a local program:
//! - `--interactive` always, so `echo x | app` and `app < file` stream into the app;
//! - `--tty` only when stdin and stdout are terminals (or stdin is one and `%interactive`
//!   was given), so pipes carry clean bytes;
//! - `--init` unless the flake sets it itself: without an init the app is PID 1, which the
//!   kernel shields from SIGINT/SIGTERM, so Ctrl-C would not stop it; tini's static build is
//!   preferred as the init when installed (see [`crate::INIT_PROGRAM`]);
//! - `--quiet` unless `%progress`, so an image pull at first launch does not print into the
//!   app's stderr;
//! - `--log-driver=passthrough` when the app gets no terminal: the app then reads and
//!   writes the caller's own descriptors, so a reader that goes away (`app | head -1`) ends
//!   the app with its own `SIGPIPE` (exit 141), as it would a local program, instead of
//!   killing podman mid-copy and leaving the container running. podman refuses this when
//!   one of its streams is a terminal; [`relay`] covers that case.

pub mod relay;

use std::ffi::OsString;

use flakes::config::{ContainerFlake, Target};
use flakes::process::Cmd;
use flakes::{CallArgs, FlakeName};

use crate::options::{engine_options, OptionPolicy};
use crate::{Engine, PodmanError};

/// Label carrying the flake name on every instance.
pub const FLAKE_LABEL: &str = "io.flake-pilot.flake";
/// Label carrying the `@NAME` instance name, when given.
pub const INSTANCE_LABEL: &str = "io.flake-pilot.instance";

pub use flakes::callargs::Terminal;

/// How a one-shot launch connects the caller's standard streams to the app.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Streams {
    /// podman gives the app a terminal (`--tty`) and relays it; the launcher execs podman.
    Terminal,
    /// The flake sets its own `--log-driver`: podman relays the streams.
    Engine,
    /// No stream is a terminal: the app gets the caller's descriptors, the launcher execs
    /// podman.
    Direct,
    /// Some streams are terminals (the flags say which of stdin, stdout, stderr): the app
    /// gets the others directly, the launcher relays these ([`relay`]).
    Relayed(relay::TerminalStreams),
}

impl Streams {
    /// Chooses for a call; `terminals` says which of stdin, stdout and stderr are terminals.
    pub fn choose(
        flake: &ContainerFlake,
        call: &CallArgs,
        terminal: Terminal,
        terminals: relay::TerminalStreams,
    ) -> Self {
        let own_driver = flake
            .runtime
            .podman
            .iter()
            .any(|entry| crate::options::EngineOption::parse(entry).is_log_driver());
        if terminal.wants_tty(call) {
            Streams::Terminal
        } else if own_driver {
            Streams::Engine
        } else if terminals.contains(&true) {
            Streams::Relayed(terminals)
        } else {
            Streams::Direct
        }
    }

    /// Which of stdin, stdout and stderr of this process are terminals.
    pub fn detect_terminals() -> relay::TerminalStreams {
        use std::io::IsTerminal;
        [
            std::io::stdin().is_terminal(),
            std::io::stdout().is_terminal(),
            std::io::stderr().is_terminal(),
        ]
    }

    fn passthrough(self) -> bool {
        matches!(self, Streams::Direct | Streams::Relayed(_))
    }
}

/// Builds the `podman run --rm` command of a one-shot launch.
pub fn command(
    name: &FlakeName,
    flake: &ContainerFlake,
    call: &CallArgs,
    engine: &Engine,
    (terminal, streams): (Terminal, Streams),
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<Cmd, PodmanError> {
    let args = instance_args(name, flake, call, engine, terminal, lookup)?;
    let run = engine.podman().args(["run", "--rm"]);
    let run = if streams.passthrough() {
        run.arg("--log-driver=passthrough")
    } else {
        run
    };
    Ok(run.args(args))
}

/// Everything after `podman run --rm` (or `podman create --rm`) for an instance that runs
/// the flake's target with the call's arguments: options, `--`, the image, the arguments.
pub fn instance_args(
    name: &FlakeName,
    flake: &ContainerFlake,
    call: &CallArgs,
    engine: &Engine,
    terminal: Terminal,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<Vec<OsString>, PodmanError> {
    let policy = OptionPolicy {
        ignore_missing_volume_path: call.options.ignore_missing_volume_path,
    };
    let options = engine.launch_options(engine_options(&flake.runtime.podman, policy, lookup)?)?;
    let mut args: Vec<OsString> = vec!["--interactive".into()];
    if terminal.wants_tty(call) {
        args.push("--tty".into());
    }
    if !options.iter().any(|o| o.is_init()) {
        args.push("--init".into());
        if let Some(init) = engine.init() {
            let mut arg = OsString::from("--init-path=");
            arg.push(init);
            args.push(arg);
        }
    }
    if !call.options.progress {
        args.push("--quiet".into());
    }
    args.push(format!("--label={FLAKE_LABEL}={name}").into());
    if let Some(instance) = &call.instance {
        args.push(format!("--label={INSTANCE_LABEL}={instance}").into());
    }
    args.extend(options.iter().flat_map(|o| o.args()).map(OsString::from));
    match &flake.target {
        Target::ImageEntrypoint => {}
        Target::Program(path) => args.extend(["--entrypoint".into(), path.into()]),
        Target::FlakeName => args.extend(["--entrypoint".into(), name.as_str().into()]),
    }
    // Options end here: the image can never be read as one.
    args.extend(["--".into(), flake.image.clone().into()]);
    args.extend(call.app_args.iter().cloned());
    Ok(args)
}

#[cfg(test)]
mod tests;
