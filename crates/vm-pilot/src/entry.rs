// SPDX-License-Identifier: MIT
//! What a call into a VM runs; for a VM made from an OCI image, the image's entry command,
//! environment, working directory and user, as `podman run IMAGE` would use them.
//!
//! A VM image pulled from an OCI image keeps the parts of the image configuration a call
//! needs in its record ([`crate::oci`]). Each launch reads it once and checks it here,
//! before a VM starts, because the record comes from whoever built the image:
//!
//! - argv: with `target_app_path: /`, the entrypoint followed by the call's arguments, or
//!   by `Cmd` when the call has none (the call's arguments replace `Cmd`, the entrypoint
//!   stays; podman does the same). Such a flake needs a record with an entrypoint or a
//!   command; one that names a program runs that program, as `podman run --entrypoint`.
//! - environment: the image's `Env` is set on top of the guest init's own environment, for
//!   every flake on the image; the caller's environment does not pass into the guest
//!   (only `TERM`, on a terminal, which then wins over the image's).
//! - working directory: the image's `WorkingDir`, else the guest's `/`.
//! - user: the image's `User` (`USER[:GROUP]`, names or numbers), resolved by the guest
//!   init in the guest's `/etc/passwd` and `/etc/group` (see `flake_agent::user`); root
//!   (`root`, `0`, with no group or group `root`/`0`) is not passed at all, so such images
//!   work with any guest init.
//!
//! The checks: environment entries are `KEY=VALUE` with a portable key (letters, digits,
//! `_`, `.`, `-`, not starting with a digit), nothing holds a NUL byte (it would cut an
//! argument or variable short in the guest), the working directory is absolute, the user
//! and group are names or numbers (letters, digits, `_`, `.`, `-`; at most [`MAX_USER`]
//! bytes), and the counts and sizes are bounded ([`MAX_ENTRIES`], [`MAX_ENTRY`],
//! [`MAX_TOTAL`]) so that the call still fits in one frame of the guest protocol.

use std::ffi::OsString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use flakes::config::vm::VmFlake;
use flakes::config::Target;

use crate::oci::{self, ImageConfig, RecordError};

/// The most entries of each list (entrypoint + command, environment) a record may hold.
pub const MAX_ENTRIES: usize = 1024;
/// The most bytes of one argument, variable or the working directory.
pub const MAX_ENTRY: usize = 32 << 10;
/// The most bytes of `User`.
pub const MAX_USER: usize = 256;
/// The most bytes of all of them together: a quarter of the protocol's largest frame,
/// which leaves the rest to the call's own arguments.
pub const MAX_TOTAL: usize = (flake_protocol::proto::MAX_FRAME as usize) / 4;

/// What a call into the VM of one flake runs: the program and the arguments it runs with
/// when the call has none, the environment, the working directory and the user.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GuestCommand {
    /// Comes first in every argv: the flake's program, or the image's entrypoint.
    fixed: Vec<Vec<u8>>,
    /// Follows when the call has no arguments: the image's `Cmd`.
    defaults: Vec<Vec<u8>>,
    env: Vec<Vec<u8>>,
    cwd: Vec<u8>,
    user: Vec<u8>,
}

/// Why a flake cannot run what its image records.
#[derive(Debug, thiserror::Error)]
pub enum EntryError {
    /// The record cannot be read.
    #[error(transparent)]
    Record(#[from] RecordError),
    /// The record holds something a call cannot carry.
    #[error(
        "{} is not a usable image record: {reason}; pull VM image '{image}' again from a \
         fixed OCI image", path.display()
    )]
    Invalid {
        /// The record.
        path: PathBuf,
        /// The VM image.
        image: String,
        /// What is wrong.
        reason: String,
    },
    /// `target_app_path: /` on an image without an entry command.
    #[error(
        "{setting} asks for the entry command of VM image '{image}', which {why}; set \
         target_app_path (--target) to a program in the image, or pull the image with \
         flake-ctl firecracker pull --oci from an image that has an entrypoint or command"
    )]
    NoEntry {
        /// What asked for it: the key in the flake's file, or the flag.
        setting: String,
        /// The VM image.
        image: String,
        /// What the image lacks.
        why: &'static str,
    },
}

