// SPDX-License-Identifier: MIT
//! Checking a flake's files without launching it, for `flake-ctl validate`.
//!
//! The launcher stops at the first error; an admin fixing a flake wants every problem at
//! once, each with the file (and line) to edit. So every file of the flake is parsed on its
//! own first, with the same functions the launcher uses, and only when all of them parse are
//! they merged and validated, again exactly as the launcher does. What refers to things
//! outside the files (images, include files) is checked by the caller, which knows the
//! engines.

use std::path::{Path, PathBuf};

use super::load::{fragment_files, parse_document, parse_raw, read};
use super::validate::validate;
use super::{ConfigError, Flake};
use crate::names::FlakeName;

/// One problem found in a flake's files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The file to fix.
    pub file: PathBuf,
    /// Line in `file`, when the YAML parser knows it.
    pub line: Option<usize>,
    /// What is wrong and, where known, how to fix it.
    pub problem: String,
}

impl From<ConfigError> for Problem {
    fn from(err: ConfigError) -> Self {
        match err {
            ConfigError::Read { path, source } => Problem {
                file: path,
                line: None,
                problem: format!("cannot read: {source}"),
            },
            ConfigError::Parse { path, source } => Problem {
                file: path,
                line: source.location().map(|l| l.line()),
                problem: super::one_line(&source),
            },
            ConfigError::Invalid { path, reason } => Problem {
                file: path,
                line: None,
                problem: reason,
            },
        }
    }
}

/// The outcome of checking one flake's files.
#[derive(Debug)]
pub struct Checked {
    /// The validated flake, when its files have no problem.
    pub flake: Option<Flake>,
    /// The files read, main file first, then the fragments in the order they apply.
    pub files: Vec<(PathBuf, String)>,
    /// Every problem found in the files.
    pub problems: Vec<Problem>,
}

impl Checked {
    /// The line of the last file (in the order the files apply, so the one that wins) that
    /// mentions `text`, to point a problem about a value at the place that sets it.
    pub fn locate(&self, text: &str) -> (PathBuf, Option<usize>) {
        self.find_line(|line| line.contains(text))
    }

    /// The place that sets the key a validation message names (`vm.runtime.vmm 'x' is
    /// unknown` names `vmm`), in the file that wins; the main file when none is named.
    fn locate_key(&self, reason: &str) -> (PathBuf, Option<usize>) {
        let first = reason.split([' ', ':']).next().unwrap_or_default();
        let key = match first.rsplit_once('.') {
            Some((_, key)) if !key.is_empty() => format!("{key}:"),
            _ => return self.find_line(|_| false),
        };
        self.find_line(|line| line.trim_start().trim_start_matches("- ").starts_with(&key))
    }

    fn find_line(&self, matches: impl Fn(&str) -> bool) -> (PathBuf, Option<usize>) {
        for (path, content) in self.files.iter().rev() {
            if let Some(index) = content.lines().position(&matches) {
                return (path.clone(), Some(index + 1));
            }
        }
        let main = self.files.first().map(|(p, _)| p.clone());
        (main.unwrap_or_default(), None)
    }
}

/// Checks flake `name` whose main file is `path`, and its `NAME.d/` fragments.
pub fn check_flake(name: FlakeName, path: &Path) -> Checked {
    let mut checked = Checked {
        flake: None,
        files: Vec::new(),
        problems: Vec::new(),
    };
    let mut paths = vec![path.to_path_buf()];
    match fragment_files(&path.with_extension("d")) {
        Ok(fragments) => paths.extend(fragments),
        Err(err) => checked.problems.push(err.into()),
    }
    for file in paths {
        match read(&file) {
            Ok(text) => {
                if let Err(err) = parse_document(&file, &text) {
                    checked.problems.push(err.into());
                }
                checked.files.push((file, text));
            }
            Err(err) => checked.problems.push(err.into()),
        }
    }
    if !checked.problems.is_empty() {
        return checked;
    }
    let Some(((main, main_text), fragments)) = checked.files.split_first() else {
        return checked;
    };
    match parse_raw(main, main_text, fragments).and_then(|raw| validate(name, main, raw)) {
        Ok(flake) => checked.flake = Some(flake),
        Err(ConfigError::Invalid { reason, .. }) => {
            let (file, line) = checked.locate_key(&reason);
            checked.problems.push(Problem {
                file,
                line,
                problem: reason,
            });
        }
        Err(err) => checked.problems.push(err.into()),
    }
    checked
}
