// SPDX-License-Identifier: MIT
//! The image's own entry command, for resume flakes registered on it (`--target /`).
//!
//! A resume instance runs the agent as PID 1 (`--entrypoint /.flake-agent`), so podman no
//! longer applies the image's `Entrypoint` and `Cmd` by itself: each call must name its
//! program. The configuration of the image the instance runs is read once, when the
//! instance starts (by the container's image ID, not by a tag that may have moved since),
//! and kept in the instance's private state directory (not in
//! the part shared with the instance, which the app could rewrite); warm calls read that
//! file and build the argv exactly as `podman run IMAGE ARGS...` would:
//!
//! - with an entrypoint: entrypoint + the call's arguments, or entrypoint + `Cmd` when
//!   the call has none;
//! - without one: the call's arguments replace `Cmd`, or `Cmd` when there are none.
//!
//! The file lives as long as the instance: a new instance (a restart after the image was
//! pulled again, for instance) reads the configuration afresh.

use std::ffi::OsString;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

use flakes::instance::Dir;

use crate::{Engine, PodmanError};

/// File in the instance's state directory holding the image's entry command.
pub const ENTRY_FILE: &str = "image-entry.json";

/// The parts of an image's configuration that say what `podman run IMAGE` runs.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
pub struct ImageEntry {
    /// `Entrypoint`.
    #[serde(rename = "Entrypoint", default, deserialize_with = "null_is_empty")]
    pub entrypoint: Vec<String>,
    /// `Cmd`.
    #[serde(rename = "Cmd", default, deserialize_with = "null_is_empty")]
    pub cmd: Vec<String>,
}

fn null_is_empty<'de, D: serde::Deserializer<'de>>(de: D) -> Result<Vec<String>, D::Error> {
    let value: Option<Vec<String>> = serde::Deserialize::deserialize(de)?;
    Ok(value.unwrap_or_default())
}

/// Errors reading or keeping an image's entry command.
#[derive(Debug, thiserror::Error)]
pub enum EntryError {
    /// `podman image inspect` printed something that is not an image configuration.
    #[error("cannot read the configuration of image {image}: {source}; check `podman image inspect {image}`")]
    Inspect {
        /// The image.
        image: String,
        /// The parse error.
        source: serde_json::Error,
    },
    /// The instance's copy cannot be written.
    #[error("cannot write {}: {source}", path.display())]
    Write {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// Neither an entrypoint nor a command, and the call gave none.
    #[error(
        "image {image} has neither an entrypoint nor a command and the call names no \
         program; pass one or register the flake with --target PROGRAM"
    )]
    Nothing {
        /// The image.
        image: String,
    },
}

impl ImageEntry {
    /// Reads the configuration of the image that `container` runs, by the image ID the
    /// container records: the tag `image` (named in messages) may have moved to another
    /// image since the container was created.
    pub fn of_container(
        engine: &Engine,
        container: &str,
        image: &str,
    ) -> Result<Self, PodmanError> {
        let id = engine
            .podman()
            .args([
                "container",
                "inspect",
                "--format",
                "{{.Image}}",
                "--",
                container,
            ])
            .stdout()?;
        Self::inspect_as(engine, id.trim(), image)
    }

    /// Reads the configuration (`podman image inspect --format '{{json .Config}}'`) of
    /// `reference`, an image ID or name, named `image` in messages.
    fn inspect_as(engine: &Engine, reference: &str, image: &str) -> Result<Self, PodmanError> {
        let out = engine
            .podman()
            .args([
                "image",
                "inspect",
                "--format",
                "{{json .Config}}",
                "--",
                reference,
            ])
            .stdout()?;
        Self::parse(&out).map_err(|source| {
            EntryError::Inspect {
                image: image.to_string(),
                source,
            }
            .into()
        })
    }

    fn parse(json: &str) -> Result<Self, serde_json::Error> {
        serde_json::from_str(json.trim())
    }

    /// The copy kept in the instance's state directory, if there is one.
    pub fn load(dir: &Dir) -> Option<Self> {
        let text = dir.read_file(ENTRY_FILE).ok()??;
        serde_json::from_slice(&text).ok()
    }

