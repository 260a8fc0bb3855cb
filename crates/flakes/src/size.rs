// SPDX-License-Identifier: MIT
//! Byte sizes as people write them: `20GiB`, `20G`, `20g`, `512MiB`, `1.5GB`, `1048576`.
//!
//! Binary units (`KiB`, `MiB`, `GiB`, `TiB`) and the bare letters `K`, `M`, `G`, `T` (as
//! `dd`, `qemu-img` and `truncate` read them) count in powers of 1024; `kB`, `MB`, `GB`,
//! `TB` count in powers of 1000. Case does not matter, a `B` alone means bytes, and a
//! decimal fraction is allowed as long as the result is a whole number of bytes. The
//! original accepted only the `ubyte` spellings at launch, so its own documented `20g`
//! crashed the launcher; here every spelling is checked when the flake is registered.

use std::fmt;

/// A size that cannot be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid size '{text}': {reason}; write it like 20GiB, 20G, 512MiB or 1.5GB")]
pub struct SizeError {
    /// The text given.
    pub text: String,
    /// What is wrong.
    pub reason: &'static str,
}

/// A number of bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ByteSize(u64);

impl ByteSize {
    /// The size in bytes.
    pub fn bytes(self) -> u64 {
        self.0
    }

    /// Parses a size.
    ///
    /// # Example
    /// ```
    /// use flakes::size::ByteSize;
    /// assert_eq!(ByteSize::parse("20g").unwrap().bytes(), 20 << 30);
    /// assert_eq!(ByteSize::parse("1.5GB").unwrap().bytes(), 1_500_000_000);
    /// assert!(ByteSize::parse("twenty").is_err());
    /// ```
    pub fn parse(text: &str) -> Result<Self, SizeError> {
        let err = |reason| SizeError {
            text: text.to_string(),
            reason,
        };
        let trimmed = text.trim();
        let split = trimmed
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(trimmed.len());
        let (number, unit) = trimmed.split_at(split);
        let factor = unit_factor(unit.trim()).ok_or_else(|| err("unknown unit"))?;
        let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
        if whole.is_empty() && fraction.is_empty() {
            return Err(err("no number"));
        }
        let whole: u128 = if whole.is_empty() {
            0
        } else {
            whole.parse().map_err(|_| err("not a number"))?
        };
        let scale = 10u128
            .checked_pow(u32::try_from(fraction.len()).map_err(|_| err("too many decimals"))?);
        let scale = scale.ok_or_else(|| err("too many decimals"))?;
        let frac: u128 = if fraction.is_empty() {
            0
        } else {
            fraction.parse().map_err(|_| err("not a number"))?
        };
        let total = whole
            .checked_mul(scale)
            .and_then(|w| w.checked_add(frac))
            .and_then(|n| n.checked_mul(u128::from(factor)))
            .ok_or_else(|| err("too large"))?;
        if total % scale != 0 {
            return Err(err("not a whole number of bytes"));
        }
        u64::try_from(total / scale)
            .map(ByteSize)
            .map_err(|_| err("too large"))
    }
}

fn unit_factor(unit: &str) -> Option<u64> {
    let factor = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kib" => 1 << 10,
        "m" | "mib" => 1 << 20,
        "g" | "gib" => 1 << 30,
        "t" | "tib" => 1 << 40,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        "tb" => 1_000_000_000_000,
        _ => return None,
    };
    Some(factor)
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}B", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spellings() {
        let cases: &[(&str, u64)] = &[
            ("20GiB", 20 << 30),
            ("20G", 20 << 30),
            ("20g", 20 << 30),
            ("20 GiB", 20 << 30),
            ("512MiB", 512 << 20),
            ("512m", 512 << 20),
            ("1.5GB", 1_500_000_000),
            ("1.5GiB", 3 << 29),
            ("1048576", 1 << 20),
            ("100B", 100),
            ("4kB", 4_000),
            ("4KiB", 4_096),
            ("2T", 2 << 40),
            (".5G", 1 << 29),
        ];
        for (text, bytes) in cases {
            assert_eq!(
                ByteSize::parse(text).map(ByteSize::bytes),
                Ok(*bytes),
                "{text}"
            );
        }
    }

    #[test]
    fn garbage_is_refused_with_a_hint() {
        for text in [
            "",
            "g",
            "twenty",
            "20x",
            "1.2.3G",
            "0.1B",
            "-5G",
            "20 G B",
            "99999999999T",
            ".",
        ] {
            let err = ByteSize::parse(text).expect_err(text);
            assert!(err.to_string().contains("20GiB"), "{err}");
        }
    }
}

#[cfg(test)]
mod properties {
    use proptest::prelude::*;

    use super::*;

    const UNITS: [(&str, u64); 9] = [
        ("", 1),
        ("KiB", 1 << 10),
        ("M", 1 << 20),
        ("g", 1 << 30),
        ("TiB", 1 << 40),
        ("kB", 1_000),
        ("MB", 1_000_000),
        ("gb", 1_000_000_000),
        ("TB", 1_000_000_000_000),
    ];

    proptest! {
        #[test]
        fn a_size_reads_back_from_its_display(bytes in any::<u64>()) {
            let size = ByteSize(bytes);
            prop_assert_eq!(ByteSize::parse(&size.to_string()), Ok(size));
            prop_assert_eq!(ByteSize::parse(&bytes.to_string()), Ok(size));
        }

        #[test]
        fn a_number_with_a_unit_is_its_multiple(
            number in any::<u32>(),
            unit in prop::sample::select(UNITS.to_vec()),
            space in any::<bool>(),
        ) {
            let (unit, factor) = unit;
            let text = format!("{number}{}{unit}", if space { " " } else { "" });
            let want = u64::from(number).checked_mul(factor);
            prop_assert_eq!(ByteSize::parse(&text).ok().map(ByteSize::bytes), want);
        }

        #[test]
        fn any_text_is_a_size_or_an_error_with_a_hint(text in any::<String>()) {
            if let Err(err) = ByteSize::parse(&text) {
                prop_assert!(err.to_string().contains("20GiB"));
            }
        }
    }
}
