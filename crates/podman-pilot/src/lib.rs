// SPDX-License-Identifier: MIT
//! The podman engine of flake-pilot.
//!
//! [`Engine`] knows how to reach podman for one flake (which binary, through `sudo` or not,
//! which storage configuration) and builds its commands; [`oneshot`] builds the launch of a
//! one-shot flake; [`options`] turns a flake's `runtime.podman` entries into arguments.
//! The `podman-pilot` binary only wires these together.

#![deny(missing_docs)]

pub mod agent;
pub mod attach;
pub mod entry;
pub mod envfile;
pub mod identity;
pub mod oneshot;
pub mod options;
pub mod provision;
pub mod resume;

use std::ffi::OsStr;
use std::path::PathBuf;

use flakes::launcher::LaunchError;
use flakes::process::{resolve, Cmd, ProcessError};
use flakes::PilotExit;

pub use options::OptionError;

/// Environment variable podman reads its storage configuration from.
pub const STORAGE_CONF_ENV: &str = "CONTAINERS_STORAGE_CONF";

/// The container init preferred for `--init`: tini's static build maps a target that is
/// missing or not executable to exit 127 or 126, as a shell does. podman's default init
/// (catatonit) exits 1 in both cases, which would hide the difference from the caller.
pub const INIT_PROGRAM: &str = "tini-static";

