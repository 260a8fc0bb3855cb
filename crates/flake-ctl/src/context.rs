// SPDX-License-Identifier: MIT
//! Everything `flake-ctl` reads from the world, resolved once in `main`.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result};
use flakes::{Mode, Settings};
use podman_pilot::Engine;

/// The resolved world of one `flake-ctl` run.
#[derive(Debug)]
pub struct Context {
    /// Caller and global configurations.
    pub settings: Settings,
    /// Directory holding this `flake-ctl`; the launchers are installed next to it.
    pub exe_dir: PathBuf,
    /// `PATH`, for finding podman.
    pub path_env: Option<OsString>,
    /// Working directory, for relative paths on the command line.
    pub cwd: PathBuf,
    /// `FLAKE_ALLOW_INSECURE_TRANSPORT` is `1` or `true`: plain http downloads are allowed.
    pub insecure_transport: bool,
    /// `FLAKE_PULL_STALL_TIMEOUT` as given; checked by the VM image pull.
    pub pull_stall_timeout: Option<String>,
    /// `FLAKE_SCI`: the guest init to install into pulled rootfs images.
    pub sci_env: Option<PathBuf>,
}

impl Context {
    /// Reads the environment.
    pub fn from_env() -> Result<Self> {
        let settings = Settings::from_env()?;
        let exe = std::env::current_exe().context("cannot locate the flake-ctl executable")?;
        let exe_dir = exe.parent().map(Path::to_path_buf).unwrap_or_default();
        let cwd = std::env::current_dir().context("cannot read the working directory")?;
        Ok(Context {
            settings,
            exe_dir,
            path_env: std::env::var_os("PATH"),
            cwd,
            insecure_transport: vm_pilot::pull::insecure_allowed(
                std::env::var_os(vm_pilot::pull::INSECURE_ENV).as_deref(),
            ),
            pull_stall_timeout: std::env::var(vm_pilot::pull::STALL_ENV).ok(),
            sci_env: std::env::var_os("FLAKE_SCI")
                .filter(|v| !v.is_empty())
                .map(PathBuf::from),
        })
    }

    /// System or user mode from a `--user` flag.
    pub fn mode(user: bool) -> Mode {
        if user {
            Mode::User
        } else {
            Mode::System
        }
    }

    /// The launcher `name` installed next to `flake-ctl`.
    pub fn pilot(&self, name: &str) -> Result<PathBuf> {
        let pilot = self.exe_dir.join(name);
        anyhow::ensure!(
            pilot.is_file(),
            "{} not found next to flake-ctl; install both from the same build (make install)",
            pilot.display()
        );
        Ok(pilot)
    }

    /// The guest init `sci`: `$FLAKE_SCI`, else installed beside the binaries
    /// (`../libexec/flake-pilot/sci` or `sci` next to flake-ctl).
    pub fn sci(&self) -> Option<PathBuf> {
        self.sci_env.clone().or_else(|| {
            [
                self.exe_dir.join("../libexec/flake-pilot/sci"),
                self.exe_dir.join("sci"),
            ]
            .into_iter()
            .find(|p| p.is_file())
        })
    }

    /// The podman engine for `mode`, run as the caller.
    pub fn podman(&self, mode: Mode) -> Result<Engine> {
        let engine = Engine::locate(self.path_env.as_deref(), false)?;
        Ok(engine.with_storage_conf(self.settings.podman_storage_conf(mode)))
    }

    /// Include paths made absolute and checked to exist now, not at the first launch.
    pub fn includes(&self, paths: &[PathBuf], flag: &str) -> Result<Option<Vec<String>>> {
        if paths.is_empty() {
            return Ok(None);
        }
        let mut out = Vec::with_capacity(paths.len());
        for path in paths {
            let absolute = self.absolute(path);
            anyhow::ensure!(
                absolute.exists(),
                "{flag} {}: no such file or directory",
                path.display()
            );
            out.push(absolute.display().to_string());
        }
        Ok(Some(out))
    }

    /// `path` made absolute against the working directory.
    pub fn absolute(&self, path: &Path) -> PathBuf {
        if path.is_absolute() {
            path.to_path_buf()
        } else {
            self.cwd.join(path)
        }
    }
}
