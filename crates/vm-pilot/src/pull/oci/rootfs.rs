// SPDX-License-Identifier: MIT
//! The rootfs of an OCI image: its tree, as `podman image mount` shows it, copied into a
//! new ext4 file by `mkfs.ext4 -d`, which keeps owners, modes, symlinks, hard links, device
//! nodes and extended attributes (file capabilities are the `security.capability`
//! attribute) without root or a loop mount. e2fsprogs 1.47 takes no tarball, so the tree
//! must be a directory.
//!
//! Run by a user, podman's storage and its mounts exist only inside podman's user
//! namespace, where the image's owners are what the image says; there, and only there,
//! `mkfs.ext4` sees them right. So the steps that need the tree (measure it, make the file
//! system) run in one small fixed shell script, started by `podman unshare` for a user and
//! directly for root. The script mounts the image, unmounts it again on every exit (a
//! `trap`, also when SIGINT, SIGTERM or SIGHUP end it; only a `kill -9` of the script
//! itself leaves the mount to podman), and takes everything as positional arguments:
//! nothing from the image or the command line is ever part of the script's text.
//!
//! The file system is sized from the tree: its allocated bytes (`du`) and inodes, each with
//! [`HEADROOM_PERCENT`] on top, plus [`EXTRA_BYTES`] for the journal, the guest init and
//! what the guest writes.

use std::path::Path;

use flakes::process::Cmd;

use super::super::PullError;
use super::{OciError, Podman};

/// Space and inodes on top of what the tree uses, in percent.
pub const HEADROOM_PERCENT: u64 = 30;
/// Bytes added to every rootfs: the journal (16 MiB at these sizes), the guest init and
/// room for a guest that writes a little.
pub const EXTRA_BYTES: u64 = 64 << 20;
/// Inodes added to every rootfs.
const EXTRA_INODES: u64 = 1024;

/// The script: `sh -c SCRIPT sh PODMAN IMAGE_ID measure` prints the tree's bytes and
/// inodes (two `du` lines); `... build OUT SIZE MKFS ARGS...` runs `MKFS ARGS... -d TREE
/// -- OUT SIZE`.
const SCRIPT: &str = r#"set -eu
podman=$1 image=$2 step=$3
shift 3
tree=$("$podman" image mount "$image")
trap '"$podman" image unmount "$image" >/dev/null' EXIT
trap 'exit 130' INT TERM HUP
case $step in
measure)
    du -sxB1 -- "$tree"
    du -sx --inodes -- "$tree"
    ;;
build)
    out=$1 size=$2
    shift 2
    "$@" -d "$tree" -- "$out" "$size"
    ;;
esac
"#;

/// What a tree takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Usage {
    /// Allocated bytes.
    pub bytes: u64,
    /// Inodes (a hard-linked file counted once).
    pub inodes: u64,
}

impl Usage {
    /// The size of the file system for this tree, in bytes, a multiple of 4 KiB.
    pub fn fs_bytes(self) -> u64 {
        let grown = self.bytes.saturating_mul(100 + HEADROOM_PERCENT) / 100;
        grown.saturating_add(EXTRA_BYTES).div_ceil(4096) * 4096
    }

    /// The inodes the file system gets.
    pub fn fs_inodes(self) -> u64 {
        (self.inodes.saturating_mul(100 + HEADROOM_PERCENT) / 100).saturating_add(EXTRA_INODES)
    }
}

/// Measures the tree of image `id` (named `reference` in errors).
pub fn measure(podman: &Podman, id: &str, reference: &str) -> Result<Usage, PullError> {
    let out = script(podman, id, "measure")
        .stdout()
        .map_err(|source| OciError::Mount {
            image: reference.to_string(),
            source,
        })?;
    let usage = parse_usage(&out).ok_or_else(|| OciError::Inspect {
        image: reference.to_string(),
        reason: format!("du answered '{}'", out.trim()),
    })?;
    Ok(usage)
}

/// Makes `out` (a new file) an ext4 file system of `usage`'s size holding the tree of image
/// `id`.
pub fn build(
    podman: &Podman,
    id: &str,
    usage: Usage,
    mkfs: &Path,
    out: &Path,
) -> Result<(), flakes::process::ProcessError> {
    script(podman, id, "build")
        .arg(out)
        .arg(format!("{}k", usage.fs_bytes() / 1024))
        .arg(mkfs)
        .args([
            "-q", "-F", "-t", "ext4", "-L", "rootfs", "-b", "4096", "-m", "0", "-N",
        ])
        .arg(usage.fs_inodes().to_string())
        .run()
}

/// The script for `step` on image `id`, in podman's user namespace when not root.
fn script(podman: &Podman, id: &str, step: &str) -> Cmd {
    let base = if podman.rootless {
        podman.cmd().args(["unshare", "sh"])
    } else {
        Cmd::new("/bin/sh")
    };
    base.args(["-c", SCRIPT, "sh"])
        .arg(podman.program())
        .args([id, step])
}

/// Reads the two `du` lines: bytes, then inodes.
fn parse_usage(text: &str) -> Option<Usage> {
    let mut numbers = text
        .lines()
        .map(|line| line.split_whitespace().next()?.parse::<u64>().ok());
    Some(Usage {
        bytes: numbers.next()??,
        inodes: numbers.next()??,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn du_answers() {
        assert_eq!(
            parse_usage("2199552\t/var/lib/x/merged\n184\t/var/lib/x/merged\n"),
            Some(Usage {
                bytes: 2_199_552,
                inodes: 184
            })
        );
        assert_eq!(parse_usage(""), None);
        assert_eq!(parse_usage("12 /a\n"), None);
        assert_eq!(parse_usage("x /a\n3 /a\n"), None);
    }

    #[test]
    fn sizes_have_headroom() {
        let empty = Usage {
            bytes: 0,
            inodes: 0,
        };
        assert_eq!(empty.fs_bytes(), EXTRA_BYTES);
        assert_eq!(empty.fs_inodes(), EXTRA_INODES);
        let tree = Usage {
            bytes: 100 << 20,
            inodes: 10_000,
        };
        assert_eq!(tree.fs_bytes(), (130 << 20) + EXTRA_BYTES);
        assert_eq!(tree.fs_inodes(), 13_000 + EXTRA_INODES);
        let odd = Usage {
            bytes: 1,
            inodes: 1,
        };
        assert_eq!(odd.fs_bytes() % 4096, 0);
        let huge = Usage {
            bytes: u64::MAX,
            inodes: u64::MAX,
        };
        assert!(huge.fs_bytes() > 0 && huge.fs_inodes() > 0);
    }
}