    /// Keeps a copy in the instance's state directory, replaced atomically; the caller
    /// holds the instance lock (see [`Dir::write_file`]).
    pub fn save(&self, dir: &Dir) -> Result<(), PodmanError> {
        let text = serde_json::to_vec(self).map_err(|e| EntryError::Write {
            path: dir.path().join(ENTRY_FILE),
            source: e.into(),
        })?;
        Ok(dir.write_file(ENTRY_FILE, &text)?)
    }

    /// The argv `podman run IMAGE args...` runs; `image` names the image in errors.
    pub fn argv(&self, args: &[OsString], image: &str) -> Result<Vec<Vec<u8>>, EntryError> {
        let mut argv: Vec<Vec<u8>> = self.entrypoint.iter().map(|a| a.clone().into()).collect();
        if args.is_empty() {
            argv.extend(self.cmd.iter().map(|a| a.clone().into_bytes()));
        } else {
            argv.extend(args.iter().map(|a| a.as_bytes().to_vec()));
        }
        if argv.is_empty() {
            return Err(EntryError::Nothing {
                image: image.to_string(),
            });
        }
        Ok(argv)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(entrypoint: &[&str], cmd: &[&str]) -> ImageEntry {
        ImageEntry {
            entrypoint: entrypoint.iter().map(|s| s.to_string()).collect(),
            cmd: cmd.iter().map(|s| s.to_string()).collect(),
        }
    }

    fn argv(e: &ImageEntry, args: &[&str]) -> Vec<String> {
        let args: Vec<OsString> = args.iter().map(OsString::from).collect();
        e.argv(&args, "img")
            .unwrap()
            .into_iter()
            .map(|a| String::from_utf8(a).unwrap())
            .collect()
    }

    #[test]
    fn argv_follows_podman_run() {
        let both = entry(&["/entry.sh", "-v"], &["default"]);
        assert_eq!(argv(&both, &[]), ["/entry.sh", "-v", "default"]);
        assert_eq!(argv(&both, &["a", "b c"]), ["/entry.sh", "-v", "a", "b c"]);
        let cmd_only = entry(&[], &["/bin/sh"]);
        assert_eq!(argv(&cmd_only, &[]), ["/bin/sh"]);
        assert_eq!(argv(&cmd_only, &["ls", "-l"]), ["ls", "-l"]);
        let entry_only = entry(&["/e"], &[]);
        assert_eq!(argv(&entry_only, &[]), ["/e"]);
        let none = entry(&[], &[]);
        let err = none.argv(&[], "localhost/x").unwrap_err().to_string();
        assert!(
            err.contains("localhost/x") && err.contains("--target"),
            "{err}"
        );
        assert_eq!(argv(&none, &["/bin/true"]), ["/bin/true"]);
    }

    #[test]
    fn inspect_output_is_parsed() {
        let cases = [
            (
                r#"{"Env":["PATH=/bin"],"Cmd":["/bin/sh"]}"#,
                entry(&[], &["/bin/sh"]),
            ),
            (
                r#"{"Entrypoint":["/e.sh"],"Cmd":null,"WorkingDir":"/"}"#,
                entry(&["/e.sh"], &[]),
            ),
            ("{}\n", entry(&[], &[])),
        ];
        for (json, want) in cases {
            assert_eq!(ImageEntry::parse(json).unwrap(), want, "{json}");
        }
        assert!(ImageEntry::parse("no such image").is_err());
    }

    #[test]
    fn saved_copy_round_trips() {
        let tmp = tempfile::tempdir().unwrap();
        let uid = rustix::process::getuid().as_raw();
        let dir = Dir::open_base(tmp.path(), uid).unwrap();
        assert_eq!(ImageEntry::load(&dir), None);
        let e = entry(&["/e", "x y"], &["c\nd"]);
        e.save(&dir).unwrap();
        assert_eq!(ImageEntry::load(&dir), Some(e));
        let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(left.len(), 1, "no temporary file left");
    }
}
