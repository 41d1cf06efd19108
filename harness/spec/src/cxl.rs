//! CXL poison in the kernel's terms: the `cxl_poison` trace event the
//! kernel emits for every poison record it reads, injects or clears
//! (drivers/cxl/core/trace.h), and the DPA -> HPA translation of a region,
//! which the lab does itself to check the kernel's.

use crate::unreadable::Unreadable;
use std::fmt;

/// Poison records are in units of 64 bytes (CXL 3.0 8.2.9.8.4.1,
/// `CXL_POISON_LEN_MULT`); QEMU's `cxl-inject-poison` wants multiples too.
pub const LINE: u64 = 64;

/// Why a record is in the list (`source=` of the event).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
pub enum PoisonSource {
    Unknown,
    External,
    /// The device found it (QEMU's QMP `cxl-inject-poison` reports this).
    Internal,
    /// Put there by the Inject Poison command (debugfs `inject_poison`).
    Injected,
    Vendor,
}

impl PoisonSource {
    fn parse(s: &str) -> Option<PoisonSource> {
        Some(match s {
            "Unknown" => PoisonSource::Unknown,
            "External" => PoisonSource::External,
            "Internal" => PoisonSource::Internal,
            "Injected" => PoisonSource::Injected,
            "Vendor" => PoisonSource::Vendor,
            _ => return None,
        })
    }
}

/// What the kernel was doing when it emitted the event (`trace_type=`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TraceType {
    /// A record of the device's poison list (`trigger_poison_list`).
    List,
    Inject,
    Clear,
}

/// One `cxl_poison` event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoisonEvent {
    pub memdev: String,
    pub trace_type: TraceType,
    /// Empty when no region maps the DPA.
    pub region: String,
    /// `None` when no region maps the DPA (the kernel prints all ones).
    pub hpa: Option<u64>,
    pub dpa: u64,
    pub length: u64,
    pub source: PoisonSource,
}

impl fmt::Display for PoisonEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {:?} dpa={:#x} length={:#x} source={:?}",
            self.memdev, self.trace_type, self.dpa, self.length, self.source
        )?;
        match self.hpa {
            Some(h) => write!(f, " {} hpa={h:#x}", self.region),
            None => write!(f, " (no region)"),
        }
    }
}

/// The `cxl_poison` events in a trace buffer's text
/// (`/sys/kernel/tracing/trace`); other lines are skipped.
pub fn parse_trace(text: &str) -> Result<Vec<PoisonEvent>, Unreadable> {
    text.lines()
        .filter_map(|l| l.split_once("cxl_poison: ").map(|(_, rest)| rest))
        .map(parse_event)
        .collect()
}

fn parse_event(fields: &str) -> Result<PoisonEvent, Unreadable> {
    let bad = |why: String| Unreadable::new("a cxl_poison event", why, fields);
    let get = |key: &str| -> Result<&str, Unreadable> {
        fields
            .split_whitespace()
            .find_map(|w| w.strip_prefix(key)?.strip_prefix('='))
            .ok_or_else(|| bad(format!("no {key}=")))
    };
    let hex = |key: &str| -> Result<u64, Unreadable> {
        let v = get(key)?;
        u64::from_str_radix(v.trim_start_matches("0x"), 16)
            .map_err(|_| bad(format!("{key}={v} is not a hex number")))
    };
    let trace_type = match get("trace_type")? {
        "List" => TraceType::List,
        "Inject" => TraceType::Inject,
        "Clear" => TraceType::Clear,
        other => return Err(bad(format!("trace_type={other} is unknown"))),
    };
    let source = get("source")?;
    let hpa = hex("hpa")?;
    Ok(PoisonEvent {
        memdev: get("memdev")?.to_string(),
        trace_type,
        // `region=` may be empty: then the next word follows the `=`.
        region: get("region")
            .ok()
            .filter(|r| r.starts_with("region"))
            .unwrap_or_default()
            .to_string(),
        hpa: (hpa != u64::MAX).then_some(hpa),
        dpa: hex("dpa")?,
        length: hex("dpa_length")?,
        source: PoisonSource::parse(source)
            .ok_or_else(|| bad(format!("source={source} is unknown")))?,
    })
}

/// Where a device's capacity lands in host physical memory: the region and
/// the device's place in its interleave, read from sysfs
/// (/sys/bus/cxl/devices/regionN and the endpoint decoder).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RegionMap {
    /// The region's first host physical address (`regionN/resource`).
    pub start: u64,
    pub size: u64,
    /// `interleave_ways`: 1, 2, 4, 8 or 16 (the lab makes 1, 2, 4).
    pub ways: u64,
    /// `interleave_granularity` in bytes, a power of two from 256.
    pub granularity: u64,
    /// The device's position in the interleave (the region's `targetN`).
    pub position: u64,
    /// The endpoint decoder's first DPA (`dpa_resource`) and its size.
    pub dpa_start: u64,
    pub dpa_size: u64,
}

