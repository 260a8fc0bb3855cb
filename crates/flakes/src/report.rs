// SPDX-License-Identifier: MIT
//! Reporting an error once, as one line, at the top of a binary.
//!
//! Library errors name their cause in their own message (`cannot create /x: Permission
//! denied (os error 13)`) so that a launcher printing only the top error still says why;
//! thiserror also exposes that cause as the error's `source()`. A reporter that printed the
//! whole chain would then say every cause twice. [`one_line`] walks the chain and adds only
//! the causes the text so far does not already contain, so both kinds of error (those that
//! include their cause and anyhow contexts that do not) come out complete and once.

use std::error::Error;

/// The error and its causes on one line, each cause once, joined with `: `.
///
/// # Example
/// ```
/// let io = std::io::Error::from(std::io::ErrorKind::PermissionDenied);
/// assert_eq!(flakes::report::one_line(&io), "permission denied");
/// ```
pub fn one_line(err: &(dyn Error + 'static)) -> String {
    let mut line = squeeze(&err.to_string());
    let mut cause = err.source();
    while let Some(err) = cause {
        let text = squeeze(&err.to_string());
        if !line.contains(&text) {
            line.push_str(": ");
            line.push_str(&text);
        }
        cause = err.source();
    }
    line
}

/// `text` with every run of whitespace (newlines included) made one space.
fn squeeze(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("cannot create {path}: {source}")]
    struct Telling {
        path: &'static str,
        source: std::io::Error,
    }

    #[derive(Debug, thiserror::Error)]
    #[error("registration failed")]
    struct Silent {
        #[source]
        source: Telling,
    }

    fn denied() -> std::io::Error {
        std::io::Error::from_raw_os_error(13)
    }

    #[test]
    fn a_cause_the_message_names_is_not_repeated() {
        let err = Telling {
            path: "/x",
            source: denied(),
        };
        let line = one_line(&err);
        assert_eq!(line.matches("os error 13").count(), 1, "{line}");
        assert!(line.starts_with("cannot create /x: "), "{line}");
    }

    #[test]
    fn a_cause_the_message_does_not_name_is_added_once() {
        let err = Silent {
            source: Telling {
                path: "/x",
                source: denied(),
            },
        };
        let line = one_line(&err);
        assert!(
            line.starts_with("registration failed: cannot create /x: "),
            "{line}"
        );
        assert_eq!(line.matches("os error 13").count(), 1, "{line}");
    }

    #[derive(Debug, thiserror::Error)]
    #[error("config x.yml: {}", squeeze(&source.to_string()))]
    struct Squeezed {
        source: std::io::Error,
    }

    #[test]
    fn a_cause_named_on_one_line_is_not_repeated() {
        let err = Squeezed {
            source: std::io::Error::other("unknown field\n  at line 2"),
        };
        assert_eq!(one_line(&err), "config x.yml: unknown field at line 2");
    }

    #[test]
    fn the_report_is_one_line() {
        let err = std::io::Error::other("first\n  second");
        assert_eq!(one_line(&err), "first second");
    }
}
