// SPDX-License-Identifier: MIT
//! The world as the binaries see it, read once in `main` and passed down: who calls, where
//! the global configuration lives, and which registration directories apply.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use crate::global::{
    GlobalConfig, GlobalConfigError, CONFIG_ENV, DEFAULT_IDS_DIR, ROOT_IDS_DIR, SYSTEM_CONFIG,
    SYSTEM_FLAKES_DIR,
};

/// Environment variable naming the caller's private runtime directory.
pub const RUNTIME_DIR_ENV: &str = "XDG_RUNTIME_DIR";
use crate::registry::Registry;

/// The calling user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// Real user id.
    pub uid: u32,
    /// Login name, or the numeric uid when the passwd database has none.
    pub name: String,
    /// Home directory: `$HOME` when set and absolute, else the passwd entry's.
    pub home: Option<PathBuf>,
    /// `$XDG_RUNTIME_DIR`, when set and safe: an absolute path to a real directory of the
    /// caller's with mode 0700 (see [`Caller::with_runtime_dir`]).
    pub runtime_dir: Option<PathBuf>,
}

impl Caller {
    /// Reads the calling user from the process and the passwd database.
    pub fn current(home_env: Option<OsString>) -> Self {
        let uid = rustix::process::getuid().as_raw();
        let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
        let entry = passwd_entry(&passwd, uid);
        let home = home_env
            .map(PathBuf::from)
            .filter(|h| h.is_absolute())
            .or_else(|| entry.as_ref().map(|(_, home)| PathBuf::from(home)));
        let name = entry.map_or_else(|| uid.to_string(), |(name, _)| name);
        Caller {
            uid,
            name,
            home,
            runtime_dir: None,
        }
    }

    /// Takes `$XDG_RUNTIME_DIR` (given as `env`) as the caller's runtime directory when it
    /// is safe: absolute, a real directory (not a symlink), owned by the caller, mode 0700.
    pub fn with_runtime_dir(mut self, env: Option<OsString>) -> Self {
        use std::os::unix::fs::MetadataExt;
        self.runtime_dir = env.map(PathBuf::from).filter(|dir| {
            dir.is_absolute()
                && std::fs::symlink_metadata(dir)
                    .is_ok_and(|m| m.is_dir() && m.uid() == self.uid && m.mode() & 0o7777 == 0o700)
        });
        self
    }

    /// True for uid 0.
    pub fn is_root(&self) -> bool {
        self.uid == 0
    }
}

/// The login name of `uid`, or the number when the passwd database has none.
pub fn user_name(uid: u32) -> String {
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
    passwd_entry(&passwd, uid).map_or_else(|| uid.to_string(), |(name, _)| name)
}

/// Finds `(name, home)` of `uid` in passwd-format text.
fn passwd_entry(passwd: &str, uid: u32) -> Option<(String, String)> {
    passwd.lines().find_map(|line| {
        let fields: Vec<&str> = line.split(':').collect();
        match fields.as_slice() {
            [name, _, id, _, _, home, ..] if id.parse() == Ok(uid) => {
                Some((name.to_string(), home.to_string()))
            }
            _ => None,
        }
    })
}

/// System-wide or per-user registrations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// `/usr/share/flakes` (or the system config's `flakes_dir`).
    System,
    /// `~/.config/flakes` (or the user config's `flakes_dir`).
    User,
}

/// Caller plus both global configurations.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Who runs the binary.
    pub caller: Caller,
    /// Path of the system global config in effect.
    pub system_path: PathBuf,
    /// The system global config.
    pub system: GlobalConfig,
    /// Path of the user global config, when the caller has a home.
    pub user_path: Option<PathBuf>,
    /// The user global config.
    pub user: GlobalConfig,
}

impl Settings {
    /// Reads both global configurations. `config_env` is the value of [`CONFIG_ENV`].
    pub fn load(caller: Caller, config_env: Option<OsString>) -> Result<Self, GlobalConfigError> {
        let system_path = config_env
            .filter(|v| !v.is_empty())
            .map_or(PathBuf::from(SYSTEM_CONFIG), PathBuf::from);
        let system = GlobalConfig::load(&system_path)?;
        let user_path = caller
            .home
            .as_ref()
            .map(|home| home.join(".config/flakes.yml"));
        let user = match &user_path {
            Some(path) => GlobalConfig::load(path)?,
            None => GlobalConfig::default(),
        };
        Ok(Settings {
            caller,
            system_path,
            system,
            user_path,
            user,
        })
    }

