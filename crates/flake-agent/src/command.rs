// SPDX-License-Identifier: MIT
//! Building the app's command from a `Call`, and what a failed start means for the caller;
//! shared by the container agent and the guest init `sci`.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::process::Command;

use crate::proto::Call;

/// The app's command: argv, extra environment, working directory and user of the call;
/// the agent's own environment (the instance's) is inherited. Fails only when the call's
/// user is not one of the instance's ([`crate::user`]).
pub fn app_command(call: &Call) -> std::io::Result<Command> {
    let program = call.argv.first().map(Vec::as_slice).unwrap_or_default();
    let mut command = Command::new(OsStr::from_bytes(program));
    command.args(call.argv.iter().skip(1).map(|a| OsStr::from_bytes(a)));
    if !call.user.is_empty() {
        let user = crate::user::resolve(&call.user, std::path::Path::new("/"))?;
        // Before the call's environment, which may set its own.
        command.env("HOME", OsStr::from_bytes(&user.home));
        std::os::unix::process::CommandExt::uid(&mut command, user.uid);
        std::os::unix::process::CommandExt::gid(&mut command, user.gid);
    }
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
    Ok(command)
}

/// The app's command with three pipes for its streams, in a process group of its own (the
/// group signals go to): a frame-mode call without a terminal.
pub fn piped_app_command(call: &Call) -> std::io::Result<Command> {
    let mut command = app_command(call)?;
    command
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    std::os::unix::process::CommandExt::process_group(&mut command, 0);
    Ok(command)
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

#[cfg(test)]
mod tests {
    use super::*;

    fn call(argv: &[&str], user: &str) -> Call {
        Call {
            argv: argv.iter().map(|a| a.as_bytes().to_vec()).collect(),
            user: user.as_bytes().to_vec(),
            ..Call::default()
        }
    }

    #[test]
    fn an_unknown_user_is_refused_before_the_app_starts() {
        let call = call(&["/bin/true"], "no-such-user-here");
        let err = app_command(&call).unwrap_err();
        let (message, code) = start_failure(&call, &err);
        assert_eq!(code, 126, "{message}");
        assert!(message.contains("user 'no-such-user-here'"), "{message}");
    }

    #[test]
    fn the_app_runs_as_the_calls_user_with_its_home() {
        if !rustix::process::geteuid().is_root() {
            println!("SKIP the_app_runs_as_the_calls_user_with_its_home: needs root");
            return;
        }
        let script = "id -u; id -g; echo \"$HOME\"";
        let out = stdout_of(app_command(&call(&["/bin/sh", "-c", script], "4321:4322")).unwrap());
        assert_eq!(out, "4321\n4322\n/\n");
        let mut with_home = call(&["/bin/sh", "-c", script], "4321");
        with_home.env = vec![b"HOME=/srv".to_vec()];
        let out = stdout_of(app_command(&with_home).unwrap());
        assert_eq!(out, "4321\n0\n/srv\n");
    }

    /// What `cmd` prints, read until it closes its output. Not through `output()`: the
    /// daemon tests of this binary run a reaper that may collect the child first, and
    /// waiting would then fail with ECHILD.
    fn stdout_of(mut cmd: std::process::Command) -> String {
        use std::io::Read;
        let mut child = cmd.stdout(std::process::Stdio::piped()).spawn().unwrap();
        let mut out = String::new();
        child
            .stdout
            .take()
            .unwrap()
            .read_to_string(&mut out)
            .unwrap();
        let _ = child.wait();
        out
    }
}
