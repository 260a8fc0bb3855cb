// SPDX-License-Identifier: MIT
//! Validated names: the flake name (basename of the registered app) and the `@NAME` instance
//! name. Both end up in file names and engine arguments, so they are checked once here and
//! are plain strings afterwards.

use std::fmt;

/// Why a name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    /// Not usable as a flake name.
    #[error("'{name}' cannot be a flake name: {reason}")]
    Flake {
        /// The refused name.
        name: String,
        /// What is wrong.
        reason: &'static str,
    },
    /// Not usable as an instance name.
    #[error(
        "invalid instance name '@{name}': use 1-63 characters of A-Z a-z 0-9 _ - = @ \
         (to pass an argument starting with @ to the app, put it after --)"
    )]
    Instance {
        /// The refused name, without its leading `@`.
        name: String,
    },
}

/// The name of a flake: the file name of its app path and of its `NAME.yaml`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FlakeName(String);

impl FlakeName {
    /// Validates a flake name.
    ///
    /// # Example
    /// ```
    /// assert!(flakes::FlakeName::new("aws").is_ok());
    /// assert!(flakes::FlakeName::new("../x").is_err());
    /// ```
    pub fn new(name: &str) -> Result<Self, NameError> {
        let refuse = |reason| {
            Err(NameError::Flake {
                name: name.to_string(),
                reason,
            })
        };
        if name.is_empty() {
            return refuse("it is empty");
        }
        if name.starts_with('.') {
            return refuse("it starts with a dot");
        }
        if name.len() > 200 {
            return refuse("it is longer than 200 bytes");
        }
        if name
            .chars()
            .any(|c| c == '/' || c.is_control() || c.is_whitespace())
        {
            return refuse("it contains a slash, a space or a control character");
        }
        Ok(FlakeName(name.to_string()))
    }

    /// The name as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for FlakeName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// An instance name given as `@NAME` on the command line (stored without the `@`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct InstanceName(String);

impl InstanceName {
    /// Validates an instance name given without its leading `@`.
    ///
    /// The character set is the original's (`[A-Za-z0-9@=_-]`, 64 characters with the `@`),
    /// which keeps the name safe in file names, container labels and TAP device names.
    pub fn new(name: &str) -> Result<Self, NameError> {
        let valid_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '@' | '=' | '_' | '-');
        if name.is_empty() || name.len() > 63 || !name.chars().all(valid_char) {
            return Err(NameError::Instance {
                name: name.to_string(),
            });
        }
        Ok(InstanceName(name.to_string()))
    }

    /// The name without the `@`.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for InstanceName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flake_names() {
        for ok in ["aws", "python3.11", "ok-google", "a_b", "x@y"] {
            assert!(FlakeName::new(ok).is_ok(), "{ok}");
        }
        for bad in ["", ".hidden", "a/b", "a b", "a\nb", &"x".repeat(201)] {
            assert!(FlakeName::new(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn instance_names() {
        for ok in ["one", "A-1", "x=2", "a_b@c", &"x".repeat(63)] {
            assert!(InstanceName::new(ok).is_ok(), "{ok}");
        }
        for bad in ["", "{u}", "a b", "a/b", "a.b", &"x".repeat(64)] {
            assert!(InstanceName::new(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn instance_error_mentions_escape() {
        let err = InstanceName::new("{u}").unwrap_err().to_string();
        assert!(err.contains("@{u}") && err.contains("--"), "{err}");
    }
}