    /// Reads the environment and both configurations, as `main` of every binary does.
    pub fn from_env() -> Result<Self, GlobalConfigError> {
        let caller = Caller::current(std::env::var_os("HOME"))
            .with_runtime_dir(std::env::var_os(RUNTIME_DIR_ENV));
        Self::load(caller, std::env::var_os(CONFIG_ENV))
    }

    /// The registration directory of `mode`.
    pub fn flakes_dir(&self, mode: Mode) -> PathBuf {
        match mode {
            Mode::System => self
                .system
                .generic
                .flakes_dir
                .clone()
                .unwrap_or_else(|| SYSTEM_FLAKES_DIR.into()),
            Mode::User => self.user.generic.flakes_dir.clone().unwrap_or_else(|| {
                self.caller
                    .home
                    .as_deref()
                    .unwrap_or(Path::new("/"))
                    .join(".config/flakes")
            }),
        }
    }

    /// The registry of `mode`.
    pub fn registry(&self, mode: Mode) -> Registry {
        Registry::new(self.flakes_dir(mode), mode)
    }

    /// Registries in lookup order: system registrations take precedence over user ones.
    pub fn lookup_order(&self) -> [Registry; 2] {
        [self.registry(Mode::System), self.registry(Mode::User)]
    }

    /// Base directory of container instance state for `mode`: the mode's `podman_ids_dir`,
    /// else the system's, else [`Settings::default_ids_dir`].
    pub fn podman_ids_dir(&self, mode: Mode) -> PathBuf {
        let user = match mode {
            Mode::User => self.user.generic.podman_ids_dir.clone(),
            Mode::System => None,
        };
        user.or_else(|| self.system.generic.podman_ids_dir.clone())
            .unwrap_or_else(|| self.default_ids_dir())
    }

    /// Base directory of VM instance state: the system config's `firecracker_ids_dir` for
    /// every mode (as the original), else [`Settings::default_ids_dir`].
    pub fn firecracker_ids_dir(&self) -> PathBuf {
        self.system
            .generic
            .firecracker_ids_dir
            .clone()
            .unwrap_or_else(|| self.default_ids_dir())
    }

    /// Where instance state goes unless configured: root's under `/run/flakes`, a user's
    /// under `$XDG_RUNTIME_DIR/flakes` (private to them), else the original shared
    /// `/tmp/flakes`.
    pub fn default_ids_dir(&self) -> PathBuf {
        if self.caller.is_root() {
            return ROOT_IDS_DIR.into();
        }
        match &self.caller.runtime_dir {
            Some(dir) => dir.join("flakes"),
            None => DEFAULT_IDS_DIR.into(),
        }
    }

