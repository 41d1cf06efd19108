//! Badblock lists: 512-byte-sector ranges, as the kernel's `badblocks`
//! sysfs files print them (`SECTOR COUNT` per line) and as ndctl lists them
//! (`{"offset": SECTOR, "length": COUNT}`).

use crate::unreadable::Unreadable;
use serde_json::Value;
use std::fmt;

pub const SECTOR: u64 = 512;

/// `count` sectors from `sector`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Range {
    pub sector: u64,
    pub count: u64,
}

impl Range {
    pub fn end(&self) -> u64 {
        self.sector + self.count
    }
}

impl fmt::Display for Range {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.count == 1 {
            write!(f, "{}", self.sector)
        } else {
            write!(f, "{}+{}", self.sector, self.count)
        }
    }
}

/// Render a list as `[8192, 12288+8]`.
pub fn show(ranges: &[Range]) -> String {
    format!(
        "[{}]",
        ranges
            .iter()
            .map(Range::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    )
}

/// Parse a sysfs `badblocks` file.
pub fn parse_sysfs(text: &str) -> Result<Vec<Range>, Unreadable> {
    let mut out = Vec::new();
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let mut w = line.split_whitespace();
        let (Some(s), Some(c), None) = (w.next(), w.next(), w.next()) else {
            return Err(Unreadable::new(
                "a badblocks line",
                "not `SECTOR COUNT`",
                line,
            ));
        };
        let parse = |x: &str| {
            x.parse::<u64>().map_err(|_| {
                Unreadable::new("a badblocks line", format!("{x} is not a number"), line)
            })
        };
        out.push(Range {
            sector: parse(s)?,
            count: parse(c)?,
        });
    }
    Ok(normalize(out))
}

/// The `badblocks` array of an ndctl JSON object (absent: none).
pub fn parse_ndctl(obj: &Value) -> Result<Vec<Range>, Unreadable> {
    let Some(list) = obj.get("badblocks") else {
        return Ok(Vec::new());
    };
    let list = list
        .as_array()
        .ok_or_else(|| Unreadable::new("ndctl's badblocks", "not an array", list.to_string()))?;
    let mut out = Vec::new();
    for e in list {
        let num = |k: &str| {
            e.get(k).and_then(Value::as_u64).ok_or_else(|| {
                Unreadable::new(
                    "ndctl's badblocks",
                    format!("an entry without {k}"),
                    e.to_string(),
                )
            })
        };
        out.push(Range {
            sector: num("offset")?,
            count: num("length")?,
        });
    }
    Ok(normalize(out))
}

/// Sorted, with overlapping and touching ranges merged: two lists of the
/// same bad sectors compare equal however the kernel split them.
pub fn normalize(mut ranges: Vec<Range>) -> Vec<Range> {
    ranges.retain(|r| r.count > 0);
    ranges.sort();
    let mut out: Vec<Range> = Vec::new();
    for r in ranges {
        match out.last_mut() {
            Some(last) if r.sector <= last.end() => {
                let end = last.end().max(r.end());
                last.count = end - last.sector;
            }
            _ => out.push(r),
        }
    }
    out
}

/// The part of `ranges` inside `[first, first + count)`, renumbered from
/// `first`: how a region's list looks from a namespace that starts at sector
/// `first` of the region.
pub fn window(ranges: &[Range], first: u64, count: u64) -> Vec<Range> {
    let end = first + count;
    normalize(
        ranges
            .iter()
            .filter_map(|r| {
                let s = r.sector.max(first);
                let e = r.end().min(end);
                (s < e).then(|| Range {
                    sector: s - first,
                    count: e - s,
                })
            })
            .collect(),
    )
}

/// Is every sector of `want` in `have`?
pub fn covers(have: &[Range], want: &[Range]) -> bool {
    want.iter().all(|w| {
        let mut at = w.sector;
        for h in normalize(have.to_vec()) {
            if h.sector <= at && at < h.end() {
                at = h.end();
            }
            if at >= w.end() {
                return true;
            }
        }
        at >= w.end()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn r(sector: u64, count: u64) -> Range {
        Range { sector, count }
    }

    #[test]
    fn parses_sysfs_and_ndctl_forms_alike() {
        let sysfs = parse_sysfs("20480 1\n8 8\n").unwrap();
        let ndctl = parse_ndctl(
            &json!({"badblocks": [{"offset": 8, "length": 8, "dimms": ["nmem0"]},
            {"offset": 20480, "length": 1}]}),
        )
        .unwrap();
        assert_eq!(sysfs, [r(8, 8), r(20480, 1)]);
        assert_eq!(sysfs, ndctl);
        assert!(parse_sysfs("").unwrap().is_empty());
        assert!(parse_ndctl(&json!({"dev": "region0"})).unwrap().is_empty());
        assert!(parse_sysfs("12\n").is_err());
    }

    #[test]
    fn normalizing_merges_adjacent_and_overlapping() {
        assert_eq!(
            normalize(vec![r(10, 2), r(8, 2), r(11, 4), r(30, 1)]),
            [r(8, 7), r(30, 1)]
        );
    }

    #[test]
    fn windows_clip_and_renumber() {
        let region = [r(100, 1), r(2040, 16), r(5000, 1)];
        // A namespace whose data covers region sectors 2048..4096.
        assert_eq!(window(&region, 2048, 2048), [r(0, 8)]);
        assert_eq!(window(&region, 0, 101), [r(100, 1)]);
        assert!(window(&region, 3000, 100).is_empty());
    }

    #[test]
    fn covering_is_per_sector() {
        let have = [r(8, 8), r(16, 1)];
        assert!(covers(&have, &[r(8, 9)]));
        assert!(covers(&have, &[r(10, 1), r(16, 1)]));
        assert!(!covers(&have, &[r(7, 2)]));
        assert!(!covers(&have, &[r(17, 1)]));
        assert!(covers(&have, &[]));
    }

    #[test]
    fn shows_compactly() {
        assert_eq!(show(&[r(8, 1), r(16, 8)]), "[8, 16+8]");
    }
}
