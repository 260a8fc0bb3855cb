// SPDX-License-Identifier: MIT
//! Telling a statically linked program from a dynamically linked one, for the binaries that
//! run inside instances of any image (`flake-agent`, `sci`): a program header of type
//! `PT_INTERP` means the binary needs a dynamic loader, which an image may not have.

/// True when `bytes` are a 64-bit little-endian ELF image without a `PT_INTERP` header.
pub fn is_static(bytes: &[u8]) -> bool {
    needs_loader(bytes) == Some(false)
}

/// `Some(true)` when the ELF image has a `PT_INTERP` header; `None` when it is not ELF64 LE.
pub fn needs_loader(elf: &[u8]) -> Option<bool> {
    if elf.get(..6)? != b"\x7fELF\x02\x01" {
        return None;
    }
    let u16_at = |at: usize| Some(u16::from_le_bytes(elf.get(at..at + 2)?.try_into().ok()?));
    let u64_at = |at: usize| Some(u64::from_le_bytes(elf.get(at..at + 8)?.try_into().ok()?));
    let phoff = usize::try_from(u64_at(0x20)?).ok()?;
    let (entsize, count) = (usize::from(u16_at(0x36)?), usize::from(u16_at(0x38)?));
    for index in 0..count {
        let at = phoff.checked_add(index.checked_mul(entsize)?)?;
        let kind = u32::from_le_bytes(elf.get(at..at + 4)?.try_into().ok()?);
        if kind == 3 {
            return Some(true);
        }
    }
    Some(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal ELF64 header with one program header of type `kind`.
    fn elf(kind: u32) -> Vec<u8> {
        let mut bytes = vec![0u8; 0x40 + 0x38];
        bytes[..6].copy_from_slice(b"\x7fELF\x02\x01");
        bytes[0x20..0x28].copy_from_slice(&0x40u64.to_le_bytes());
        bytes[0x36..0x38].copy_from_slice(&0x38u16.to_le_bytes());
        bytes[0x38..0x3a].copy_from_slice(&1u16.to_le_bytes());
        bytes[0x40..0x44].copy_from_slice(&kind.to_le_bytes());
        bytes
    }

    #[test]
    fn loader_detection() {
        assert_eq!(needs_loader(&elf(3)), Some(true));
        assert_eq!(needs_loader(&elf(1)), Some(false));
        assert!(is_static(&elf(1)) && !is_static(&elf(3)));
        assert_eq!(needs_loader(b"#!/bin/sh\n"), None);
        assert_eq!(
            needs_loader(&elf(3)[..0x41]),
            None,
            "truncated headers are not trusted"
        );
    }
}
