// SPDX-License-Identifier: MIT
//! A downloaded kis archive (plain, gzip, xz or zstd tar): unpacked into a temporary
//! directory as a pull does, then verified against its checksum record. Nothing may land
//! outside the image directory, and only the four known files may land in it.

#![no_main]

use std::path::Path;

use flake_pilot_fuzz as _;
use libfuzzer_sys::fuzz_target;
use vm_pilot::fuzzing::{kis_unpack, kis_verify};

fn names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .expect("readable")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

fuzz_target!(|data: &[u8]| {
    let scratch = tempfile::tempdir().expect("a temporary directory");
    let archive = scratch.path().join("archive");
    std::fs::write(&archive, data).expect("archive written");
    let image = scratch.path().join("image");
    std::fs::create_dir(&image).expect("image directory");
    if kis_unpack(&archive, &image, 64 << 20).is_ok() {
        let _ = kis_verify(&image);
    }
    assert_eq!(names(scratch.path()), ["archive", "image"]);
    for name in names(&image) {
        assert!(
            ["checksum", "initrd", "kernel", "rootfs"].contains(&name.as_str()),
            "{name}"
        );
        let meta = std::fs::symlink_metadata(image.join(&name)).expect("metadata");
        assert!(meta.file_type().is_file(), "{name} is not a regular file");
    }
});
