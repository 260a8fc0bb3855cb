// SPDX-License-Identifier: MIT
//! The flake's `runtime.podman` options turned into engine arguments.
//!
//! Each entry is `OPTION[ VALUE]` and becomes one or two arguments, split at the first space
//! (`"--volume /a:/b"` -> `--volume`, `/a:/b`). `%VAR` placeholders are expanded from the
//! caller's environment exactly as the original did: `%` followed by upper-case ASCII letters,
//! unset variables become the literal `$VAR`, expansion repeats because a value may itself
//! contain a placeholder, and more than [`MAX_ROUNDS`] rounds is an error. So is an option
//! that grows past [`MAX_EXPANDED`] bytes: a value that holds its own placeholder several
//! times would otherwise multiply the option with every round, into gigabytes.
//!
//! Terminal options (`-t`, `--tty`, the `-ti` that flake-ctl 3.1 wrote by default) are dropped:
//! the launcher decides about a terminal from the caller's stdin and stdout, because a
//! terminal on a pipe corrupts output with `\r\n` and makes `echo x | app` hang.

use std::path::Path;

/// Expansion rounds before a `%VAR` loop is reported.
pub const MAX_ROUNDS: usize = 10;
/// Longest expanded option: the kernel takes no longer single argument (`MAX_ARG_STRLEN`).
pub const MAX_EXPANDED: usize = 128 * 1024;

/// Errors in a flake's engine options.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OptionError {
    /// `%VAR` values keep producing placeholders.
    #[error(
        "runtime.podman option '{option}': too many %VAR expansions (a variable refers to \
         itself?); fix the environment or the option"
    )]
    TooManyExpansions {
        /// The option as written in the flake.
        option: String,
    },
    /// `%VAR` values make the option longer than an argument can be.
    #[error(
        "runtime.podman option '{option}': its %VAR expansions make it longer than \
         {MAX_EXPANDED} bytes (a variable that repeats itself?); fix the environment or the \
         option"
    )]
    TooLong {
        /// The option as written in the flake.
        option: String,
    },
}

/// One engine option: a flag and its optional separate value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EngineOption {
    /// The flag, e.g. `--volume` or `--net=host`.
    pub flag: String,
    /// The value when written as a separate word.
    pub value: Option<String>,
}

impl EngineOption {
    /// Parses one `runtime.podman` entry.
    pub fn parse(entry: &str) -> Self {
        match entry.trim_start().split_once(' ') {
            Some((flag, value)) => EngineOption {
                flag: flag.to_string(),
                value: Some(value.to_string()),
            },
            None => EngineOption {
                flag: entry.trim_start().to_string(),
                value: None,
            },
        }
    }

    /// True for the long or short spelling of `name`, with or without `=value`.
    fn is(&self, long: &str, short: Option<&str>) -> bool {
        let bare = self
            .flag
            .split_once('=')
            .map_or(self.flag.as_str(), |(f, _)| f);
        bare == long || Some(bare) == short
    }

    /// True when the option sets podman's `--init` in any spelling.
    pub fn is_init(&self) -> bool {
        self.is("--init", None)
    }

    /// The `KEY=VALUE` this option puts into the instance's environment, in any spelling
    /// (`-e K=V`, `--env K=V`, `--env=K=V`, `-eK=V`); `None` for other options and for `-e
    /// KEY` without a value (which podman takes from its own environment).
    pub fn env_assignment(&self) -> Option<&str> {
        let inline = if let Some(rest) = self.flag.strip_prefix("--env=") {
            Some(rest)
        } else {
            self.flag.strip_prefix("-e").filter(|rest| !rest.is_empty())
        };
        let assignment = match inline {
            Some(inline) if self.value.is_none() => inline,
            Some(_) => return None,
            None if self.flag == "-e" || self.flag == "--env" => self.value.as_deref()?,
            None => return None,
        };
        assignment
            .split_once('=')
            .filter(|(key, _)| !key.is_empty())
            .map(|_| assignment)
    }

    /// True when the option chooses podman's log driver.
    pub fn is_log_driver(&self) -> bool {
        self.is("--log-driver", None)
    }

