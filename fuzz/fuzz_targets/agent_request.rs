// SPDX-License-Identifier: MIT
//! The agent's request parsing: the opening `Call` a launcher sends over the agent's
//! socket (`transport::recv_call`), and the app's command built from it (not started).

#![no_main]

use std::io::Write;
use std::os::unix::net::UnixStream;

use flake_agent::command::{app_command, piped_app_command, start_failure};
use flake_agent::transport::recv_call;
use flake_pilot_fuzz as _;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let (agent, launcher) = UnixStream::pair().expect("a socket pair");
    let bytes = data.to_vec();
    let sender = std::thread::spawn(move || {
        let mut launcher = launcher;
        let _ = launcher.write_all(&bytes);
    });
    match recv_call(&agent) {
        Ok((call, fds)) => {
            assert!(fds.is_empty());
            assert!(!call.argv.is_empty());
            let _ = format!("{:?}", app_command(&call));
            let _ = format!("{:?}", piped_app_command(&call));
            let _ = start_failure(&call, &std::io::ErrorKind::NotFound.into());
        }
        Err(err) => {
            let _ = err.to_string();
        }
    }
    drop(agent);
    sender
        .join()
        .expect("the sender ends once the agent hangs up");
});
