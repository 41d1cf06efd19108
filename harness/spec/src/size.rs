//! Byte sizes and durations as case authors write them: `4K`, `2M`, `1G`,
//! `128K`, `536870912`; `30s`, `500ms`, `2m`.
//!
//! Suffixes are binary (K = 1024), as everywhere in ndctl and QEMU.

use serde::{de, Deserialize, Deserializer};
use std::fmt;
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct ByteSize(pub u64);

/// Why a text is not a size.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SizeError {
    #[error("`{0}` is not a size (write e.g. 4K, 2M, 1G or a byte count)")]
    NotASize(String),
    #[error("`{text}`: unknown size unit `{unit}` (use K, M, G or T, binary)")]
    Unit { text: String, unit: String },
    #[error("`{0}` overflows 64 bits")]
    Overflow(String),
}

/// Why a text is not a step's timeout.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DurationError {
    #[error("`{0}` is not a duration (write e.g. 30s, 500ms, 2m)")]
    NotADuration(String),
    #[error("`{0}`: unknown duration unit (use ms, s or m)")]
    Unit(String),
    #[error("`{0}` waits for nothing: write at least 1ms")]
    Zero(String),
    #[error("`{0}` is longer than the limit of 60m")]
    TooLong(String),
}

pub const KIB: u64 = 1 << 10;
pub const MIB: u64 = 1 << 20;
pub const GIB: u64 = 1 << 30;

impl ByteSize {
    pub fn parse(text: &str) -> Result<Self, SizeError> {
        let t = text.trim();
        let digits_end = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
        let (num, unit) = t.split_at(digits_end);
        let n: u64 = num
            .parse()
            .map_err(|_| SizeError::NotASize(text.to_string()))?;
        let mult = match unit.trim() {
            "" | "B" => 1,
            "K" | "KiB" | "k" => KIB,
            "M" | "MiB" => MIB,
            "G" | "GiB" => GIB,
            "T" | "TiB" => GIB * 1024,
            other => {
                return Err(SizeError::Unit {
                    text: text.to_string(),
                    unit: other.to_string(),
                })
            }
        };
        n.checked_mul(mult)
            .map(ByteSize)
            .ok_or_else(|| SizeError::Overflow(text.to_string()))
    }

    pub fn bytes(self) -> u64 {
        self.0
    }

    pub fn is_multiple_of(self, other: ByteSize) -> bool {
        other.0 != 0 && self.0.is_multiple_of(other.0)
    }
}

impl fmt::Display for ByteSize {
    /// The shortest exact form, e.g. `2M`, `1536K`, `1000`: also the form
    /// QEMU and ndctl accept on their command lines.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        for (mult, unit) in [(GIB * 1024, "T"), (GIB, "G"), (MIB, "M"), (KIB, "K")] {
            if b != 0 && b.is_multiple_of(mult) {
                return write!(f, "{}{unit}", b / mult);
            }
        }
        write!(f, "{b}")
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl de::Visitor<'_> for V {
            type Value = ByteSize;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a size such as 4K, 2M, 1G or a byte count")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<ByteSize, E> {
                Ok(ByteSize(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<ByteSize, E> {
                u64::try_from(v)
                    .map(ByteSize)
                    .map_err(|_| E::custom("a size cannot be negative"))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<ByteSize, E> {
                ByteSize::parse(v).map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

/// A step timeout or similar, written `30s`, `500ms`, `2m`: from 1 ms to
/// [`Timeout::MAX`]. Zero waits for nothing and an hour outlives any CI job,
/// so both are refused where they are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeout(pub Duration);

impl Timeout {
    pub const MAX: Duration = Duration::from_secs(3600);

    pub fn parse(text: &str) -> Result<Self, DurationError> {
        let t = text.trim();
        let digits_end = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
        let (num, unit) = t.split_at(digits_end);
        let text = text.to_string();
        let n: u64 = num
            .parse()
            .map_err(|_| DurationError::NotADuration(text.clone()))?;
        let d = match unit {
            "ms" => Duration::from_millis(n),
            "s" => Duration::from_secs(n),
            "m" => Duration::from_secs(n.saturating_mul(60)),
            _ => return Err(DurationError::Unit(text)),
        };
        if d.is_zero() {
            return Err(DurationError::Zero(text));
        }
        if d > Self::MAX {
            return Err(DurationError::TooLong(text));
        }
        Ok(Timeout(d))
    }
}

impl<'de> Deserialize<'de> for Timeout {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Timeout::parse(&s).map_err(de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_binary_suffixes() {
        assert_eq!(ByteSize::parse("4K").unwrap().bytes(), 4096);
        assert_eq!(ByteSize::parse("2M").unwrap().bytes(), 2 << 20);
        assert_eq!(ByteSize::parse("1G").unwrap().bytes(), 1 << 30);
        assert_eq!(ByteSize::parse("128KiB").unwrap().bytes(), 128 << 10);
        assert_eq!(ByteSize::parse("512").unwrap().bytes(), 512);
    }

    #[test]
    fn rejects_nonsense_with_a_hint() {
        let e = ByteSize::parse("2X").unwrap_err();
        assert_eq!(
            e,
            SizeError::Unit {
                text: "2X".into(),
                unit: "X".into()
            }
        );
        assert!(e.to_string().contains("unknown size unit `X`"), "{e}");
        assert!(ByteSize::parse("M").is_err());
        assert!(ByteSize::parse("99999999999999999999G").is_err());
    }

    #[test]
    fn displays_shortest_exact_form() {
        assert_eq!(ByteSize(2 << 20).to_string(), "2M");
        assert_eq!(ByteSize(1536 << 10).to_string(), "1536K");
        assert_eq!(ByteSize(3 << 30).to_string(), "3G");
        assert_eq!(ByteSize(1000).to_string(), "1000");
    }

    #[test]
    fn parses_durations() {
        assert_eq!(Timeout::parse("30s").unwrap().0, Duration::from_secs(30));
        assert_eq!(
            Timeout::parse("250ms").unwrap().0,
            Duration::from_millis(250)
        );
        assert_eq!(Timeout::parse("2m").unwrap().0, Duration::from_secs(120));
        assert!(Timeout::parse("2h").is_err());
    }
}
