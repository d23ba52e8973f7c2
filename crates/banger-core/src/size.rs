//! Byte sizes as users write them and as banger prints them.
//!
//! Accepted: `4G`, `4GiB`, `512M`, `512MiB`, `4K`, `4KiB`, `1T`, `1.5G`; units are binary
//! (1K = 1024) and case-insensitive; a bare number means MiB (`2048` is 2 GiB). Printing uses
//! one decimal and binary units: `1.2 GiB`, `512 MiB`, `0 B`.

use std::fmt;
use std::str::FromStr;

const KIB: u64 = 1024;
const MIB: u64 = KIB * 1024;
const GIB: u64 = MIB * 1024;
const TIB: u64 = GIB * 1024;

/// A number of bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct ByteSize(pub u64);

/// Why a size could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SizeError {
    #[error("size must not be empty")]
    Empty,
    #[error(
        "size {input:?} is not a number with an optional unit (examples: 4G, 4GiB, 512M, 512MiB, 4K; a bare number is MiB)"
    )]
    Invalid { input: String },
    #[error(
        "size {input:?} has unknown unit {unit:?} (use K, M, G or T, optionally followed by iB)"
    )]
    UnknownUnit { input: String, unit: String },
    #[error("size {input:?} is too large")]
    Overflow { input: String },
}

impl ByteSize {
    pub const fn mib(n: u64) -> Self {
        Self(n * MIB)
    }
    pub const fn gib(n: u64) -> Self {
        Self(n * GIB)
    }
    pub fn bytes(self) -> u64 {
        self.0
    }
    /// Whole MiB, rounded down.
    pub fn as_mib(self) -> u64 {
        self.0 / MIB
    }
}

/// Parses a size; see the module docs for the accepted forms.
pub fn parse_size(input: &str) -> Result<ByteSize, SizeError> {
    let s = input.trim();
    if s.is_empty() {
        return Err(SizeError::Empty);
    }
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    if num.is_empty() || num.starts_with('.') || num.ends_with('.') || num.matches('.').count() > 1
    {
        return Err(SizeError::Invalid {
            input: input.to_string(),
        });
    }
    let multiplier = match unit.to_ascii_lowercase().as_str() {
        "" => MIB,
        "k" | "kib" => KIB,
        "m" | "mib" => MIB,
        "g" | "gib" => GIB,
        "t" | "tib" => TIB,
        _ if unit.chars().all(|c| c.is_ascii_alphabetic()) => {
            return Err(SizeError::UnknownUnit {
                input: input.to_string(),
                unit: unit.to_string(),
            });
        }
        _ => {
            return Err(SizeError::Invalid {
                input: input.to_string(),
            });
        }
    };
    let overflow = || SizeError::Overflow {
        input: input.to_string(),
    };
    let (whole, frac) = num.split_once('.').unwrap_or((num, ""));
    let whole: u64 = whole.parse().map_err(|_| overflow())?;
    let mut bytes = whole.checked_mul(multiplier).ok_or_else(overflow)?;
    if !frac.is_empty() {
        // At most 9 fractional digits are meaningful for these multipliers.
        let digits = &frac[..frac.len().min(9)];
        let scale = 10u64.pow(digits.len() as u32);
        let f: u64 = digits.parse().map_err(|_| overflow())?;
        let extra = (u128::from(f) * u128::from(multiplier) / u128::from(scale)) as u64;
        bytes = bytes.checked_add(extra).ok_or_else(overflow)?;
    }
    Ok(ByteSize(bytes))
}

impl FromStr for ByteSize {
    type Err = SizeError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        parse_size(s)
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        let (unit, div) = match b {
            _ if b >= TIB => ("TiB", TIB),
            _ if b >= GIB => ("GiB", GIB),
            _ if b >= MIB => ("MiB", MIB),
            _ if b >= KIB => ("KiB", KIB),
            _ => return write!(f, "{b} B"),
        };
        // One decimal, rounded half up, without a trailing ".0".
        let tenths = (u128::from(b) * 10 + u128::from(div) / 2) / u128::from(div);
        if tenths % 10 == 0 {
            write!(f, "{} {unit}", tenths / 10)
        } else {
            write!(f, "{}.{} {unit}", tenths / 10, tenths % 10)
        }
    }
}

impl serde::Serialize for ByteSize {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(self.0)
    }
}

impl<'de> serde::Deserialize<'de> for ByteSize {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        u64::deserialize(d).map(ByteSize)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses() {
        let ok: &[(&str, u64)] = &[
            ("4G", 4 * GIB),
            ("4GiB", 4 * GIB),
            ("4g", 4 * GIB),
            ("4gib", 4 * GIB),
            ("512M", 512 * MIB),
            ("512MiB", 512 * MIB),
            ("4K", 4 * KIB),
            ("4KiB", 4 * KIB),
            ("1T", TIB),
            ("2048", 2048 * MIB),
            ("1", MIB),
            ("0", 0),
            ("1.5G", 3 * GIB / 2),
            (" 8G ", 8 * GIB),
        ];
        for (input, want) in ok {
            assert_eq!(parse_size(input), Ok(ByteSize(*want)), "{input:?}");
        }
    }

    #[test]
    fn rejects() {
        let bad = [
            "", "   ", "G", "abc", "4X", "4GB", "4 GiB x", "-1", "+4G", "1..5G", ".5G", "5.G",
            "4G4", "0x10",
        ];
        for input in bad {
            assert!(parse_size(input).is_err(), "{input:?} should fail");
        }
        assert!(matches!(
            parse_size("4Q"),
            Err(SizeError::UnknownUnit { .. })
        ));
    }

    #[test]
    fn overflow_is_an_error() {
        for input in [
            "18446744073709551616",
            "99999999999T",
            "17179869184G",
            "18446744073709551615",
        ] {
            assert!(
                matches!(parse_size(input), Err(SizeError::Overflow { .. })),
                "{input:?}: {:?}",
                parse_size(input)
            );
        }
    }

    #[test]
    fn formats() {
        let cases: &[(u64, &str)] = &[
            (0, "0 B"),
            (1023, "1023 B"),
            (KIB, "1 KiB"),
            (512 * MIB, "512 MiB"),
            (GIB, "1 GiB"),
            (GIB + GIB / 5, "1.2 GiB"),
            (2 * GIB, "2 GiB"),
            (3 * TIB / 2, "1.5 TiB"),
            (MIB - 1, "1024 KiB"),
        ];
        for (b, want) in cases {
            assert_eq!(ByteSize(*b).to_string(), *want, "{b}");
        }
    }

    #[test]
    fn round_trips_through_display() {
        for b in [KIB, 4 * KIB, MIB, 512 * MIB, GIB, 8 * GIB, TIB] {
            let shown = ByteSize(b).to_string().replace(' ', "");
            assert_eq!(parse_size(&shown), Ok(ByteSize(b)), "{shown}");
        }
    }
}