/// Errors of the podman engine and launcher.
#[derive(Debug, thiserror::Error)]
pub enum PodmanError {
    /// The call names no container flake.
    #[error(transparent)]
    Launch(#[from] LaunchError),
    /// The in-memory file for the options' environment values cannot be made.
    #[error("cannot keep the flake's environment values off podman's command line: {source}")]
    EnvFile {
        /// Why.
        source: std::io::Error,
    },
    /// The flake's engine options are invalid.
    #[error(transparent)]
    Options(#[from] OptionError),
    /// Running podman (or sudo) failed.
    #[error(transparent)]
    Process(#[from] ProcessError),
    /// sudo does not let the caller run podman as root.
    #[error("flake '{flake}' runs podman as root (runas: root), but sudo does not let this \
        user run {} as root{}; ask the admin for a sudoers rule such as \
        `USER ALL=(root) NOPASSWD: {}`, or register the flake with --user", podman.display(),
        detail.as_deref().map(|d| format!(" ({d})")).unwrap_or_default(), podman.display())]
    SudoRefused {
        /// The flake name.
        flake: String,
        /// The podman binary sudo was asked for.
        podman: PathBuf,
        /// What sudo said, if anything.
        detail: Option<String>,
    },
    /// The image's entry command cannot be had.
    #[error(transparent)]
    Entry(#[from] entry::EntryError),
    /// The instance's agent never opened its socket.
    #[error("instance {container} did not start its agent; see `podman logs {container}`")]
    AgentDidNotStart {
        /// Container name.
        container: String,
    },
    /// The static agent binary is missing.
    #[error("flake-agent not found (looked for {}); reinstall flake-pilot with make install \
        or set FLAKE_AGENT", looked.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", "))]
    AgentMissing {
        /// Paths tried.
        looked: Vec<PathBuf>,
    },
    /// Provisioning failed.
    #[error(transparent)]
    Provision(#[from] provision::ProvisionError),
    /// The agent binary cannot run in an instance.
    #[error("cannot use {} as flake-agent: {reason}", agent.display())]
    AgentUnusable {
        /// The agent path.
        agent: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// Instance state cannot be prepared.
    #[error(transparent)]
    Instance(#[from] flakes::instance::InstanceError),
    /// The agent connection failed.
    #[error(transparent)]
    Agent(#[from] flake_protocol::proto::ProtoError),
    /// The instance's socket is served by a process other than its agent.
    #[error("refusing the agent socket of {container} ({}): it is served by pid {pid} (uid \
        {uid}), not by the instance's agent, and nothing was sent to it; remove the instance \
        with `podman rm -f {container}` and call again", socket.display())]
    Impostor {
        /// Container name.
        container: String,
        /// The socket (its real path).
        socket: PathBuf,
        /// Who serves it.
        pid: u32,
        /// That process's uid.
        uid: u32,
    },
}

impl From<&PodmanError> for PilotExit {
    fn from(err: &PodmanError) -> Self {
        match err {
            PodmanError::Launch(err) => err.into(),
            // Every other failure of the launcher itself is 125 too; 126/127 and the app's
            // own status come straight from the engine, which the launcher execs.
            _ => PilotExit::LauncherFailure,
        }
    }
}

/// How to reach podman for one flake.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Engine {
    podman: PathBuf,
    sudo: Option<PathBuf>,
    storage_conf: Option<PathBuf>,
    init: Option<PathBuf>,
}

impl Engine {
    /// An engine running the podman binary at `podman` directly.
    pub fn new(podman: PathBuf) -> Self {
        Engine {
            podman,
            sudo: None,
            storage_conf: None,
            init: None,
        }
    }

    /// Finds podman (and sudo when `via_sudo`) on `path_env`.
    pub fn locate(path_env: Option<&OsStr>, via_sudo: bool) -> Result<Self, ProcessError> {
        let mut engine = Engine::new(resolve("podman", path_env)?);
        if via_sudo {
            engine.sudo = Some(resolve("sudo", path_env)?);
        }
        engine.init = resolve(INIT_PROGRAM, path_env).ok();
        Ok(engine)
    }

    /// Asks sudo whether the caller may run podman as root (`sudo -l -- podman`, with the
    /// same options as the real calls), when podman goes through sudo.
    ///
    /// sudo's own refusal exits 1, which a launcher that replaced itself with
    /// `sudo podman run` could not tell from the app's exit status 1; asked first, it
    /// becomes the launcher failure it is (125). A password, if the rule wants one, is asked
    /// here and cached by sudo for the call itself.
    pub fn check_sudo(&self, flake: &str) -> Result<(), PodmanError> {
        let Some(sudo) = &self.sudo else {
            return Ok(());
        };
        let mut probe = Cmd::new(sudo).arg("-l");
        if self.storage_conf.is_some() {
            probe = probe.arg(format!("--preserve-env={STORAGE_CONF_ENV}"));
        }
        let refused = |detail: Option<String>| PodmanError::SudoRefused {
            flake: flake.to_string(),
            podman: self.podman.clone(),
            detail,
        };
        match probe.arg("--").arg(&self.podman).run() {
            Ok(_) => Ok(()),
            Err(ProcessError::Failed { stderr, .. }) => {
                let said = stderr.lines().map(str::trim).find(|l| !l.is_empty());
                Err(refused(said.map(str::to_string)))
            }
            Err(err) => Err(err.into()),
        }
    }

    /// Uses the static init at `init` for `--init` instead of podman's default.
    pub fn with_init(mut self, init: Option<PathBuf>) -> Self {
        self.init = init;
        self
    }

    /// The static init passed as `--init-path`, when the host has one.
    pub fn init(&self) -> Option<&std::path::Path> {
        self.init.as_deref()
    }

    /// Uses the containers-storage configuration at `conf`.
    pub fn with_storage_conf(mut self, conf: Option<PathBuf>) -> Self {
        self.storage_conf = conf;
        self
    }

    /// The options a launch passes to podman, with environment values moved off the
    /// command line where podman can inherit them (see [`envfile`]).
    pub fn launch_options(
        &self,
        options: Vec<options::EngineOption>,
    ) -> Result<Vec<options::EngineOption>, PodmanError> {
        if self.sudo.is_some() {
            return Ok(options);
        }
        envfile::hide_values(options).map_err(|source| PodmanError::EnvFile { source })
    }

    /// A podman command line without podman arguments yet.
    ///
    /// Through sudo it is `sudo [--preserve-env=CONTAINERS_STORAGE_CONF] -- podman`; sudo
    /// resets the environment otherwise, so the storage configuration must be named.
    pub fn podman(&self) -> Cmd {
        let mut cmd = match &self.sudo {
            Some(sudo) => {
                let mut cmd = Cmd::new(sudo);
                if self.storage_conf.is_some() {
                    cmd = cmd.arg(format!("--preserve-env={STORAGE_CONF_ENV}"));
                }
                cmd.arg("--").arg(&self.podman)
            }
            None => Cmd::new(&self.podman),
        };
        if let Some(conf) = &self.storage_conf {
            cmd = cmd.env(STORAGE_CONF_ENV, conf);
        }
        cmd
    }

    /// `podman pull -- URI`.
    pub fn pull(&self, uri: &str) -> Cmd {
        self.pull_with(&[], uri)
    }

    /// `podman pull OPTIONS -- URI`: options end before the reference, so a reference can
    /// never be read as an option.
    pub fn pull_with(&self, options: &[&str], uri: &str) -> Cmd {
        self.podman()
            .arg("pull")
            .args(options.iter().copied())
            .args(["--", uri])
    }

    /// `podman load -i ARCHIVE`.
    pub fn load(&self, archive: &std::path::Path) -> Cmd {
        self.podman().args(["load", "-i"]).arg(archive)
    }

    /// `podman image exists -- IMAGE`.
    pub fn image_exists(&self, image: &str) -> Cmd {
        self.podman().args(["image", "exists", "--", image])
    }

    /// `podman image rm -f -- IMAGE`.
    pub fn image_remove(&self, image: &str) -> Cmd {
        self.podman().args(["image", "rm", "-f", "--", image])
    }

    /// `podman image mount -- IMAGE` (prints the mount point).
    pub fn image_mount(&self, image: &str) -> Cmd {
        self.podman().args(["image", "mount", "--", image])
    }

    /// True when container `name` exists and runs (`podman container inspect`).
    pub fn container_running(&self, name: &str) -> Result<bool, ProcessError> {
        let inspect = [
            "container",
            "inspect",
            "--format",
            "{{.State.Running}}",
            name,
        ];
        let out = self.podman().args(inspect).stdout();
        Ok(matches!(out.as_deref().map(str::trim), Ok("true")))
    }

    /// The host pid of running container `name`'s PID 1 (`State.Pid`); `None` when it
    /// does not run.
    pub fn container_pid(&self, name: &str) -> Result<Option<u32>, ProcessError> {
        let inspect = ["container", "inspect", "--format", "{{.State.Pid}}", name];
        let out = self.podman().args(inspect).stdout();
        Ok(out
            .ok()
            .and_then(|pid| pid.trim().parse().ok())
            .filter(|pid| *pid != 0))
    }

    /// `podman rm -f -t 0 NAME`, ignoring whether it existed (podman then exits 0); any
    /// other failure is an error, so a removal is never reported done when it was not.
    pub fn remove_container(&self, name: &str) -> Result<(), ProcessError> {
        self.podman().args(["rm", "-f", "-t", "0", name]).run()
    }

    /// `podman image umount -- IMAGE`.
    pub fn image_umount(&self, image: &str) -> Cmd {
        self.podman().args(["image", "umount", "--", image])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn direct_podman_command() {
        let cmd = Engine::new("/usr/bin/podman".into()).pull("localhost/x");
        assert_eq!(cmd.to_string(), "/usr/bin/podman pull -- localhost/x");
        assert!(cmd.get_env().is_empty());
    }

    #[test]
    fn sudo_preserves_only_the_storage_conf() {
        let mut engine = Engine::new("/usr/bin/podman".into());
        engine.sudo = Some("/usr/bin/sudo".into());
        assert_eq!(
            engine.podman().to_string(),
            "/usr/bin/sudo -- /usr/bin/podman"
        );
        let engine = engine.with_storage_conf(Some("/etc/flakes/storage.conf".into()));
        let cmd = engine.image_exists("img");
        assert_eq!(
            cmd.to_string(),
            "/usr/bin/sudo --preserve-env=CONTAINERS_STORAGE_CONF -- /usr/bin/podman image exists -- img"
        );
        assert_eq!(cmd.get_env()[0].0, STORAGE_CONF_ENV);
    }
}