impl GuestCommand {
    /// A call of `program` with the guest's own environment (images not made from an OCI
    /// image).
    pub fn program(program: &str) -> Self {
        GuestCommand {
            fixed: vec![program.as_bytes().to_vec()],
            ..GuestCommand::default()
        }
    }

    /// What calls of `flake` (named `name`, its file `config`) run: its program, or with
    /// `target_app_path: /` the image's entry command, with the image's environment,
    /// working directory and user when the image was made from an OCI image. Refuses a
    /// record that fails [`check`], and the entry command of an image that has none.
    pub fn for_flake(flake: &VmFlake, name: &str, config: &Path) -> Result<Self, EntryError> {
        let dir = image_dir(flake);
        let image = read_checked(dir, &flake.image)?;
        let mut command = match &flake.target {
            Target::Program(path) => GuestCommand::program(path),
            Target::FlakeName => GuestCommand::program(name),
            Target::ImageEntrypoint => {
                let setting = format!("target_app_path / in {}", config.display());
                let image = entry_command(image.as_ref(), &flake.image, &setting)?;
                GuestCommand {
                    fixed: image.entrypoint.clone(),
                    defaults: image.cmd.clone(),
                    ..GuestCommand::default()
                }
            }
        };
        if let Some(image) = image {
            command.env = image.env;
            command.cwd = image.cwd;
            command.user = image.user;
        }
        Ok(command)
    }

    /// The argv of a call with `args`: as `podman run IMAGE args...` for the image's entry
    /// command (the call's arguments replace `Cmd`, the entrypoint stays), the program and
    /// `args` otherwise.
    pub fn argv(&self, args: &[OsString]) -> Vec<Vec<u8>> {
        let mut argv = self.fixed.clone();
        if args.is_empty() {
            argv.extend(self.defaults.iter().cloned());
        } else {
            argv.extend(args.iter().map(|a| a.as_bytes().to_vec()));
        }
        argv
    }

    /// The image's environment, `KEY=VALUE`.
    pub fn env(&self) -> &[Vec<u8>] {
        &self.env
    }

    /// The image's working directory; empty for the guest's.
    pub fn cwd(&self) -> &[u8] {
        &self.cwd
    }

    /// The image's user, `USER[:GROUP]`; empty for the guest init's own (root).
    pub fn user(&self) -> &[u8] {
        &self.user
    }

    /// Whether the call needs more than an argv (what serial mode cannot carry).
    pub fn has_image_settings(&self) -> bool {
        !self.env.is_empty() || !self.cwd.is_empty() || !self.user.is_empty()
    }
}

/// Refuses the entry command of the VM image `image` in `dir` (asked for by `setting`,
/// the flag that says so) unless the image's record is sound and names a program: what
/// registration checks before it writes anything.
pub fn require_entry_command(dir: &Path, image: &str, setting: &str) -> Result<(), EntryError> {
    let checked = read_checked(dir, image)?;
    entry_command(checked.as_ref(), image, setting).map(|_| ())
}

/// The directory of a flake's VM image (its rootfs is in it).
fn image_dir(flake: &VmFlake) -> &Path {
    flake.runtime.rootfs.parent().unwrap_or(Path::new("/"))
}

/// The checked record of the image in `dir`, if it has one.
fn read_checked(dir: &Path, image: &str) -> Result<Option<Checked>, EntryError> {
    let Some(record) = oci::read(dir)? else {
        return Ok(None);
    };
    check(&record.config)
        .map(Some)
        .map_err(|reason| EntryError::Invalid {
            path: dir.join(oci::RECORD_FILE),
            image: image.to_string(),
            reason,
        })
}

/// The image's entry command, or why there is none.
fn entry_command<'a>(
    image: Option<&'a Checked>,
    name: &str,
    setting: &str,
) -> Result<&'a Checked, EntryError> {
    let why = match image {
        None => "was not made from an OCI image",
        Some(image) if image.entrypoint.is_empty() && image.cmd.is_empty() => {
            "records neither an entrypoint nor a command"
        }
        Some(image) => return Ok(image),
    };
    Err(EntryError::NoEntry {
        setting: setting.to_string(),
        image: name.to_string(),
        why,
    })
}

/// An image configuration that passed [`check`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Checked {
    entrypoint: Vec<Vec<u8>>,
    cmd: Vec<Vec<u8>>,
    env: Vec<Vec<u8>>,
    cwd: Vec<u8>,
    user: Vec<u8>,
}

