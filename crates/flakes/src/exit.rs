// SPDX-License-Identifier: MIT
//! Exit codes: part of the launchers' interface, defined here and nowhere else.
//!
//! A launcher behaves like the app it stands for, so it exits with the app's own status.
//! Codes of its own follow podman's convention, so scripts see the same meaning whichever
//! engine runs the flake:
//!
//! | code    | meaning                                                          |
//! |---------|------------------------------------------------------------------|
//! | 0..=124 | the app's own exit status                                        |
//! | 125     | the launcher or the engine failed (bad config, engine error)     |
//! | 126     | the target exists but cannot be invoked (not executable)         |
//! | 127     | the target program was not found in the instance                 |
//! | 128+N   | the app was killed by signal N (130 for SIGINT, 143 for SIGTERM)  |
//!
//! `flake-ctl` exits 0 on success, 1 on failure and 2 on a command-line usage error;
//! `flake-ctl podman pull/load` pass podman's own status through.

/// A launcher's exit status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PilotExit {
    /// The app's own status.
    App(u8),
    /// The launcher or engine failed: 125.
    LauncherFailure,
    /// The target cannot be invoked: 126.
    CannotInvoke,
    /// The target was not found: 127.
    NotFound,
    /// The app was killed by a signal: 128 + signal.
    Signal(u8),
}

impl PilotExit {
    /// The numeric process exit code.
    ///
    /// # Example
    /// ```
    /// use flakes::PilotExit;
    /// assert_eq!(PilotExit::Signal(15).code(), 143);
    /// assert_eq!(PilotExit::LauncherFailure.code(), 125);
    /// ```
    pub fn code(self) -> u8 {
        match self {
            PilotExit::App(code) => code,
            PilotExit::LauncherFailure => 125,
            PilotExit::CannotInvoke => 126,
            PilotExit::NotFound => 127,
            PilotExit::Signal(signal) => 128u8.saturating_add(signal),
        }
    }

    /// Maps a child's wait status (exit code or terminating signal) to the launcher's status.
    pub fn from_status(status: std::process::ExitStatus) -> Self {
        use std::os::unix::process::ExitStatusExt;
        if let Some(code) = status.code() {
            return PilotExit::App(u8::try_from(code & 0xff).unwrap_or(125));
        }
        match status.signal() {
            Some(signal) => PilotExit::Signal(u8::try_from(signal).unwrap_or(127)),
            None => PilotExit::LauncherFailure,
        }
    }
}

impl From<PilotExit> for std::process::ExitCode {
    fn from(exit: PilotExit) -> Self {
        std::process::ExitCode::from(exit.code())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::ExitStatusExt;
    use std::process::ExitStatus;

    #[test]
    fn codes() {
        assert_eq!(PilotExit::App(7).code(), 7);
        assert_eq!(PilotExit::CannotInvoke.code(), 126);
        assert_eq!(PilotExit::NotFound.code(), 127);
        assert_eq!(PilotExit::Signal(2).code(), 130);
    }

    #[test]
    fn wait_status_mapping() {
        assert_eq!(
            PilotExit::from_status(ExitStatus::from_raw(7 << 8)),
            PilotExit::App(7)
        );
        assert_eq!(
            PilotExit::from_status(ExitStatus::from_raw(9)),
            PilotExit::Signal(9)
        );
        assert_eq!(PilotExit::from_status(ExitStatus::from_raw(9)).code(), 137);
    }
}
