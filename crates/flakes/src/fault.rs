// SPDX-License-Identifier: MIT
//! A test hook that stops a launcher at a named step of a launch.
//!
//! The launchers promise that a `kill -9` at any point of a launch leaves nothing that
//! blocks or leaks into the next one. "Any point" can only be tested if a test can hold a
//! launcher at a known point: with `FLAKE_TEST_PAUSE=STEP` (one of [`Step`]'s names, or
//! several separated by commas) the launcher stops itself with `SIGSTOP` when it reaches
//! that step, so the test sees it stopped (`T` in `/proc/PID/stat`) and kills it there.
//!
//! It is compiled into every build and inert unless the variable is set: one environment
//! lookup per step, and a stopped launcher is only what whoever set the variable asked for
//! (it can be resumed with `SIGCONT`).

/// The environment variable naming the steps to stop at.
pub const PAUSE_ENV: &str = "FLAKE_TEST_PAUSE";

/// The named steps of a launch, in the order a launch meets them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// The instance's state directory is ready and, for a resume instance, its lock is
    /// held; nothing is started yet.
    Locked,
    /// The engine is about to be run in place of the launcher (one-shot container launch).
    Exec,
    /// The container or VMM was started; its agent or guest has not been reached yet.
    Started,
    /// Connected to the agent or guest; the call has not been sent, nothing answered yet.
    Connected,
}

impl Step {
    /// Every step.
    pub const ALL: [Step; 4] = [Step::Locked, Step::Exec, Step::Started, Step::Connected];

    /// The name `FLAKE_TEST_PAUSE` uses.
    pub fn name(self) -> &'static str {
        match self {
            Step::Locked => "locked",
            Step::Exec => "exec",
            Step::Started => "started",
            Step::Connected => "connected",
        }
    }
}

/// Whether `setting` (the value of [`PAUSE_ENV`]) names `step`.
pub fn names(setting: &str, step: Step) -> bool {
    setting.split(',').any(|s| s.trim() == step.name())
}

/// Stops this process with `SIGSTOP` when [`PAUSE_ENV`] names `step`; does nothing else.
pub fn pause_at(step: Step) {
    let Some(setting) = std::env::var_os(PAUSE_ENV) else {
        return;
    };
    if names(&setting.to_string_lossy(), step) {
        let me = rustix::process::getpid();
        let _ = rustix::process::kill_process(me, rustix::process::Signal::STOP);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_setting_names_steps_exactly() {
        assert!(names("locked", Step::Locked));
        assert!(names("exec, started", Step::Started));
        assert!(!names("lock", Step::Locked));
        assert!(!names("", Step::Connected));
        let all: Vec<&str> = Step::ALL.iter().map(|s| s.name()).collect();
        assert_eq!(all, ["locked", "exec", "started", "connected"]);
    }

    #[test]
    fn unset_is_inert() {
        // The variable is not set in unit tests: this must return at once.
        if std::env::var_os(PAUSE_ENV).is_none() {
            pause_at(Step::Locked);
        }
    }
}
