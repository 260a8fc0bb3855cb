// SPDX-License-Identifier: MIT
//! Resume mode: one long-lived instance per flake (and `@NAME`), every call runs inside it.
//!
//! The instance's PID 1 is `flake-agent`, bind-mounted read-only; its socket lives in the
//! `run/` directory of the instance's private state directory, bind-mounted at
//! [`STATE_MOUNT`]. The warm path is a
//! connect to that socket: no engine process, and a refused connection is proof that the
//! instance is gone (PID reuse cannot fool it). The cold path runs under the instance lock,
//! so concurrent first calls start exactly one instance:
//!
//! 1. lock; connect again (another caller may have just started it);
//! 2. `podman run -d --rm --name N ... --entrypoint /.flake-agent IMAGE serve ...`, after
//!    removing a leftover container of that name (crash, reboot, `podman rm` behind our back);
//! 3. for a flake on the image's own entry command (`--target /`), read that command from
//!    the image and keep it with the instance ([`crate::entry`]);
//! 4. wait for the socket, unlock, and make the call like a warm one.
//!
//! Every connection is checked to be served by the instance's agent before anything is
//! sent (see [`crate::identity`]): the warm path compares the listener with the identity
//! recorded by the cold path, and the cold path asks podman which process the agent is. A
//! socket served by anything else is refused with one line. The socket is reached through
//! the state directory the launcher holds open (`/proc/self/fd/N/agent.sock`), so no
//! rename of a directory can redirect the call, and no instance name is too long for a
//! socket path; inside the instance its path is the short, fixed [`STATE_MOUNT`].
//!
//! When the agent cannot be reached although the container runs (or podman runs through
//! sudo, whose root-owned socket the caller cannot open), the call falls back to
//! `podman exec`.

use std::ffi::OsString;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use flakes::config::{ContainerFlake, Target};
use flakes::fault::{pause_at, Step};
use flakes::instance::{socket_in, InstanceKey, StateDir};
use flakes::process::{Cmd, ProcessError};
use flakes::{CallArgs, PilotExit};

use crate::entry::ImageEntry;
use crate::identity::{is_agent_of, AgentId};
use crate::oneshot::{Terminal, FLAKE_LABEL, INSTANCE_LABEL};
use crate::options::{engine_options, OptionPolicy};
use crate::{Engine, PodmanError};
use flake_agent::client::{self, Request, Streams};
use flake_agent::transport::peer_credentials;

/// Where the state directory appears inside the instance.
pub const STATE_MOUNT: &str = "/.flake-pilot";
/// Where the agent binary appears inside the instance.
pub const AGENT_MOUNT: &str = "/.flake-agent";
/// How long a started instance may take to open its socket.
const AGENT_TIMEOUT: Duration = Duration::from_secs(15);

/// Everything a resume call needs besides the flake.
#[derive(Debug)]
pub struct Instance<'a> {
    /// The engine.
    pub engine: &'a Engine,
    /// The instance's state directory.
    pub state: StateDir,
    /// Which instance.
    pub key: InstanceKey,
    /// Container name.
    pub container: String,
    /// True when the agent socket is reachable by the caller (not through sudo).
    pub direct: bool,
}

