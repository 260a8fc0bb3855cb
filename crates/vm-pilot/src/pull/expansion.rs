// SPDX-License-Identifier: MIT
//! The expansion guard of a compressed archive: the bytes it unpacks to may not outgrow the
//! compressed bytes read so far by more than a ratio (plus a floor for small archives).
//!
//! The size limit alone lets a few MB of archive write gigabytes before the checksum is
//! looked at (a run of zeros compresses about 1000 to 1). A real VM image compresses far
//! less: an ext4 rootfs of a few GB, partly empty, shrinks 5 to 50 times, so a ratio of 200
//! refuses only what no image needs, and early: after the floor plus 200 times what came
//! in, not after the size limit. The compressed side is counted beneath the decompressor,
//! the unpacked side above it, both as the bytes pass.

use std::cell::Cell;
use std::io::Read;
use std::rc::Rc;

use super::framing::Violation;

/// Counts the bytes read through it into a shared cell.
pub struct Counted<R> {
    inner: R,
    count: Rc<Cell<u64>>,
}

impl<R> Counted<R> {
    /// Counts what `inner` delivers into `count`.
    pub fn new(inner: R, count: Rc<Cell<u64>>) -> Self {
        Counted { inner, count }
    }
}

impl<R: Read> Read for Counted<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        let len = u64::try_from(n).unwrap_or(u64::MAX);
        self.count.set(self.count.get().saturating_add(len));
        Ok(n)
    }
}

/// How far an archive may expand.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ratio {
    /// Unpacked bytes allowed per compressed byte read.
    pub ratio: u64,
    /// Unpacked bytes allowed whatever the ratio.
    pub floor: u64,
}

impl Ratio {
    /// Whether `unpacked` bytes are allowed after `compressed` bytes.
    fn allows(self, unpacked: u64, compressed: u64) -> bool {
        unpacked
            <= self
                .ratio
                .saturating_mul(compressed)
                .saturating_add(self.floor)
    }
}

/// A decompressed stream that fails, recording [`Violation::Expansion`], once it delivers
/// more than `ratio` allows for the compressed bytes counted so far.
pub struct Expansion<R> {
    inner: R,
    unpacked: u64,
    compressed: Rc<Cell<u64>>,
    ratio: Ratio,
    violation: Rc<Cell<Option<Violation>>>,
}

impl<R> Expansion<R> {
    /// Guards `inner`, whose source counts its bytes into `compressed`.
    pub fn new(
        inner: R,
        compressed: Rc<Cell<u64>>,
        ratio: Ratio,
        violation: Rc<Cell<Option<Violation>>>,
    ) -> Self {
        Expansion {
            inner,
            unpacked: 0,
            compressed,
            ratio,
            violation,
        }
    }
}

impl<R: Read> Read for Expansion<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        let len = u64::try_from(n).unwrap_or(u64::MAX);
        self.unpacked = self.unpacked.saturating_add(len);
        if !self.ratio.allows(self.unpacked, self.compressed.get()) {
            let violation = Violation::Expansion(self.ratio.ratio);
            self.violation.set(Some(violation));
            return Err(std::io::Error::other(violation.message()));
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut encoder, data).unwrap();
        encoder.finish().unwrap()
    }

    fn unpack(compressed: &[u8], ratio: Ratio) -> (std::io::Result<u64>, Option<Violation>) {
        let count = Rc::new(Cell::new(0));
        let violation = Rc::new(Cell::new(None));
        let decoder = flate2::read::GzDecoder::new(Counted::new(compressed, Rc::clone(&count)));
        let mut guarded = Expansion::new(decoder, count, ratio, Rc::clone(&violation));
        let copied = std::io::copy(&mut guarded, &mut std::io::sink());
        (copied, violation.get())
    }

    #[test]
    fn zeros_stop_early_and_ordinary_data_passes() {
        let ratio = Ratio {
            ratio: 200,
            floor: 1 << 20,
        };
        // 64 MiB of zeros gzip to about 64 KiB: a ratio near 1000.
        let bomb = gzip(&vec![0u8; 64 << 20]);
        let (copied, violation) = unpack(&bomb, ratio);
        assert!(copied.is_err());
        assert_eq!(violation, Some(Violation::Expansion(200)));
        // Letters at random compress less than 2 to 1: untouched, also past the floor.
        let mut state = 0x2545_f491_4f6c_dd1d_u64;
        let text: Vec<u8> = (0..8u32 << 20)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                b'a' + (state % 26) as u8
            })
            .collect();
        let (copied, violation) = unpack(&gzip(&text), ratio);
        assert_eq!(copied.unwrap(), 8 << 20);
        assert_eq!(violation, None);
    }

    #[test]
    fn the_floor_and_the_ratio_add_up() {
        let ratio = Ratio {
            ratio: 10,
            floor: 100,
        };
        assert!(ratio.allows(100, 0));
        assert!(!ratio.allows(101, 0));
        assert!(ratio.allows(200, 10));
        assert!(!ratio.allows(201, 10));
        assert!(Ratio {
            ratio: u64::MAX,
            floor: u64::MAX
        }
        .allows(u64::MAX, u64::MAX));
    }
}
