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

use std::path::Path;
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

fn run() -> Result<PilotExit, PodmanError> {
    let Resolved {
        name,
        call,
        settings,
        mode,
        config,
        include,
        engine: container,
    } = launcher::resolve::<ContainerFlake, _>(std::env::args_os(), Settings::from_env)?;
    let via_sudo = container.runtime.runas == RunAs::Root && !settings.caller.is_root();
    let engine = Engine::locate(std::env::var_os("PATH").as_deref(), via_sudo)?
        .with_storage_conf(settings.podman_storage_conf(mode));
    engine.check_sudo(name.as_str())?;
    let mut container = container;
    if container.needs_provisioning(&include) {
        let provisioner = Provisioner {
            engine: &engine,
            name: &name,
            config: &config,
            flake: &container,
            include: &include,
            cache_dir: cache_dir(&settings.podman_ids_dir(mode), settings.caller.uid)?,
            progress: call.options.progress,
            ignore_sync_error: call.options.ignore_sync_error,
        };
        container.image = provisioner.image()?;
    }
    let lookup = |key: &str| std::env::var(key).ok();
    let terminal = Terminal::detect();
    if container.runtime.mode == LaunchMode::OneShot {
        let streams = Streams::choose(&container, &call, terminal, Streams::detect_terminals());
        let cmd = oneshot::command(
            &name,
            &container,
            &call,
            &engine,
            (terminal, streams),
            &lookup,
        )?;
        flakes::fault::pause_at(flakes::fault::Step::Exec);
        return match streams {
            Streams::Relayed(terminals) => Ok(oneshot::relay::run(&cmd, terminals)?),
            _ => Err(cmd.exec().into()),
        };
    }
    let key = InstanceKey {
        flake: name,
        instance: call.instance.clone(),
    };
    let instance = Instance {
        engine: &engine,
        state: StateDir::prepare(&settings.podman_ids_dir(mode), settings.caller.uid, &key)?,
        container: key.container_name(settings.caller.uid),
        key,
        direct: !via_sudo,
    };
    if container.runtime.mode == LaunchMode::Attach {
        return attach::call(&instance, &container, &call, terminal, &lookup);
    }
    let exe = std::env::current_exe().unwrap_or_default();
    let exe_dir = exe.parent().unwrap_or(Path::new("/"));
    let agent = agent::locate(std::env::var_os(agent::AGENT_ENV), exe_dir)?;
    resume::call(&instance, &agent, &container, &call, terminal, &lookup)
}
