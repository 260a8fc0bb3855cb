// SPDX-License-Identifier: MIT
//! The launcher's side of a call against a hostile agent: the agent answers the call with
//! the input's bytes and hangs up. The call must end (with a status or an error) and never
//! panic, whatever the agent sent.

#![no_main]

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;

use flake_agent::client::{run, Request, Streams};
use flake_pilot_fuzz as _;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, answer)) = data.split_first() else {
        return;
    };
    let (launcher, agent) = UnixStream::pair().expect("a socket pair");
    let mut drain = agent.try_clone().expect("a clone");
    let reader = std::thread::spawn(move || {
        let mut sink = Vec::new();
        let _ = drain.read_to_end(&mut sink);
    });
    let answer = answer.to_vec();
    let writer = std::thread::spawn(move || {
        let mut agent = agent;
        let _ = agent.write_all(&answer);
        let _ = agent.shutdown(std::net::Shutdown::Write);
    });
    let request = Request {
        argv: vec![b"/bin/app".to_vec()],
        // Frame mode reads stdin: the fuzzer runs with stdin on /dev/null.
        streams: if mode & 1 == 0 {
            Streams::Descriptors
        } else {
            Streams::Frames
        },
        term: None,
        env: Vec::new(),
        cwd: Vec::new(),
        user: Vec::new(),
        launcher: "fuzz",
        output_acks: mode & 2 != 0,
        stdin_on_ack: mode & 4 != 0,
        answer_within: None,
    };
    let _ = run(launcher, &request).map_err(|e| e.to_string());
    writer.join().expect("writer");
    reader.join().expect("reader");
});