    /// The option with terminal flags removed; `None` when nothing is left.
    fn without_tty(self) -> Option<Self> {
        if self.is("--tty", Some("-t")) {
            return None;
        }
        let bundle = self.flag.strip_prefix('-').filter(|b| !b.starts_with('-'));
        match bundle {
            Some(letters)
                if !letters.is_empty() && letters.chars().all(|c| c == 't' || c == 'i') =>
            {
                // `-ti`, `-it`: stdin stays interactive (the launcher always passes -i).
                None
            }
            _ => Some(self),
        }
    }

    /// Host path of a volume option (`-v`, `--volume`, `--volume=`), if it names one.
    fn volume_host_path(&self) -> Option<&str> {
        if !self.is("--volume", Some("-v")) {
            return None;
        }
        let spec = match self.flag.split_once('=') {
            Some((_, inline)) => inline,
            None => self.value.as_deref()?,
        };
        let host = spec.trim().split(':').next()?;
        host.starts_with('/').then_some(host)
    }

    /// The arguments this option contributes.
    pub fn args(&self) -> impl Iterator<Item = &str> {
        std::iter::once(self.flag.as_str()).chain(self.value.as_deref())
    }
}

/// Expands `%VAR` placeholders in `text` using `lookup`.
///
/// # Example
/// ```
/// let env = |k: &str| (k == "HOME").then(|| "/root".to_string());
/// let out = podman_pilot::options::expand_vars("%HOME/ai:%NOPE", &env).unwrap();
/// assert_eq!(out, "/root/ai:$NOPE");
/// ```
pub fn expand_vars(
    text: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<String, OptionError> {
    let too_long = || OptionError::TooLong {
        option: text.to_string(),
    };
    let mut current = text.to_string();
    for _ in 0..MAX_ROUNDS {
        match expand_once(&current, lookup).ok_or_else(too_long)? {
            Some(next) => current = next,
            None => return Ok(current),
        }
    }
    match expand_once(&current, lookup).ok_or_else(too_long)? {
        None => Ok(current),
        Some(_) => Err(OptionError::TooManyExpansions {
            option: text.to_string(),
        }),
    }
}

/// One round of expansion: `Some(None)` when there was no placeholder, `None` when the
/// result would be longer than [`MAX_EXPANDED`] (it stops growing there).
fn expand_once(text: &str, lookup: &dyn Fn(&str) -> Option<String>) -> Option<Option<String>> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    let mut found = false;
    while let Some(pos) = rest.find('%') {
        if out.len() > MAX_EXPANDED {
            return None;
        }
        out.push_str(&rest[..pos]);
        let after = &rest[pos + 1..];
        let len = after.bytes().take_while(u8::is_ascii_uppercase).count();
        if len == 0 {
            out.push('%');
        } else {
            found = true;
            let name = &after[..len];
            match lookup(name) {
                Some(value) => out.push_str(&value),
                None => {
                    out.push('$');
                    out.push_str(name);
                }
            }
        }
        rest = &after[len..];
    }
    out.push_str(rest);
    if out.len() > MAX_EXPANDED {
        return None;
    }
    Some(found.then_some(out))
}

/// What the launcher does with the flake's options.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OptionPolicy {
    /// Drop volume options whose absolute host path does not exist.
    pub ignore_missing_volume_path: bool,
}

