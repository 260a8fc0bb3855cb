// SPDX-License-Identifier: MIT
//! `flake-ctl podman load --oci ARCHIVE`: import an image from an OCI archive.
//!
//! When the path does not exist, the newest file whose name starts with it is loaded
//! (`--oci /srv/app-` picks `/srv/app-1.10.tar` over `/srv/app-1.9.tar`). The original
//! compared names lexically, which picks 1.9.

use std::cmp::Ordering;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context as _, Result};
use flakes::Mode;

use crate::cli::LoadArgs;
use crate::commands::pass_through;
use crate::context::Context;

/// Runs the load.
pub fn run(args: &LoadArgs, mode: Mode, ctx: &Context) -> Result<ExitCode> {
    let archive = resolve_archive(&ctx.absolute(&args.oci))?;
    let status = ctx.podman(mode)?.load(&archive).status()?;
    Ok(pass_through(status))
}

/// The archive itself, or the newest file starting with its name.
fn resolve_archive(oci: &Path) -> Result<PathBuf> {
    if oci.exists() {
        return Ok(oci.to_path_buf());
    }
    let dir = oci.parent().unwrap_or(Path::new("/"));
    let prefix = oci
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let entries = std::fs::read_dir(dir)
        .with_context(|| format!("--oci {}: no such archive", oci.display()))?;
    let mut candidates: Vec<String> = entries
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|name| name.starts_with(&prefix))
        .collect();
    candidates.sort_by(|a, b| natural_cmp(a, b));
    match candidates.pop() {
        Some(newest) => Ok(dir.join(newest)),
        None => bail!(
            "--oci {}: no such archive, and no file starting with that name",
            oci.display()
        ),
    }
}

/// Compares names with embedded numbers by value, so `1.10` sorts after `1.9`.
fn natural_cmp(a: &str, b: &str) -> Ordering {
    let (mut a, mut b) = (a, b);
    loop {
        match (a.chars().next(), b.chars().next()) {
            (None, None) => return Ordering::Equal,
            (None, _) => return Ordering::Less,
            (_, None) => return Ordering::Greater,
            (Some(x), Some(y)) if x.is_ascii_digit() && y.is_ascii_digit() => {
                let (na, ra) = split_number(a);
                let (nb, rb) = split_number(b);
                let ord = na.len().cmp(&nb.len()).then_with(|| na.cmp(nb));
                if ord != Ordering::Equal {
                    return ord;
                }
                (a, b) = (ra, rb);
            }
            (Some(x), Some(y)) => {
                if x != y {
                    return x.cmp(&y);
                }
                (a, b) = (&a[x.len_utf8()..], &b[y.len_utf8()..]);
            }
        }
    }
}

/// Leading digits (without leading zeros) and the rest.
fn split_number(s: &str) -> (&str, &str) {
    let end = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let digits = s[..end].trim_start_matches('0');
    (digits, &s[end..])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn natural_order() {
        let mut names = vec!["app-1.10.tar", "app-1.9.tar", "app-1.2.tar", "app-02.tar"];
        names.sort_by(|a, b| natural_cmp(a, b));
        assert_eq!(
            names,
            ["app-1.2.tar", "app-1.9.tar", "app-1.10.tar", "app-02.tar"]
        );
    }

    #[test]
    fn archive_prefix_resolution() {
        let dir = tempfile::tempdir().unwrap();
        for name in ["img-1.9.tar", "img-1.10.tar", "other.tar"] {
            std::fs::write(dir.path().join(name), "").unwrap();
        }
        let exact = dir.path().join("other.tar");
        assert_eq!(resolve_archive(&exact).unwrap(), exact);
        assert_eq!(
            resolve_archive(&dir.path().join("img-")).unwrap(),
            dir.path().join("img-1.10.tar")
        );
        let err = resolve_archive(&dir.path().join("nope"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("--oci") && err.contains("nope"), "{err}");
    }
}
