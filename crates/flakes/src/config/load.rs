// SPDX-License-Identifier: MIT
//! Reading `NAME.yaml` and its `NAME.d/` fragments from disk.
//!
//! Fragments are the files ending in `.yaml` or `.yml` directly inside `NAME.d/`, applied in
//! byte order of their file names (so `10-net.yaml` comes before `20-volumes.yaml`). Other
//! files are skipped with a warning: the original concatenated every file regardless of its
//! name, which made editor backups (`foo.yaml~`) silently part of the configuration.

use std::fs;
use std::path::{Path, PathBuf};

use yaml_serde::Value;

use super::merge::deep_merge;
use super::raw::RawFlake;
use super::validate::validate;
use super::{ConfigError, Flake, Result};
use crate::names::FlakeName;

/// Loads, merges and validates flake `name` from its main file `path`.
///
/// The fragment directory is `path` with `.yaml` replaced by `.d`.
pub fn load_flake(name: FlakeName, path: &Path) -> Result<Flake> {
    let raw = load_raw(path)?;
    validate(name, path, raw)
}

/// Loads and merges the raw documents of the flake whose main file is `path`.
pub fn load_raw(path: &Path) -> Result<RawFlake> {
    let fragments = fragment_files(&path.with_extension("d"))?
        .into_iter()
        .map(|fragment| read(&fragment).map(|text| (fragment, text)))
        .collect::<Result<Vec<_>>>()?;
    parse_raw(path, &read(path)?, &fragments)
}

/// Parses the main document `main_text` (read from `path`) and merges the fragments, given
/// as their paths and texts in application order, on top of it. [`load_raw`] is this after
/// reading the files; the parse and the merge are apart from it so that they can be
/// exercised on texts alone (the fuzz targets under `fuzz/` do).
pub fn parse_raw(
    path: &Path,
    main_text: &str,
    fragments: &[(PathBuf, String)],
) -> Result<RawFlake> {
    if fragments.is_empty() {
        // Fast path for the launcher: one parse, no merging.
        return parse_document(path, main_text);
    }
    let mut merged = parse_value(path, main_text)?;
    for (fragment, text) in fragments {
        let value = parse_value(fragment, text)?;
        if !value.is_null() {
            deep_merge(&mut merged, value);
        }
    }
    yaml_serde::from_value(merged).map_err(|source| ConfigError::Parse {
        path: path.to_path_buf(),
        source,
    })
}

/// Lists the fragment files of a `NAME.d` directory in application order.
pub fn fragment_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(ConfigError::Read {
                path: dir.to_path_buf(),
                source,
            })
        }
    };
    let mut files = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|source| ConfigError::Read {
            path: dir.to_path_buf(),
            source,
        })?;
        let path = entry.path();
        let is_yaml = matches!(
            path.extension().and_then(|e| e.to_str()),
            Some("yaml" | "yml")
        );
        if is_yaml && path.is_file() {
            files.push(path);
        } else {
            tracing::warn!(path = %path.display(), "skipping non-YAML entry in flake fragment dir");
        }
    }
    files.sort();
    Ok(files)
}

pub(crate) fn read(path: &Path) -> Result<String> {
    fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })
}

/// Parses one file as a value, and checks on the way that its keys are all known, so the
/// error names the fragment that holds a typo (with its line) rather than the merged result.
fn parse_value(path: &Path, text: &str) -> Result<Value> {
    parse_document(path, text)?;
    yaml_serde::from_str(text).map_err(|source| ConfigError::Parse {
        path: path.to_path_buf(),
        source,
    })
}

/// Parses one file on its own, rejecting unknown keys and wrong types with their line.
pub(crate) fn parse_document(path: &Path, text: &str) -> Result<RawFlake> {
    if text.trim().is_empty() {
        return Ok(RawFlake::default());
    }
    yaml_serde::from_str(text).map_err(|source| ConfigError::Parse {
        path: path.to_path_buf(),
        source,
    })
}