/// Turns `runtime.podman` entries into engine options: split, expand, drop terminal flags
/// and (by policy) volumes whose host path is missing.
pub fn engine_options(
    entries: &[String],
    policy: OptionPolicy,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<Vec<EngineOption>, OptionError> {
    let mut options = Vec::with_capacity(entries.len());
    for entry in entries {
        let expanded = expand_vars(entry, lookup)?;
        let Some(option) = EngineOption::parse(&expanded).without_tty() else {
            continue;
        };
        if option.flag.is_empty() {
            continue;
        }
        if policy.ignore_missing_volume_path {
            if let Some(host) = option.volume_host_path() {
                if !Path::new(host).exists() {
                    tracing::info!(host, "dropping volume with missing host path");
                    continue;
                }
            }
        }
        options.push(option);
    }
    Ok(options)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(key: &str) -> Option<String> {
        match key {
            "HOME" => Some("/root".into()),
            "LOOP" => Some("%LOOP".into()),
            "NEST" => Some("%HOME/n".into()),
            _ => None,
        }
    }

    fn args(entries: &[&str], ignore_missing: bool) -> Vec<String> {
        let entries: Vec<String> = entries.iter().map(|e| e.to_string()).collect();
        let policy = OptionPolicy {
            ignore_missing_volume_path: ignore_missing,
        };
        let options = engine_options(&entries, policy, &env).unwrap();
        options
            .iter()
            .flat_map(|o| o.args().map(str::to_string).collect::<Vec<_>>())
            .collect()
    }

    #[test]
    fn expansion_cases() {
        let cases = [
            ("%HOME/ai:/root/ai", "/root/ai:/root/ai"),
            ("%UNSET", "$UNSET"),
            ("%home", "%home"),
            ("100%", "100%"),
            ("%%HOME", "%/root"),
            ("%HOME_X", "/root_X"),
            ("%NEST", "/root/n"),
            ("a%HOME%HOME", "a/root/root"),
        ];
        for (input, want) in cases {
            assert_eq!(expand_vars(input, &env).unwrap(), want, "{input}");
        }
        assert!(matches!(
            expand_vars("%LOOP", &env),
            Err(OptionError::TooManyExpansions { .. })
        ));
    }

    #[test]
    fn a_value_that_repeats_itself_is_refused_before_it_grows() {
        // Each round would multiply the option by 64: 10 rounds are 64^10 placeholders.
        let many = |key: &str| (key == "MANY").then(|| "%MANY".repeat(64));
        let err = expand_vars("%MANY", &many).unwrap_err();
        assert!(matches!(err, OptionError::TooLong { .. }), "{err}");
        // One value alone may be as long as an argument can be, but not longer.
        let long = |key: &str| (key == "LONG").then(|| "x".repeat(MAX_EXPANDED));
        assert_eq!(expand_vars("%LONG", &long).unwrap().len(), MAX_EXPANDED);
        assert!(expand_vars("a%LONG", &long).is_err());
    }

    #[test]
    fn entries_split_at_first_space() {
        assert_eq!(
            args(
                &["--net host", "-e K=a b", "--workdir /root/ai", "--rm"],
                false
            ),
            [
                "--net",
                "host",
                "-e",
                "K=a b",
                "--workdir",
                "/root/ai",
                "--rm"
            ]
        );
    }

    #[test]
    fn terminal_flags_are_dropped() {
        let got = args(
            &[
                "-ti",
                "-it",
                "-t",
                "--tty",
                "--tty=true",
                "-i",
                "--interactive",
                "-e T=-t",
            ],
            false,
        );
        assert_eq!(
            got,
            ["--interactive", "-e", "T=-t"],
            "-i bundles are redundant with --interactive"
        );
    }

    #[test]
    fn missing_volume_paths_dropped_in_every_spelling() {
        let existing = std::env::temp_dir();
        let existing = existing.display();
        let entries = [
            "--volume /nonexistent/a:/a".to_string(),
            "--volume=/nonexistent/b:/b".to_string(),
            "-v /nonexistent/c:/c".to_string(),
            "-v=/nonexistent/d:/d".to_string(),
            format!("--volume {existing}:/e"),
            "-v named:/f".to_string(),
        ];
        let entries: Vec<&str> = entries.iter().map(String::as_str).collect();
        let kept = args(&entries, true);
        assert_eq!(
            kept,
            ["--volume", &format!("{existing}:/e"), "-v", "named:/f"]
        );
        assert_eq!(args(&entries, false).len(), 10, "kept without the option");
    }

    #[test]
    fn volume_after_expansion_is_checked() {
        let kept = args(&["--volume %UNSET/x:/x"], true);
        assert_eq!(
            kept,
            ["--volume", "$UNSET/x:/x"],
            "relative after expansion: left to podman"
        );
    }

    #[test]
    fn init_detection() {
        assert!(EngineOption::parse("--init").is_init());
        assert!(EngineOption::parse("--init=false").is_init());
        assert!(!EngineOption::parse("--init-path /x").is_init());
    }
}
