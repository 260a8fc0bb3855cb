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
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// How long saving may take (a migration of the guest's memory into a local file).
const SAVE_TIMEOUT: Duration = Duration::from_secs(60);
/// How often the migration's progress is asked for (each question costs the emulated
/// guest a little CPU).
const POLL: Duration = Duration::from_millis(10);
/// How long QEMU may take to end a migration, or to let the VM run again after one.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(10);
/// The name the state file's descriptor gets in QEMU.
const FD_NAME: &str = "flake-state";

/// A connected monitor.
struct Monitor {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl Monitor {
    /// Connects to `socket` and leaves the monitor's negotiation mode.
    fn connect(socket: &Path) -> Result<Self, String> {
        let fail = |e: std::io::Error| format!("QEMU monitor {}: {e}", socket.display());
        let stream = crate::vmm::connect_unix(socket).map_err(fail)?;
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .map_err(fail)?;
        let writer = stream.try_clone().map_err(fail)?;
        let mut monitor = Monitor {
            reader: BufReader::new(stream),
            writer,
        };
        monitor.message()?;
        monitor.execute("qmp_capabilities", json!({}))?;
        Ok(monitor)
    }

    /// The next message.
    fn message(&mut self) -> Result<Value, String> {
        let mut line = String::new();
        match self.reader.read_line(&mut line) {
            Ok(0) => Err("the monitor closed".into()),
            Ok(_) => serde_json::from_str(&line).map_err(|e| format!("monitor said {line:?}: {e}")),
            Err(e) => Err(format!("reading the monitor: {e}")),
        }
    }

    /// Runs `command` and gives its `return` value.
    fn execute(&mut self, command: &str, arguments: Value) -> Result<Value, String> {
        self.writer
            .write_all(request(command, arguments).as_bytes())
            .map_err(|e| format!("writing to the monitor: {e}"))?;
        self.answer(command)
    }

    /// Runs `command` with `file`'s descriptor attached.
    fn execute_with(
        &mut self,
        command: &str,
        arguments: Value,
        file: &File,
    ) -> Result<Value, String> {
        use rustix::net::{sendmsg, SendAncillaryBuffer, SendAncillaryMessage, SendFlags};
        let text = request(command, arguments);
        let mut space = [std::mem::MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
        let mut control = SendAncillaryBuffer::new(&mut space);
        let fds = [file.as_fd()];
        if !control.push(SendAncillaryMessage::ScmRights(&fds)) {
            return Err("no room for a descriptor".into());
        }
        let slices = [std::io::IoSlice::new(text.as_bytes())];
        let sent = sendmsg(&self.writer, &slices, &mut control, SendFlags::NOSIGNAL)
            .map_err(|e| format!("writing to the monitor: {e}"))?;
        if sent != text.len() {
            // The descriptor went with the first part; the rest is plain.
            let rest = text.as_bytes().get(sent..).unwrap_or_default();
            self.writer
                .write_all(rest)
                .map_err(|e| format!("writing to the monitor: {e}"))?;
        }
        self.answer(command)
    }

    /// The answer to `command`, passing over events.
    fn answer(&mut self, command: &str) -> Result<Value, String> {
        loop {
            let mut answer = self.message()?;
            if let Some(value) = answer.get_mut("return") {
                return Ok(value.take());
            }
            if let Some(error) = answer.get("error") {
                let desc = error.get("desc").and_then(Value::as_str).unwrap_or("");
                return Err(format!("{command}: {desc}"));
            }
        }
    }
}

/// A command line for the monitor.
fn request(command: &str, arguments: Value) -> String {
    let mut line = json!({ "execute": command, "arguments": arguments }).to_string();
    line.push('\n');
    line
}

/// Saves the VM whose monitor is `socket` into `to`, then lets it run on. The outer
/// error: the VM could not be made to run again; the inner one: it runs, unsaved.
pub fn save(socket: &Path, to: &File) -> Result<Result<(), String>, String> {
    let mut monitor = Monitor::connect(socket).map_err(|e| format!("not saved: {e}"));
    let Ok(monitor) = monitor.as_mut() else {
        // Nothing was asked of QEMU: the VM runs as it did.
        return Ok(monitor.map(|_| ()));
    };
    let migrated = monitor
        .execute_with("getfd", json!({ "fdname": FD_NAME }), to)
        .and_then(|_| monitor.execute("migrate", json!({ "uri": format!("fd:{FD_NAME}") })))
        .and_then(|_| wait_migrated(monitor));
    if migrated.is_err() {
        // Whatever went wrong, no migration may still be going when the VM resumes.
        let _ = monitor.execute("migrate_cancel", json!({}));
        let _ = settled(monitor);
    }
    resume(monitor)?;
    Ok(migrated)
}

/// The migration's status.
fn migration_status(monitor: &mut Monitor) -> Result<(String, Value), String> {
    let info = monitor.execute("query-migrate", json!({}))?;
    let status = info
        .get("status")
        .and_then(Value::as_str)
        .unwrap_or("none")
        .to_string();
    Ok((status, info))
}

/// Waits until the migration has completed.
fn wait_migrated(monitor: &mut Monitor) -> Result<(), String> {
    let deadline = Instant::now() + SAVE_TIMEOUT;
    loop {
        let (status, info) = migration_status(monitor)?;
        match status.as_str() {
            "completed" => return Ok(()),
            "failed" | "cancelled" => {
                let desc = info.get("error-desc").and_then(Value::as_str);
                return Err(format!(
                    "migration failed: {}",
                    desc.unwrap_or("no reason given")
                ));
            }
            _ if Instant::now() > deadline => {
                return Err(format!("not saved within {} s", SAVE_TIMEOUT.as_secs()));
            }
            _ => std::thread::sleep(POLL),
        }
    }
}

/// Waits (a while) until no migration is going on.
fn settled(monitor: &mut Monitor) -> Result<(), String> {
    let deadline = Instant::now() + SETTLE_TIMEOUT;
    while Instant::now() < deadline {
        let (status, _) = migration_status(monitor)?;
        if matches!(
            status.as_str(),
            "completed" | "failed" | "cancelled" | "none"
        ) {
            return Ok(());
        }
        std::thread::sleep(POLL);
    }
    Err("the migration did not end".into())
}

/// Makes the VM run again: a completed migration leaves it paused once QEMU has finished
/// with it (`postmigrate`; `cont` is refused while it is still `finish-migrate`), a failed
/// one running.
fn resume(monitor: &mut Monitor) -> Result<(), String> {
    let deadline = Instant::now() + SETTLE_TIMEOUT;
    loop {
        let state = monitor.execute("query-status", json!({}))?;
        match state.get("status").and_then(Value::as_str) {
            Some("running") => return Ok(()),
            Some("finish-migrate") => {}
            // Refused while QEMU still finishes the migration: asked again next round.
            _ => drop(monitor.execute("cont", json!({}))),
        }
        continue_unless_late(deadline)?;
    }
}

/// Sleeps one poll step, or fails once `deadline` has passed.
fn continue_unless_late(deadline: Instant) -> Result<(), String> {
    if Instant::now() > deadline {
        return Err("the VM did not run again after saving".into());
    }
    std::thread::sleep(POLL);
    Ok(())
}
