// SPDX-License-Identifier: MIT
//! `podman-pilot`: the launcher every podman flake's app path points to.
//!
//! Called as `/usr/bin/aws ec2 help`, it loads flake `aws`, assembles its image first when
//! it has a base, layers, includes or host dependencies (cached), and runs it in the flake's
//! launch mode: one-shot (replaces itself with `podman run --rm`), resume (a call into the
//! running instance's agent) or attach. Its own failures exit 125 (see `flakes::exit`),
//! including a root flake that sudo will not run for the caller (asked before the launch,
//! since sudo's own refusal exits 1 like an app could). With `PILOT_DEBUG` set, every
//! engine command line it runs is printed on stderr, environment values masked.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use flakes::config::{ContainerFlake, LaunchMode, RunAs};
use flakes::instance::{cache_dir, InstanceKey, StateDir};
use flakes::launcher::{self, Launcher, Resolved};
use flakes::{PilotExit, Settings};
use podman_pilot::oneshot::{self, Streams, Terminal};
use podman_pilot::provision::Provisioner;
use podman_pilot::resume::{self, Instance};
use podman_pilot::{agent, attach, Engine, PodmanError};

fn main() -> ExitCode {
    launcher::init_logging(Launcher::Podman);
    match run() {
        Ok(exit) => exit.into(),
        Err(err) => {
            eprintln!("podman-pilot: {}", flakes::report::one_line(&err));
            PilotExit::from(&err).into()
        }
    }
}

/// A container flake resolved from the call.
type Flake = Resolved<ContainerFlake>;

fn run() -> Result<PilotExit, PodmanError> {
    let mut flake =
        launcher::resolve::<ContainerFlake, _>(std::env::args_os(), Settings::from_env)?;
    let engine = engine(&flake)?;
    if flake.engine.needs_provisioning(&flake.include) {
        flake.engine.image = provision(&flake, &engine)?;
    }
    let terminal = Terminal::detect();
    match flake.engine.runtime.mode {
        LaunchMode::OneShot => one_shot(&flake, &engine, terminal),
        LaunchMode::Attach => {
            let instance = instance(&flake, &engine)?;
            attach::call(&instance, &flake.engine, &flake.call, terminal, &lookup)
        }
        LaunchMode::Resume => {
            let instance = instance(&flake, &engine)?;
            let agent = agent()?;
            resume::call(
                &instance,
                &agent,
                &flake.engine,
                &flake.call,
                terminal,
                &lookup,
            )
        }
    }
}

/// The caller's environment, for `%VAR` in the flake's engine options.
fn lookup(key: &str) -> Option<String> {
    std::env::var(key).ok()
}

/// True when podman runs as root through sudo: a `runas: root` flake called by a user.
fn via_sudo(flake: &Flake) -> bool {
    flake.engine.runtime.runas == RunAs::Root && !flake.settings.caller.is_root()
}

/// podman (through sudo when it must), with the storage of the flake's registrations; sudo
/// is asked first whether it will run podman for the caller.
fn engine(flake: &Flake) -> Result<Engine, PodmanError> {
    let engine = Engine::locate(std::env::var_os("PATH").as_deref(), via_sudo(flake))?
        .with_storage_conf(flake.settings.podman_storage_conf(flake.mode));
    engine.check_sudo(flake.name.as_str())?;
    Ok(engine)
}

/// The assembled image of a flake with a base, layers, includes or host dependencies
/// (cached across calls).
fn provision(flake: &Flake, engine: &Engine) -> Result<String, PodmanError> {
    let settings = &flake.settings;
    let provisioner = Provisioner {
        engine,
        name: &flake.name,
        config: &flake.config,
        flake: &flake.engine,
        include: &flake.include,
        cache_dir: cache_dir(&settings.podman_ids_dir(flake.mode), settings.caller.uid)?,
        progress: flake.call.options.progress,
        ignore_sync_error: flake.call.options.ignore_sync_error,
    };
    provisioner.image()
}

/// A one-shot call: the launcher becomes `podman run --rm`, or relays the terminal when
/// only some of its streams are terminals.
fn one_shot(flake: &Flake, engine: &Engine, terminal: Terminal) -> Result<PilotExit, PodmanError> {
    let container = &flake.engine;
    let streams = Streams::choose(
        container,
        &flake.call,
        terminal,
        Streams::detect_terminals(),
    );
    let cmd = oneshot::command(
        &flake.name,
        container,
        &flake.call,
        engine,
        (terminal, streams),
        &lookup,
    )?;
    flakes::fault::pause_at(flakes::fault::Step::Exec);
    match streams {
        Streams::Relayed(terminals) => Ok(oneshot::relay::run(&cmd, terminals)?),
        _ => Err(cmd.exec().into()),
    }
}

/// The long-lived instance a resume or attach call goes to, its state directory ready.
fn instance<'e>(flake: &Flake, engine: &'e Engine) -> Result<Instance<'e>, PodmanError> {
    let uid = flake.settings.caller.uid;
    let key = InstanceKey {
        flake: flake.name.clone(),
        instance: flake.call.instance.clone(),
    };
    Ok(Instance {
        engine,
        state: StateDir::prepare(&flake.settings.podman_ids_dir(flake.mode), uid, &key)?,
        container: key.container_name(uid),
        key,
        direct: !via_sudo(flake),
    })
}

/// The static agent a resume instance runs as its PID 1, found beside this binary unless
/// `FLAKE_AGENT` names it.
fn agent() -> Result<PathBuf, PodmanError> {
    let exe = std::env::current_exe().unwrap_or_default();
    let exe_dir = exe.parent().unwrap_or(Path::new("/"));
    agent::locate(std::env::var_os(agent::AGENT_ENV), exe_dir)
}
