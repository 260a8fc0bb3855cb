// SPDX-License-Identifier: MIT
//! Building the app's command from a `Call`, and what a failed start means for the caller;
//! shared by the container agent and the guest init `sci`.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::process::Command;

use crate::proto::Call;

/// The app's command: argv, extra environment and working directory of the call; the
/// agent's own environment (the instance's) is inherited.
pub fn app_command(call: &Call) -> Command {
    let program = call.argv.first().map(Vec::as_slice).unwrap_or_default();
    let mut command = Command::new(OsStr::from_bytes(program));
    command.args(call.argv.iter().skip(1).map(|a| OsStr::from_bytes(a)));
    for entry in &call.env {
        if let Some(eq) = entry.iter().position(|b| *b == b'=') {
            command.env(
                OsStr::from_bytes(&entry[..eq]),
                OsStr::from_bytes(&entry[eq + 1..]),
            );
        }
    }
    if !call.cwd.is_empty() {
        command.current_dir(OsStr::from_bytes(&call.cwd));
    }
    command
}

/// The app's command with three pipes for its streams, in a process group of its own (the
/// group signals go to): a frame-mode call without a terminal.
pub fn piped_app_command(call: &Call) -> Command {
    let mut command = app_command(call);
    command
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    std::os::unix::process::CommandExt::process_group(&mut command, 0);
    command
}

/// Message and exit code for an app that could not be started: 127 when it does not
/// exist, 126 when it cannot be executed, as a shell reports them.
pub fn start_failure(call: &Call, err: &std::io::Error) -> (String, u8) {
    let program = String::from_utf8_lossy(call.argv.first().map(Vec::as_slice).unwrap_or_default())
        .into_owned();
    let code = if err.kind() == std::io::ErrorKind::NotFound {
        127
    } else {
        126
    };
    (format!("cannot run {program}: {err}"), code)
}
