// SPDX-License-Identifier: MIT
//! Just enough of QEMU's monitor protocol (QMP) to save a running VM: one JSON object per
//! line each way; a command is answered by an object with `return` or `error`, and
//! events (objects with `event`) may come in between.
//!
//! The state file is the launcher's (made private, unnamed until whole): it goes to QEMU
//! with `getfd` (the descriptor travels with the command, `SCM_RIGHTS`) and the migration
//! writes into it (`fd:NAME`). So no shell or helper program writes the state, and once
//! QEMU says the migration completed, all of it is in the file. The VM is not stopped
//! first: a VM paused when saved would be restored paused.

use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{json, Value};

use crate::timing::{Deadline, SAVE_POLL as POLL, SAVE_TIMEOUT, SETTLE_TIMEOUT};
/// The name the state file's descriptor gets in QEMU.
const FD_NAME: &str = "flake-state";
/// What failed when a write to the monitor failed.
const WRITE: &str = "could not be written";

/// Why the monitor of a VM could not be used, or a migration did not go through.
#[derive(Debug, thiserror::Error)]
pub enum QmpError {
    /// The monitor socket cannot be reached.
    #[error("cannot connect to the QEMU monitor {}: {source}; is the VM still running?", socket.display())]
    Connect {
        /// The monitor socket.
        socket: PathBuf,
        /// Underlying error.
        source: std::io::Error,
    },
    /// The monitor connection broke.
    #[error("the QEMU monitor {} {what}: {source}; see vmm.log beside it", socket.display())]
    Io {
        /// The monitor socket.
        socket: PathBuf,
        /// What was being done (`could not be read`, `could not be written`).
        what: &'static str,
        /// Underlying error.
        source: std::io::Error,
    },
    /// The monitor hung up.
    #[error("the QEMU monitor {} closed; see vmm.log beside it", socket.display())]
    Closed {
        /// The monitor socket.
        socket: PathBuf,
    },
    /// The monitor said something that is not JSON.
    #[error("the QEMU monitor {} said {line:?}, which is not QMP: {source}", socket.display())]
    Garbled {
        /// The monitor socket.
        socket: PathBuf,
        /// What it said.
        line: String,
        /// Underlying error.
        source: serde_json::Error,
    },
    /// A descriptor could not be attached to a command.
    #[error("no room to pass the state file to the QEMU monitor {}", socket.display())]
    NoRoom {
        /// The monitor socket.
        socket: PathBuf,
    },
    /// QEMU refused a command.
    #[error("the QEMU monitor {} refused {command}: {desc}", socket.display())]
    Refused {
        /// The monitor socket.
        socket: PathBuf,
        /// The command.
        command: String,
        /// QEMU's description of the error.
        desc: String,
    },
    /// The migration into the state file failed.
    #[error("QEMU could not save the VM ({desc}); see vmm.log beside {}", socket.display())]
    Migration {
        /// The monitor socket.
        socket: PathBuf,
        /// QEMU's description of the error.
        desc: String,
    },
    /// Something took longer than it may.
    #[error("QEMU {what} within {} s; see vmm.log beside {}", seconds, socket.display())]
    Late {
        /// The monitor socket.
        socket: PathBuf,
        /// What did not happen (`did not save the VM`, `did not end the migration`, ...).
        what: &'static str,
        /// How long it was given.
        seconds: u64,
    },
}

