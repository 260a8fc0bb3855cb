// SPDX-License-Identifier: MIT
//! The guest side of a frame-mode call: the frames a launcher sends (stdin, signals,
//! acknowledgements) as the relay's link takes them off its input. Whatever arrives, the
//! link yields whole frames, skips unknown kinds and stops at a broken stream.

#![no_main]

use flake_agent::framed::Link;
use flake_pilot_fuzz as _;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let input = std::fs::File::open("/dev/null").expect("/dev/null");
    let mut link = Link::new(input, Box::new(std::io::sink()), data.to_vec());
    let mut frames = 0;
    while let Ok(Some(_)) = link.take() {
        frames += 1;
        assert!(frames * 5 <= data.len());
    }
});