/// Checks the configuration an image record holds; the error says what is wrong.
pub fn check(config: &ImageConfig) -> Result<Checked, String> {
    let count = config.entrypoint.len() + config.cmd.len();
    if count > MAX_ENTRIES || config.env.len() > MAX_ENTRIES {
        return Err(format!("more than {MAX_ENTRIES} arguments or variables"));
    }
    let args = |list: &[String], what| -> Result<Vec<Vec<u8>>, String> {
        list.iter().map(|a| word(a, what)).collect()
    };
    let checked = Checked {
        entrypoint: args(&config.entrypoint, "Entrypoint")?,
        cmd: args(&config.cmd, "Cmd")?,
        env: config
            .env
            .iter()
            .map(|e| variable(e))
            .collect::<Result<_, _>>()?,
        cwd: match config.working_dir.as_deref() {
            None | Some("") => Vec::new(),
            Some(dir) => working_dir(dir)?,
        },
        user: user(config.user.as_deref().unwrap_or_default())?,
    };
    let total = [&checked.entrypoint, &checked.cmd, &checked.env]
        .into_iter()
        .flatten()
        .map(Vec::len)
        .sum::<usize>()
        + checked.cwd.len();
    if total > MAX_TOTAL {
        return Err(format!(
            "its command and environment exceed {MAX_TOTAL} bytes"
        ));
    }
    Ok(checked)
}

/// An argument of `Entrypoint` or `Cmd`.
fn word(arg: &str, what: &str) -> Result<Vec<u8>, String> {
    if arg.contains('\0') {
        return Err(format!("an argument of {what} holds a NUL byte"));
    }
    if arg.len() > MAX_ENTRY {
        return Err(format!(
            "an argument of {what} is longer than {MAX_ENTRY} bytes"
        ));
    }
    Ok(arg.as_bytes().to_vec())
}

/// An `Env` entry: `KEY=VALUE` with a portable key and no NUL byte.
fn variable(entry: &str) -> Result<Vec<u8>, String> {
    let shown = || {
        entry
            .chars()
            .take(40)
            .collect::<String>()
            .escape_debug()
            .to_string()
    };
    let Some((key, value)) = entry.split_once('=') else {
        return Err(format!("Env entry '{}' is not KEY=VALUE", shown()));
    };
    let portable = key
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if key.is_empty() || !portable || key.starts_with(|c: char| c.is_ascii_digit()) {
        return Err(format!(
            "Env entry '{}' has no valid variable name",
            shown()
        ));
    }
    if value.contains('\0') {
        return Err(format!("Env entry '{}' holds a NUL byte", shown()));
    }
    if entry.len() > MAX_ENTRY {
        return Err(format!(
            "Env entry '{}' is longer than {MAX_ENTRY} bytes",
            shown()
        ));
    }
    Ok(entry.as_bytes().to_vec())
}

/// `User`: `USER[:GROUP]`, each a name or a number; root comes out empty.
fn user(spec: &str) -> Result<Vec<u8>, String> {
    let (user, group) = match spec.split_once(':') {
        Some((user, group)) => (user, Some(group)),
        None => (spec, None),
    };
    let word = |w: &str| {
        !w.is_empty()
            && w.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
    };
    if spec.is_empty() {
        return Ok(Vec::new());
    }
    if spec.len() > MAX_USER || !word(user) || !group.is_none_or(word) {
        let shown = spec.chars().take(40).collect::<String>();
        return Err(format!(
            "User '{}' is not USER[:GROUP] (names or numbers)",
            shown.escape_debug()
        ));
    }
    let root = |w: &str| w == "root" || w == "0";
    if root(user) && group.is_none_or(root) {
        return Ok(Vec::new());
    }
    Ok(spec.as_bytes().to_vec())
}

/// `WorkingDir`: an absolute path without NUL.
fn working_dir(dir: &str) -> Result<Vec<u8>, String> {
    if !dir.starts_with('/') || dir.contains('\0') || dir.len() > MAX_ENTRY {
        let shown = dir.chars().take(40).collect::<String>();
        return Err(format!(
            "WorkingDir '{}' is not an absolute path",
            shown.escape_debug()
        ));
    }
    Ok(dir.as_bytes().to_vec())
}

#[cfg(test)]
mod tests;