/// How saving a running VM ended when it did not end saved.
#[derive(Debug, thiserror::Error)]
pub enum SaveError {
    /// The VM was not saved and runs on.
    #[error("not saved: {0}")]
    NotSaved(#[source] QmpError),
    /// The VM did not run again after the attempt.
    #[error("did not run again after saving: {0}")]
    Stuck(#[source] QmpError),
}

/// A connected monitor.
struct Monitor {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
    socket: PathBuf,
}

impl Monitor {
    /// Connects to `socket` and leaves the monitor's negotiation mode.
    fn connect(socket: &Path) -> Result<Self, QmpError> {
        let fail = |source| QmpError::Connect {
            socket: socket.to_path_buf(),
            source,
        };
        let stream = crate::vmm::connect_unix(socket).map_err(fail)?;
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .map_err(fail)?;
        let writer = stream.try_clone().map_err(fail)?;
        let mut monitor = Monitor {
            reader: BufReader::new(stream),
            writer,
            socket: socket.to_path_buf(),
        };
        monitor.message()?;
        monitor.execute("qmp_capabilities", json!({}))?;
        Ok(monitor)
    }

    /// The next message.
    fn message(&mut self) -> Result<Value, QmpError> {
        let mut line = String::new();
        match self.reader.read_line(&mut line) {
            Ok(0) => Err(QmpError::Closed {
                socket: self.socket.clone(),
            }),
            Ok(_) => serde_json::from_str(&line).map_err(|source| QmpError::Garbled {
                socket: self.socket.clone(),
                line,
                source,
            }),
            Err(source) => Err(self.io("could not be read")(source)),
        }
    }

    /// Maps an I/O error while `what` to [`QmpError::Io`].
    fn io(&self, what: &'static str) -> impl FnOnce(std::io::Error) -> QmpError {
        let socket = self.socket.clone();
        move |source| QmpError::Io {
            socket,
            what,
            source,
        }
    }

    /// Runs `command` and gives its `return` value.
    fn execute(&mut self, command: &str, arguments: Value) -> Result<Value, QmpError> {
        self.writer
            .write_all(request(command, arguments).as_bytes())
            .map_err(self.io(WRITE))?;
        self.answer(command)
    }

    /// Runs `command` with `file`'s descriptor attached.
    fn execute_with(
        &mut self,
        command: &str,
        arguments: Value,
        file: &File,
    ) -> Result<Value, QmpError> {
        use rustix::net::{sendmsg, SendAncillaryBuffer, SendAncillaryMessage, SendFlags};
        let text = request(command, arguments);
        let mut space = [std::mem::MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
        let mut control = SendAncillaryBuffer::new(&mut space);
        let fds = [file.as_fd()];
        if !control.push(SendAncillaryMessage::ScmRights(&fds)) {
            return Err(QmpError::NoRoom {
                socket: self.socket.clone(),
            });
        }
        let slices = [std::io::IoSlice::new(text.as_bytes())];
        let sent = sendmsg(&self.writer, &slices, &mut control, SendFlags::NOSIGNAL)
            .map_err(|e| self.io(WRITE)(e.into()))?;
        if sent != text.len() {
            // The descriptor went with the first part; the rest is plain.
            let rest = text.as_bytes().get(sent..).unwrap_or_default();
            self.writer.write_all(rest).map_err(self.io(WRITE))?;
        }
        self.answer(command)
    }

    /// The answer to `command`, passing over events.
    fn answer(&mut self, command: &str) -> Result<Value, QmpError> {
        loop {
            let mut answer = self.message()?;
            if let Some(value) = answer.get_mut("return") {
                return Ok(value.take());
            }
            if let Some(error) = answer.get("error") {
                let desc = error.get("desc").and_then(Value::as_str).unwrap_or("");
                return Err(QmpError::Refused {
                    socket: self.socket.clone(),
                    command: command.to_string(),
                    desc: desc.to_string(),
                });
            }
        }
    }
}

impl Monitor {
    /// The error saying QEMU `what` within `timeout`.
    fn late(&self, what: &'static str, timeout: Duration) -> QmpError {
        QmpError::Late {
            socket: self.socket.clone(),
            what,
            seconds: timeout.as_secs(),
        }
    }
}

/// A command line for the monitor.
fn request(command: &str, arguments: Value) -> String {
    let mut line = json!({ "execute": command, "arguments": arguments }).to_string();
    line.push('\n');
    line
}

/// Saves the VM whose monitor is `socket` into `to`, then lets it run on; the error says
/// whether it runs on unsaved or does not run again.
pub fn save(socket: &Path, to: &File) -> Result<(), SaveError> {
    // Nothing asked of QEMU yet when this fails: the VM runs as it did.
    let mut monitor = Monitor::connect(socket).map_err(SaveError::NotSaved)?;
    let monitor = &mut monitor;
    let migrated = monitor
        .execute_with("getfd", json!({ "fdname": FD_NAME }), to)
        .and_then(|_| monitor.execute("migrate", json!({ "uri": format!("fd:{FD_NAME}") })))
        .and_then(|_| wait_migrated(monitor));
    if migrated.is_err() {
        // Whatever went wrong, no migration may still be going when the VM resumes.
        let _ = monitor.execute("migrate_cancel", json!({}));
        let _ = settled(monitor);
    }
    resume(monitor).map_err(SaveError::Stuck)?;
    migrated.map_err(SaveError::NotSaved)
}

/// The migration's status.
fn migration_status(monitor: &mut Monitor) -> Result<(String, Value), QmpError> {
    let info = monitor.execute("query-migrate", json!({}))?;
    let status = info
        .get("status")
        .and_then(Value::as_str)
        .unwrap_or("none")
        .to_string();
    Ok((status, info))
}

/// Waits until the migration has completed.
fn wait_migrated(monitor: &mut Monitor) -> Result<(), QmpError> {
    let deadline = Deadline::after(SAVE_TIMEOUT);
    loop {
        let (status, info) = migration_status(monitor)?;
        match status.as_str() {
            "completed" => return Ok(()),
            "failed" | "cancelled" => {
                let desc = info.get("error-desc").and_then(Value::as_str);
                return Err(QmpError::Migration {
                    socket: monitor.socket.clone(),
                    desc: desc.unwrap_or("no reason given").to_string(),
                });
            }
            _ if deadline.passed() => {
                return Err(monitor.late("did not save the VM", SAVE_TIMEOUT));
            }
            _ => std::thread::sleep(POLL),
        }
    }
}

/// Waits (a while) until no migration is going on.
fn settled(monitor: &mut Monitor) -> Result<(), QmpError> {
    let deadline = Deadline::after(SETTLE_TIMEOUT);
    while !deadline.passed() {
        let (status, _) = migration_status(monitor)?;
        if matches!(
            status.as_str(),
            "completed" | "failed" | "cancelled" | "none"
        ) {
            return Ok(());
        }
        std::thread::sleep(POLL);
    }
    Err(monitor.late("did not end the migration", SETTLE_TIMEOUT))
}

/// Makes the VM run again: a completed migration leaves it paused once QEMU has finished
/// with it (`postmigrate`; `cont` is refused while it is still `finish-migrate`), a failed
/// one running.
fn resume(monitor: &mut Monitor) -> Result<(), QmpError> {
    let deadline = Deadline::after(SETTLE_TIMEOUT);
    loop {
        let state = monitor.execute("query-status", json!({}))?;
        match state.get("status").and_then(Value::as_str) {
            Some("running") => return Ok(()),
            Some("finish-migrate") => {}
            // Refused while QEMU still finishes the migration: asked again next round.
            _ => drop(monitor.execute("cont", json!({}))),
        }
        if deadline.passed() {
            return Err(monitor.late("did not let the VM run again", SETTLE_TIMEOUT));
        }
        std::thread::sleep(POLL);
    }
}

#[cfg(test)]
mod tests {
    use std::io::{BufRead, BufReader, Write};
    use std::os::unix::net::UnixListener;

    use super::*;

    /// A monitor that greets, then answers each command by `answer`, and hangs up when
    /// it gives `None`; gives the commands it was sent.
    fn monitor(
        socket: &Path,
        answer: impl Fn(&str) -> Option<String> + Send + 'static,
    ) -> std::thread::JoinHandle<Vec<String>> {
        let listener = UnixListener::bind(socket).unwrap();
        std::thread::spawn(move || {
            let (stream, _) = listener.accept().unwrap();
            let mut writer = stream.try_clone().unwrap();
            writeln!(writer, r#"{{"QMP": {{"version": {{}}}}}}"#).unwrap();
            let mut seen = Vec::new();
            for line in BufReader::new(stream).lines() {
                let request: Value = serde_json::from_str(&line.unwrap()).unwrap();
                let command = request["execute"].as_str().unwrap().to_string();
                let Some(reply) = answer(&command) else {
                    seen.push(command);
                    break;
                };
                seen.push(command);
                writeln!(writer, "{reply}").unwrap();
            }
            seen
        })
    }

    /// The answer of a monitor whose VM runs and saves as `migration` says.
    fn qemu(command: &str, migration: &'static str) -> Option<String> {
        Some(match command {
            "query-migrate" => migration.to_string(),
            "query-status" => r#"{"return": {"status": "running"}}"#.to_string(),
            _ => r#"{"event": "SOMETHING"}
{"return": {}}"#
                .to_string(),
        })
    }

    fn state_file(dir: &Path) -> File {
        File::create(dir.join("state")).unwrap()
    }

    #[test]
    fn a_saved_vm_runs_on() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("monitor");
        let server = monitor(&socket, |c| {
            qemu(c, r#"{"return": {"status": "completed"}}"#)
        });
        save(&socket, &state_file(dir.path())).unwrap();
        assert_eq!(
            server.join().unwrap(),
            [
                "qmp_capabilities",
                "getfd",
                "migrate",
                "query-migrate",
                "query-status"
            ]
        );
    }

    #[test]
    fn a_missing_monitor_is_named_and_nothing_is_asked() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("monitor");
        let err = save(&socket, &state_file(dir.path())).unwrap_err();
        assert!(matches!(err, SaveError::NotSaved(QmpError::Connect { .. })));
        let text = err.to_string();
        assert!(
            text.starts_with(&format!(
                "not saved: cannot connect to the QEMU monitor {}: ",
                socket.display()
            )),
            "{text}"
        );
        assert!(text.ends_with("; is the VM still running?"), "{text}");
    }

    #[test]
    fn a_refused_command_is_named_and_the_vm_runs_on_unsaved() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("monitor");
        let server = monitor(&socket, |command| match command {
            "migrate" => Some(r#"{"error": {"desc": "no space"}}"#.to_string()),
            _ => qemu(command, r#"{"return": {"status": "none"}}"#),
        });
        let err = save(&socket, &state_file(dir.path())).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "not saved: the QEMU monitor {} refused migrate: no space",
                socket.display()
            )
        );
        let seen = server.join().unwrap();
        assert_eq!(
            seen[3..],
            ["migrate_cancel", "query-migrate", "query-status"],
            "cancelled, then running again"
        );
    }

    #[test]
    fn a_failed_migration_says_why() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("monitor");
        let failed = r#"{"return": {"status": "failed", "error-desc": "disk full"}}"#;
        let _server = monitor(&socket, move |c| qemu(c, failed));
        let err = save(&socket, &state_file(dir.path())).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "not saved: QEMU could not save the VM (disk full); see vmm.log beside {}",
                socket.display()
            )
        );
    }

    #[test]
    fn a_monitor_that_hangs_up_after_the_migration_leaves_the_vm_stuck() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("monitor");
        let _server = monitor(&socket, |command| match command {
            "query-status" => None,
            _ => qemu(command, r#"{"return": {"status": "completed"}}"#),
        });
        let err = save(&socket, &state_file(dir.path())).unwrap_err();
        assert!(
            matches!(err, SaveError::Stuck(QmpError::Closed { .. })),
            "{err}"
        );
        assert_eq!(
            err.to_string(),
            format!(
                "did not run again after saving: the QEMU monitor {} closed; see vmm.log \
                 beside it",
                socket.display()
            )
        );
    }

    #[test]
    fn a_monitor_that_speaks_no_qmp_is_quoted() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("monitor");
        let _server = monitor(&socket, |_| Some("hello".to_string()));
        let err = save(&socket, &state_file(dir.path())).unwrap_err();
        let text = err.to_string();
        assert!(
            text.starts_with(&format!(
                "not saved: the QEMU monitor {} said \"hello\\n\", which is not QMP: ",
                socket.display()
            )),
            "{text}"
        );
    }
}