impl RegionMap {
    /// The host physical address of `dpa`, or `None` when the endpoint
    /// decoder does not map it. Modulo interleave (CXL 3.0 8.2.4.19.13):
    /// each `granularity` chunk of the device's range follows the chunks of
    /// the `ways - 1` other devices; the same arithmetic as the kernel's
    /// cxl_dpa_to_hpa() for power-of-two ways (drivers/cxl/core/region.c).
    pub fn hpa(&self, dpa: u64) -> Option<u64> {
        if dpa < self.dpa_start || dpa >= self.dpa_start + self.dpa_size {
            return None;
        }
        if !self.ways.is_power_of_two() || !self.granularity.is_power_of_two() {
            return None;
        }
        let off = dpa - self.dpa_start;
        let (g, w) = (self.granularity, self.ways);
        let chunk = off / g;
        Some(self.start + (chunk * w + self.position) * g + off % g)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Captured in the lab (QEMU 10.0.2, 6.12.117): QMP cxl-inject-poison
    /// at DPA 0x2000 of a device in a one-way region0, trigger_poison_list;
    /// then debugfs inject_poison at 0x4000 (its Inject event).
    const TRACE: &str = "\
# tracer: nop
#
      pmem-lab-agent-88      [000] .....     2.072983: cxl_poison: memdev=mem0 host=0000:0d:00.0 serial=1 trace_type=List region=region0 region_uuid=d0b97eb3-c13f-4652-80ca-e5f6e77702df hpa=0x110002000 dpa=0x2000 dpa_length=0x40 source=Internal flags= overflow_time=0
                  sh-98      [000] .....     2.099838: cxl_poison: memdev=mem0 host=0000:0d:00.0 serial=1 trace_type=Inject region= region_uuid=00000000-0000-0000-0000-000000000000 hpa=0xffffffffffffffff dpa=0x4000 dpa_length=0x40 source=Unknown flags= overflow_time=0
";

    #[test]
    fn trace_lines_become_events() {
        let ev = parse_trace(TRACE).unwrap();
        assert_eq!(ev.len(), 2);
        assert_eq!(
            ev[0],
            PoisonEvent {
                memdev: "mem0".into(),
                trace_type: TraceType::List,
                region: "region0".into(),
                hpa: Some(0x1_1000_2000),
                dpa: 0x2000,
                length: 0x40,
                source: PoisonSource::Internal,
            }
        );
        assert_eq!(ev[1].trace_type, TraceType::Inject);
        assert_eq!(ev[1].region, "");
        assert_eq!(ev[1].hpa, None);
        assert_eq!(ev[1].source, PoisonSource::Unknown);
    }

    #[test]
    fn a_broken_event_is_an_error_not_a_skip() {
        let e = parse_trace("x: cxl_poison: memdev=mem0 trace_type=List").unwrap_err();
        assert_eq!(e.why, "no source=", "{e}");
        let e = parse_trace(&TRACE.replace("source=Internal", "source=Weird")).unwrap_err();
        assert!(e.why.contains("source=Weird"), "{e}");
    }

    #[test]
    fn one_way_regions_add_the_offset() {
        let m = RegionMap {
            start: 0x2_9000_0000,
            size: 256 << 20,
            ways: 1,
            granularity: 256,
            position: 0,
            dpa_start: 0,
            dpa_size: 256 << 20,
        };
        assert_eq!(m.hpa(0x2000), Some(0x2_9000_2000));
        assert_eq!(m.hpa(0x2040 + 5), Some(0x2_9000_2045));
        assert_eq!(m.hpa(256 << 20), None);
    }

    #[test]
    fn two_way_interleave_alternates_granules() {
        let dev = |position| RegionMap {
            start: 0x1000_0000,
            size: 512 << 20,
            ways: 2,
            granularity: 256,
            position,
            dpa_start: 0,
            dpa_size: 256 << 20,
        };
        // Device 0 holds HPA granules 0, 2, 4...; device 1 granules 1, 3, 5...
        assert_eq!(dev(0).hpa(0), Some(0x1000_0000));
        assert_eq!(dev(1).hpa(0), Some(0x1000_0100));
        assert_eq!(dev(0).hpa(0x100), Some(0x1000_0200));
        assert_eq!(dev(1).hpa(0x1ff), Some(0x1000_03ff));
        // A DPA base above 0 (a decoder that does not start the device).
        let mut d = dev(1);
        d.dpa_start = 0x1000_0000;
        assert_eq!(d.hpa(0x1000_0100), Some(0x1000_0300));
        assert_eq!(d.hpa(0xfff), None);
    }
}
