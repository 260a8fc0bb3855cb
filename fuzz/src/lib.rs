// SPDX-License-Identifier: MIT
//! What every fuzz target shares: an allocator that stops the run on one allocation larger
//! than [`ALLOCATION_LIMIT`], so that a size taken from the input without a bound is found
//! even when the memory is never touched. libFuzzer's `-malloc_limit_mb` cannot see it
//! without a sanitizer's hooks, and `-rss_limit_mb` only sees memory that is written.
//!
//! A target links it with `use flake_pilot_fuzz as _;`.

#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::io::Write;

/// The largest single allocation a target may make. Frames are at most 1 MiB and the kis
/// digest reads 1 MiB at a time; anything near this limit comes from the input.
pub const ALLOCATION_LIMIT: usize = 256 << 20;

/// The system allocator with [`ALLOCATION_LIMIT`].
#[derive(Debug)]
pub struct Capped;

#[global_allocator]
static ALLOCATOR: Capped = Capped;

fn check(size: usize) {
    if size > ALLOCATION_LIMIT {
        // Unbuffered and without formatting: nothing here allocates again.
        let _ = std::io::stderr().write_all(b"fuzz: an allocation exceeded the limit\n");
        std::process::abort();
    }
}

// SAFETY: every method checks the size and then forwards its arguments unchanged to the
// system allocator, so the contract the caller keeps is the one `System` relies on.
unsafe impl GlobalAlloc for Capped {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        check(layout.size());
        // SAFETY: forwarded unchanged (see above).
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        check(layout.size());
        // SAFETY: forwarded unchanged (see above).
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        check(new_size);
        // SAFETY: forwarded unchanged (see above).
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded unchanged (see above).
        unsafe { System.dealloc(ptr, layout) }
    }
}
