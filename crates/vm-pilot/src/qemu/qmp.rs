// SPDX-License-Identifier: MIT
//! Just enough of QEMU's monitor protocol (QMP) to save a running VM: one JSON object per
//! line each way; a command is answered by an object with `return` or `error`, and
//! events (objects with `event`) may come in between.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// How long saving may take (a migration of the guest's memory into a local file).
const SAVE_TIMEOUT: Duration = Duration::from_secs(60);
/// How often the migration's progress is asked for.
const POLL: Duration = Duration::from_millis(2);

/// A connected monitor.
struct Monitor {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl Monitor {
    /// Connects to `socket` and leaves the monitor's negotiation mode.
    fn connect(socket: &Path) -> Result<Self, String> {
        let stream = UnixStream::connect(socket)
            .map_err(|e| format!("cannot connect to {}: {e}", socket.display()))?;
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .map_err(|e| e.to_string())?;
        let writer = stream.try_clone().map_err(|e| e.to_string())?;
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
        let mut request = json!({ "execute": command, "arguments": arguments }).to_string();
        request.push('\n');
        self.writer
            .write_all(request.as_bytes())
            .map_err(|e| format!("writing to the monitor: {e}"))?;
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

/// Saves the VM whose monitor is `socket` into the file `to`, then lets it run on.
pub fn save(socket: &Path, to: &Path) -> Result<(), String> {
    // QEMU 7 migrates into a file only through a command; the path is quoted for its shell.
    let target = to
        .to_str()
        .filter(|t| !t.contains('\''))
        .ok_or_else(|| format!("{} cannot be quoted for QEMU", to.display()))?;
    let mut monitor = Monitor::connect(socket)?;
    let uri = format!("exec:cat > '{target}'");
    let migrated = monitor
        .execute("migrate", json!({ "uri": uri }))
        .and_then(|_| wait_migrated(&mut monitor));
    // A finished migration leaves the VM paused; a failed one leaves it running.
    let resumed = monitor.execute("cont", json!({}));
    migrated.and(resumed.map(|_| ()))
}

/// Waits until the migration has completed.
fn wait_migrated(monitor: &mut Monitor) -> Result<(), String> {
    let deadline = Instant::now() + SAVE_TIMEOUT;
    loop {
        let info = monitor.execute("query-migrate", json!({}))?;
        match info.get("status").and_then(Value::as_str) {
            Some("completed") => return Ok(()),
            Some("failed" | "cancelled") => {
                let desc = info.get("error-desc").and_then(Value::as_str);
                return Err(format!(
                    "migration failed: {}",
                    desc.unwrap_or("no reason given")
                ));
            }
            _ if Instant::now() > deadline => {
                let _ = monitor.execute("migrate_cancel", json!({}));
                return Err(format!("not saved within {} s", SAVE_TIMEOUT.as_secs()));
            }
            _ => std::thread::sleep(POLL),
        }
    }
}