/// Runs one call of a resume flake; `agent` is the host path of the static agent.
pub fn call(
    instance: &Instance<'_>,
    agent: &Path,
    flake: &ContainerFlake,
    call: &CallArgs,
    terminal: Terminal,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<PilotExit, PodmanError> {
    let tty = terminal.wants_tty(call);
    let stream = match instance.direct.then(|| warm_connect(instance)).flatten() {
        Some(stream) => Some(stream),
        None => cold_start(instance, agent, flake, call, lookup)?,
    };
    let argv = target_argv(instance, flake, call)?;
    let exit = match stream {
        Some(stream) => {
            pause_at(Step::Connected);
            let term = std::env::var_os("TERM").map(|t| t.as_bytes().to_vec());
            let streams = if tty {
                Streams::Terminal
            } else {
                Streams::Descriptors
            };
            let request = Request {
                argv,
                streams,
                term,
                env: Vec::new(),
                cwd: Vec::new(),
                user: Vec::new(),
                launcher: "podman-pilot",
                output_acks: false,
                stdin_on_ack: false,
                answer_within: None,
            };
            PilotExit::App(client::run(stream, &request)?.code())
        }
        None => exec_fallback(instance, &argv, tty, call.options.remove)?,
    };
    if call.options.remove {
        remove(instance)?;
    }
    Ok(exit)
}

/// Removes the instance and its state.
pub fn remove(instance: &Instance<'_>) -> Result<(), PodmanError> {
    let _lock = instance.state.lock()?;
    instance.engine.remove_container(&instance.container)?;
    instance.state.clone().remove()?;
    Ok(())
}

/// The program and arguments of one call: the flake's target, or the image's own entry
/// command for a flake registered on it (see [`crate::entry`]).
fn target_argv(
    instance: &Instance<'_>,
    flake: &ContainerFlake,
    call: &CallArgs,
) -> Result<Vec<Vec<u8>>, PodmanError> {
    let program = match &flake.target {
        Target::Program(path) => path.clone(),
        Target::FlakeName => instance.key.flake.to_string(),
        Target::ImageEntrypoint => {
            let entry = match ImageEntry::load(instance.state.dir()) {
                Some(entry) => entry,
                // Started by a launcher that did not write it down (killed, or older):
                // read it now; only a cold start, under the instance lock, keeps it.
                None => {
                    ImageEntry::of_container(instance.engine, &instance.container, &flake.image)?
                }
            };
            return Ok(entry.argv(&call.app_args, &flake.image)?);
        }
    };
    let mut argv = vec![program.into_bytes()];
    argv.extend(call.app_args.iter().map(|a| a.as_bytes().to_vec()));
    Ok(argv)
}

/// Reads the image's entry command and keeps it in the instance's state directory.
fn keep_image_entry(
    instance: &Instance<'_>,
    flake: &ContainerFlake,
) -> Result<ImageEntry, PodmanError> {
    let entry = ImageEntry::of_container(instance.engine, &instance.container, &flake.image)?;
    entry.save(instance.state.dir())?;
    Ok(entry)
}

/// A connection to the agent recorded by the last cold start, if it still serves.
fn warm_connect(instance: &Instance<'_>) -> Option<UnixStream> {
    let stream = instance.state.connect().ok()?;
    AgentId::load(&instance.state)?
        .serves(&stream)
        .then_some(stream)
}

/// Starts the instance under its lock; returns a connection when the agent is reachable.
fn cold_start(
    instance: &Instance<'_>,
    agent: &Path,
    flake: &ContainerFlake,
    call: &CallArgs,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<Option<UnixStream>, PodmanError> {
    let _lock = instance.state.lock()?;
    if instance.direct {
        if let Some(stream) = warm_connect(instance) {
            return Ok(Some(stream));
        }
        // Someone listens, but not the recorded agent: the instance's own after a restart
        // behind our back, or an impostor. Only podman can tell.
        if let Ok(stream) = instance.state.connect() {
            if let Some(init) = instance.engine.container_pid(&instance.container)? {
                return verified(instance, stream, init).map(Some);
            }
        }
    } else if is_running(instance)? {
        return Ok(None);
    }
    pause_at(Step::Locked);
    crate::agent::check_static(agent)?;
    instance.state.remove_socket()?;
    let run = start_command(instance, agent, flake, call, lookup)?;
    if let Err(err) = run.stdout() {
        // A container of that name left from a crash or reboot: remove it and retry once.
        let _ = instance.engine.remove_container(&instance.container);
        run.stdout().map_err(|_| err)?;
    }
    pause_at(Step::Started);
    if flake.target == Target::ImageEntrypoint {
        // After the start, which pulled a missing image: the instance runs this one.
        keep_image_entry(instance, flake)?;
    }
    if !instance.direct {
        return Ok(None);
    }
    wait_for_agent(instance)
}

/// `stream`, once its listener is shown to be the agent of the container whose PID 1 is
/// `init`; the agent's identity is recorded for the warm path.
fn verified(
    instance: &Instance<'_>,
    stream: UnixStream,
    init: u32,
) -> Result<UnixStream, PodmanError> {
    let peer = peer_credentials(&stream).map_err(flake_protocol::proto::ProtoError::from)?;
    let agent = is_agent_of(peer.pid, init)
        .then(|| AgentId::of_peer(peer))
        .flatten();
    match agent {
        Some(agent) => {
            agent.save(&instance.state)?;
            Ok(stream)
        }
        None => Err(PodmanError::Impostor {
            container: instance.container.clone(),
            socket: socket_in(instance.state.path()),
            pid: peer.pid,
            uid: peer.uid,
        }),
    }
}

fn wait_for_agent(instance: &Instance<'_>) -> Result<Option<UnixStream>, PodmanError> {
    let deadline = Instant::now() + AGENT_TIMEOUT;
    loop {
        if let Ok(stream) = instance.state.connect() {
            if let Some(init) = instance.engine.container_pid(&instance.container)? {
                return verified(instance, stream, init).map(Some);
            }
        }
        if Instant::now() > deadline {
            if is_running(instance)? {
                tracing::warn!(container = %instance.container, "agent unreachable; using podman exec");
                return Ok(None);
            }
            return Err(PodmanError::AgentDidNotStart {
                container: instance.container.clone(),
            });
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

fn is_running(instance: &Instance<'_>) -> Result<bool, ProcessError> {
    instance.engine.container_running(&instance.container)
}

/// `podman run -d --rm ...` with the agent as PID 1.
fn start_command(
    instance: &Instance<'_>,
    agent: &Path,
    flake: &ContainerFlake,
    call: &CallArgs,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<Cmd, PodmanError> {
    let policy = OptionPolicy {
        ignore_missing_volume_path: call.options.ignore_missing_volume_path,
    };
    let options =
        instance
            .engine
            .launch_options(engine_options(&flake.runtime.podman, policy, lookup)?)?;
    let mut args: Vec<OsString> = ["run", "--detach", "--rm", "--quiet", "--name"]
        .map(OsString::from)
        .into();
    args.push(instance.container.clone().into());
    args.push(format!("--label={FLAKE_LABEL}={}", instance.key.flake).into());
    if let Some(name) = &instance.key.instance {
        args.push(format!("--label={INSTANCE_LABEL}={name}").into());
    }
    args.push(volume(&instance.state.run_dir(), STATE_MOUNT, ""));
    args.push(volume(agent, AGENT_MOUNT, ":ro"));
    args.extend(options.iter().flat_map(|o| o.args()).map(OsString::from));
    args.extend([
        "--entrypoint".into(),
        AGENT_MOUNT.into(),
        "--".into(),
        flake.image.clone().into(),
    ]);
    args.extend([
        "serve".into(),
        "--socket".into(),
        format!("{STATE_MOUNT}/agent.sock").into(),
    ]);
    Ok(instance.engine.podman().args(args))
}

fn volume(host: &Path, inside: &str, flags: &str) -> OsString {
    let mut arg = OsString::from("--volume=");
    arg.push(host);
    arg.push(format!(":{inside}{flags}"));
    arg
}

/// `podman exec` into the running instance; replaces the launcher.
/// With `%remove` it runs `podman exec` as a child instead, so the removal can follow.
fn exec_fallback(
    instance: &Instance<'_>,
    argv: &[Vec<u8>],
    tty: bool,
    then_remove: bool,
) -> Result<PilotExit, PodmanError> {
    let mut cmd = instance.engine.podman().args(["exec", "--interactive"]);
    if tty {
        cmd = cmd.arg("--tty");
    }
    cmd = cmd.arg(&instance.container);
    cmd = cmd.args(
        argv.iter()
            .map(|a| OsString::from(std::ffi::OsStr::from_bytes(a))),
    );
    if then_remove {
        return Ok(PilotExit::from_status(cmd.status()?));
    }
    Err(cmd.exec().into())
}