    /// The podman storage config of `mode`, when one is configured and present.
    ///
    /// Unlike the original, a configured but missing file is not an error: the flakes then
    /// use podman's own storage, so images pulled with plain `podman pull` are visible.
    pub fn podman_storage_conf(&self, mode: Mode) -> Option<PathBuf> {
        let generic = match mode {
            Mode::System => &self.system.generic,
            Mode::User => &self.user.generic,
        };
        generic.podman_storage_conf.clone().filter(|p| p.is_file())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwd_lookup() {
        let text = "root:x:0:0:root:/root:/bin/bash\nalice:x:1000:1000::/home/alice:/bin/sh\n";
        assert_eq!(
            passwd_entry(text, 1000),
            Some(("alice".into(), "/home/alice".into()))
        );
        assert_eq!(passwd_entry(text, 0), Some(("root".into(), "/root".into())));
        assert_eq!(passwd_entry(text, 5), None);
        assert_eq!(passwd_entry("broken line\n", 0), None);
    }

    fn settings(
        system_yaml: Option<&str>,
        user_yaml: Option<&str>,
    ) -> (tempfile::TempDir, Settings) {
        let dir = tempfile::tempdir().unwrap();
        let system = dir.path().join("system.yml");
        if let Some(text) = system_yaml {
            std::fs::write(&system, text).unwrap();
        }
        if let Some(text) = user_yaml {
            std::fs::create_dir_all(dir.path().join(".config")).unwrap();
            std::fs::write(dir.path().join(".config/flakes.yml"), text).unwrap();
        }
        let caller = Caller {
            uid: 1000,
            name: "alice".into(),
            home: Some(dir.path().into()),
            runtime_dir: None,
        };
        let settings = Settings::load(caller, Some(system.into())).unwrap();
        (dir, settings)
    }

    #[test]
    fn defaults_without_config_files() {
        let (dir, s) = settings(None, None);
        assert_eq!(s.flakes_dir(Mode::System), Path::new("/usr/share/flakes"));
        assert_eq!(s.flakes_dir(Mode::User), dir.path().join(".config/flakes"));
        assert_eq!(s.podman_storage_conf(Mode::System), None);
    }

    #[test]
    fn state_defaults_root_runtime_dir_then_tmp() {
        let (_dir, mut s) = settings(None, None);
        assert_eq!(s.podman_ids_dir(Mode::User), Path::new("/tmp/flakes"));
        s.caller.runtime_dir = Some("/run/user/1000".into());
        assert_eq!(
            s.podman_ids_dir(Mode::System),
            Path::new("/run/user/1000/flakes")
        );
        assert_eq!(s.firecracker_ids_dir(), Path::new("/run/user/1000/flakes"));
        s.caller.uid = 0;
        assert_eq!(s.podman_ids_dir(Mode::User), Path::new("/run/flakes"));
        assert_eq!(s.firecracker_ids_dir(), Path::new("/run/flakes"));
        let (_d2, s) = settings(
            Some("generic:\n  podman_ids_dir: /srv/ids\n  firecracker_ids_dir: /srv/vm\n"),
            Some("generic:\n  podman_ids_dir: /srv/mine\n"),
        );
        assert_eq!(s.podman_ids_dir(Mode::User), Path::new("/srv/mine"));
        assert_eq!(s.podman_ids_dir(Mode::System), Path::new("/srv/ids"));
        assert_eq!(s.firecracker_ids_dir(), Path::new("/srv/vm"));
    }

    #[test]
    fn runtime_dir_only_when_safe() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let me = Caller::current(None);
        let private = dir.path().join("private");
        std::fs::create_dir(&private).unwrap();
        std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o700)).unwrap();
        let open = dir.path().join("open");
        std::fs::create_dir(&open).unwrap();
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o755)).unwrap();
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&private, &link).unwrap();
        let take = |p: Option<&Path>| {
            me.clone()
                .with_runtime_dir(p.map(|p| p.as_os_str().to_owned()))
                .runtime_dir
        };
        assert_eq!(take(Some(&private)), Some(private.clone()));
        assert_eq!(take(Some(&open)), None, "mode 0755");
        assert_eq!(take(Some(&link)), None, "a symlink");
        assert_eq!(take(Some(Path::new("relative"))), None);
        assert_eq!(take(None), None);
    }

    #[test]
    fn config_files_override_defaults_and_system_comes_first() {
        let (_dir, s) = settings(
            Some("generic:\n  flakes_dir: /srv/sys\n"),
            Some("generic:\n  flakes_dir: /srv/usr\n"),
        );
        let order = s.lookup_order();
        assert_eq!(order[0].dir(), Path::new("/srv/sys"));
        assert_eq!(order[1].dir(), Path::new("/srv/usr"));
        assert_eq!(order[1].mode(), Mode::User);
    }

    #[test]
    fn storage_conf_only_when_present() {
        let (dir, _) = settings(None, None);
        let conf = dir.path().join("storage.conf");
        std::fs::write(&conf, "[storage]\n").unwrap();
        let yaml = format!("generic:\n  podman_storage_conf: {}\n", conf.display());
        let (_d2, s) = settings(Some(&yaml), None);
        assert_eq!(s.podman_storage_conf(Mode::System), Some(conf));
        let (_d3, s) = settings(
            Some("generic:\n  podman_storage_conf: /nonexistent.conf\n"),
            None,
        );
        assert_eq!(s.podman_storage_conf(Mode::System), None);
    }
}
