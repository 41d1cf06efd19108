//! CXL in the guest: which memdev is which of the machine's devices, the
//! pmem regions setup makes and where they put each device's capacity, and
//! the poison list as the kernel reports it (`cxl_poison` trace events in a
//! tracing instance of the lab's own, so a case's own tracing is left as
//! it is).

use crate::case::step::{CxlPoisonCheck, ExpectedRecord};
use crate::case::CxlRegionSpec;
use crate::guest::error::{Absent, GuestError};
use crate::guest::ndctl::{json_list, sysfs_number};
use crate::guest::Guest;
use crate::template::CxlField;
use crate::unreadable::Unreadable;
use pmem_lab_spec::cxl::{parse_trace, PoisonEvent, RegionMap, TraceType, LINE};
use serde_json::Value;
use std::sync::atomic::{AtomicU64, Ordering};

/// The lab's tracing instance.
const INSTANCE: &str = "/sys/kernel/tracing/instances/pmem-lab";

/// What setup found and made.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct CxlLayout {
    /// Device index (machine.cxl) -> memdev (`mem0`).
    pub memdevs: Vec<String>,
    pub regions: Vec<CxlRegion>,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct CxlRegion {
    /// The CXL region (`region0` on the cxl bus).
    pub name: String,
    /// Its libnvdimm region on the CXL nvdimm bus (`region1`).
    pub nd_region: String,
    /// Per device index: where its capacity lands.
    pub maps: Vec<(usize, RegionMap)>,
}

impl CxlLayout {
    /// The region and host physical address of a device's DPA, if a region
    /// maps it.
    pub fn hpa(&self, device: usize, dpa: u64) -> Option<(&str, u64)> {
        self.regions.iter().find_map(|r| {
            r.maps
                .iter()
                .filter(|(d, _)| *d == device)
                .find_map(|(_, m)| m.hpa(dpa))
                .map(|h| (r.name.as_str(), h))
        })
    }

    /// The value of `${cxl.N.FIELD}`.
    pub fn lookup(&self, device: usize, field: CxlField) -> Result<String, GuestError> {
        let found = match field {
            CxlField::Memdev => self.memdevs.get(device).cloned(),
            CxlField::Region => self
                .regions
                .iter()
                .find(|r| r.maps.iter().any(|(d, _)| *d == device))
                .map(|r| r.name.clone()),
        };
        found.ok_or_else(|| {
            GuestError::Missing(
                Absent::CxlDevice,
                format!("CXL device {device} has no {} in the guest", field.name()),
            )
        })
    }

    fn device_of(&self, memdev: &str) -> Option<usize> {
        self.memdevs.iter().position(|m| m == memdev)
    }
}

/// Find the machine's devices (QEMU gives device `i` serial `i + 1`) and
/// make the case's regions.
pub fn setup(
    guest: &mut Guest,
    devices: usize,
    regions: &[CxlRegionSpec],
) -> Result<CxlLayout, GuestError> {
    let listed = json_list(&guest.ok(&["cxl", "list", "--memdevs"])?.stdout)?;
    let memdevs = memdevs_by_serial(&listed, devices)?;
    let mut layout = CxlLayout {
        memdevs,
        regions: Vec::new(),
    };
    if regions.is_empty() {
        return Ok(layout);
    }
    let decoders = json_list(
        &guest
            .ok(&["cxl", "list", "--decoders", "--decoder=root"])?
            .stdout,
    )?;
    let root = decoders
        .iter()
        .find(|d| d["pmem_capable"] == Value::Bool(true))
        .and_then(|d| d["decoder"].as_str())
        .ok_or_else(|| {
            GuestError::Missing(
                Absent::CxlDecoder,
                format!("no root decoder takes pmem: `cxl list -D -d root` gave {decoders:?}"),
            )
        })?
        .to_string();
    for spec in regions {
        let mut argv: Vec<String> = [
            "cxl",
            "create-region",
            "--type=pmem",
            "--memdevs",
            "--decoder",
        ]
        .map(String::from)
        .to_vec();
        argv.push(root.clone());
        argv.push(format!("--ways={}", spec.devices.len()));
        argv.extend(spec.devices.iter().map(|d| layout.memdevs[*d].clone()));
        let created = guest.ok_json(&argv.iter().map(String::as_str).collect::<Vec<_>>())?;
        let name = created["region"]
            .as_str()
            .ok_or_else(|| {
                Unreadable::new(
                    "cxl create-region's output",
                    "no region",
                    created.to_string(),
                )
            })?
            .to_string();
        let maps = region_maps(guest, &name, &layout)?;
        let start = maps.first().map(|(_, m)| m.start).unwrap_or_default();
        let nd_region = nd_region_at(guest, start)?;
        layout.regions.push(CxlRegion {
            name,
            nd_region,
            maps,
        });
    }
    Ok(layout)
}

/// `cxl list --memdevs` entries in device order.
fn memdevs_by_serial(listed: &[Value], devices: usize) -> Result<Vec<String>, GuestError> {
    (0..devices)
        .map(|i| {
            listed
                .iter()
                .find(|m| m["serial"].as_u64() == Some(i as u64 + 1))
                .and_then(|m| m["memdev"].as_str())
                .map(str::to_string)
                .ok_or_else(|| {
                    GuestError::Missing(
                        Absent::CxlDevice,
                        format!(
                        "CXL device {i} (serial {}) is not among the guest's memdevs: {listed:?}",
                        i + 1
                    ),
                    )
                })
        })
        .collect()
}

/// Where a region puts each of its devices' capacity, from sysfs.
fn region_maps(
    guest: &mut Guest,
    region: &str,
    layout: &CxlLayout,
) -> Result<Vec<(usize, RegionMap)>, GuestError> {
    let dir = format!("/sys/bus/cxl/devices/{region}");
    let v = numbers(
        guest,
        &[
            "resource",
            "size",
            "interleave_ways",
            "interleave_granularity",
        ]
        .map(|a| format!("{dir}/{a}")),
    )?;
    let (start, size, ways, granularity) = (v[0], v[1], v[2], v[3]);
    let mut maps = Vec::new();
    for position in 0..ways {
        let decoder = guest
            .read_all(&[format!("{dir}/target{position}")])?
            .remove(0);
        let decoder = decoder.trim();
        let d = format!("/sys/bus/cxl/devices/{decoder}");
        let dpa = numbers(
            guest,
            &[format!("{d}/dpa_resource"), format!("{d}/dpa_size")],
        )?;
        // The endpoint port of the decoder names its memdev (`uport`).
        let port = decoder
            .split('.')
            .next()
            .unwrap_or_default()
            .replace("decoder", "endpoint");
        let uport = guest.ok(&["readlink", &format!("/sys/bus/cxl/devices/{port}/uport")])?;
        let memdev = uport
            .stdout
            .trim()
            .rsplit('/')
            .next()
            .unwrap_or_default()
            .to_string();
        let device = layout.device_of(&memdev).ok_or_else(|| {
            GuestError::Missing(
                Absent::CxlDevice,
                format!("{region} target{position} {decoder} is on {memdev}, not a lab device"),
            )
        })?;
        maps.push((
            device,
            RegionMap {
                start,
                size,
                ways,
                granularity,
                position,
                dpa_start: dpa[0],
                dpa_size: dpa[1],
            },
        ));
    }
    Ok(maps)
}

/// The libnvdimm region cxl_pmem made for a CXL region (same start).
fn nd_region_at(guest: &mut Guest, start: u64) -> Result<String, GuestError> {
    let listed = json_list(
        &guest
            .ok(&["ndctl", "list", "--regions", "--bus=CXL"])?
            .stdout,
    )?;
    let names: Vec<String> = listed
        .iter()
        .filter_map(|r| r["dev"].as_str().map(str::to_string))
        .collect();
    for name in &names {
        if numbers(guest, &[format!("/sys/bus/nd/devices/{name}/resource")])?[0] == start {
            return Ok(name.clone());
        }
    }
    Err(GuestError::Missing(
        Absent::Region,
        format!(
            "no libnvdimm region on the CXL bus starts at {start:#x} (found: {})",
            names.join(", ")
        ),
    ))
}

/// Sysfs numbers, in one round trip.
fn numbers(guest: &mut Guest, paths: &[String]) -> Result<Vec<u64>, GuestError> {
    let texts = guest.read_all(paths)?;
    Ok(paths
        .iter()
        .zip(&texts)
        .map(|(p, t)| sysfs_number(t, p))
        .collect::<Result<_, _>>()?)
}

/// The device's poison list as the kernel reads it now: trigger the list
/// and collect its `cxl_poison` events. The lab cannot empty the buffer
/// (that takes an open with O_TRUNC, which the agent's writes do not do), so
/// it writes a marker first and reads what follows it.
pub fn poison_list(guest: &mut Guest, memdev: &str) -> Result<Vec<PoisonEvent>, GuestError> {
    let enable = format!("{INSTANCE}/events/cxl/cxl_poison/enable");
    if guest.read_files(std::slice::from_ref(&enable))?[0].is_err() {
        guest.ok(&["mkdir", "-p", INSTANCE])?;
        guest.write_file(&enable, "1")?;
    }
    let marker = format!(
        "pmem-lab poison list {memdev} {}",
        MARKS.fetch_add(1, Ordering::Relaxed)
    );
    guest.write_file(&format!("{INSTANCE}/trace_marker"), &marker)?;
    guest.write_file(
        &format!("/sys/bus/cxl/devices/{memdev}/trigger_poison_list"),
        "1",
    )?;
    let text = guest.read_all(&[format!("{INSTANCE}/trace")])?.remove(0);
    let after = after_marker(&text, &marker).ok_or_else(|| {
        GuestError::Missing(
            Absent::TraceMarker,
            format!("the trace of {INSTANCE} lost the lab's marker `{marker}` (buffer overrun?)"),
        )
    })?;
    Ok(parse_trace(after)?
        .into_iter()
        .filter(|e| e.memdev == memdev && e.trace_type == TraceType::List)
        .collect())
}

static MARKS: AtomicU64 = AtomicU64::new(0);

/// The trace text after the line holding `marker`.
fn after_marker<'t>(text: &'t str, marker: &str) -> Option<&'t str> {
    let at = text.rfind(marker)?;
    Some(text[at..].split_once('\n').map_or("", |(_, rest)| rest))
}

/// The host physical lines of every listed record that a region maps
/// (`lists` in device order).
pub fn lines_of(lists: &[Vec<PoisonEvent>], layout: &CxlLayout) -> Vec<u64> {
    let mut lines: Vec<u64> = lists
        .iter()
        .enumerate()
        .flat_map(|(device, list)| {
            list.iter().flat_map(move |e| {
                (e.dpa..e.dpa + e.length)
                    .step_by(LINE as usize)
                    .filter_map(move |dpa| layout.hpa(device, dpa).map(|(_, h)| h))
            })
        })
        .collect();
    lines.sort_unstable();
    lines.dedup();
    lines
}

/// Problems with a device's poison list: records missing or extra against
/// `want`, and host addresses that are not the lab's translation.
pub fn check_list(want: &CxlPoisonCheck, got: &[PoisonEvent], layout: &CxlLayout) -> Vec<String> {
    let matches = |w: &ExpectedRecord, e: &PoisonEvent| {
        w.dpa == e.dpa && w.length == e.length && w.source.is_none_or(|s| s == e.source)
    };
    let mut problems = Vec::new();
    for w in &want.records {
        if !got.iter().any(|e| matches(w, e)) {
            problems.push(format!(
                "poison list of device {} lacks DPA {:#x} length {:#x}{}; it lists: {}",
                want.device,
                w.dpa,
                w.length,
                w.source
                    .map(|s| format!(" source {s:?}"))
                    .unwrap_or_default(),
                show(got)
            ));
        }
    }
    for e in got {
        if !want.records.iter().any(|w| matches(w, e)) {
            problems.push(format!(
                "poison list of device {} has an unexpected record: {e}",
                want.device
            ));
        }
    }
    problems.extend(hpa_violations(want.device, got, layout));
    problems
}

/// Each record's host physical address must be the lab's translation of its
/// DPA (or absent where no region maps it): the kernel's cxl_dpa_to_hpa()
/// checked against the lab's own arithmetic on the region's sysfs values.
pub fn hpa_violations(device: usize, got: &[PoisonEvent], layout: &CxlLayout) -> Vec<String> {
    got.iter()
        .filter_map(|e| {
            let lab = layout.hpa(device, e.dpa);
            let kernel = e.hpa.map(|h| (e.region.as_str(), h));
            (lab != kernel).then(|| {
                format!(
                    "device {device} DPA {:#x}: the kernel says {}, the lab's translation {}",
                    e.dpa,
                    place(kernel),
                    place(lab)
                )
            })
        })
        .collect()
}

fn place(p: Option<(&str, u64)>) -> String {
    match p {
        Some((region, hpa)) => format!("{region} HPA {hpa:#x}"),
        None => "no region".to_string(),
    }
}

fn show(events: &[PoisonEvent]) -> String {
    if events.is_empty() {
        return "nothing".to_string();
    }
    events
        .iter()
        .map(|e| e.to_string())
        .collect::<Vec<_>>()
        .join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use pmem_lab_spec::cxl::PoisonSource;
    use serde_json::json;

    fn layout() -> CxlLayout {
        CxlLayout {
            memdevs: vec!["mem1".into(), "mem0".into()],
            regions: vec![CxlRegion {
                name: "region0".into(),
                nd_region: "region1".into(),
                maps: vec![(
                    0,
                    RegionMap {
                        start: 0x2_9000_0000,
                        size: 256 << 20,
                        ways: 1,
                        granularity: 256,
                        position: 0,
                        dpa_start: 0,
                        dpa_size: 256 << 20,
                    },
                )],
            }],
        }
    }

    fn event(dpa: u64, hpa: Option<u64>) -> PoisonEvent {
        PoisonEvent {
            memdev: "mem1".into(),
            trace_type: TraceType::List,
            region: if hpa.is_some() {
                "region0".into()
            } else {
                String::new()
            },
            hpa,
            dpa,
            length: 64,
            source: PoisonSource::Internal,
        }
    }

    #[test]
    fn only_events_after_the_marker_count() {
        let text = "x: cxl_poison: old\n y: tracing_mark_write: pmem-lab poison list mem0 7\n z: cxl_poison: new\n";
        assert_eq!(
            after_marker(text, "pmem-lab poison list mem0 7"),
            Some(" z: cxl_poison: new\n")
        );
        assert_eq!(after_marker(text, "pmem-lab poison list mem0 8"), None);
    }

    #[test]
    fn listed_records_become_host_lines_where_a_region_maps_them() {
        let mut e = event(0x2000, None);
        e.length = 128;
        let far = event(512 << 20, None);
        assert_eq!(
            lines_of(&[vec![e, far]], &layout()),
            [0x2_9000_2000, 0x2_9000_2040]
        );
    }

    #[test]
    fn memdevs_are_matched_by_serial_not_by_name() {
        let listed = vec![
            json!({"memdev": "mem0", "serial": 2}),
            json!({"memdev": "mem1", "serial": 1}),
        ];
        assert_eq!(memdevs_by_serial(&listed, 2).unwrap(), ["mem1", "mem0"]);
        let e = memdevs_by_serial(&listed, 3).unwrap_err().to_string();
        assert!(e.contains("CXL device 2 (serial 3)"), "{e}");
    }

    #[test]
    fn the_list_must_match_and_its_addresses_must_be_the_labs() {
        let l = layout();
        let want = CxlPoisonCheck {
            device: 0,
            records: vec![ExpectedRecord {
                dpa: 0x2000,
                length: 64,
                source: Some(PoisonSource::Internal),
            }],
        };
        assert!(check_list(&want, &[event(0x2000, Some(0x2_9000_2000))], &l).is_empty());
        // The kernel's HPA off by a line: caught.
        let p = check_list(&want, &[event(0x2000, Some(0x2_9000_2040))], &l);
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(p[0].contains("the kernel says region0 HPA 0x290002040, the lab's translation region0 HPA 0x290002000"), "{p:?}");
        // Missing and unexpected records.
        let p = check_list(&want, &[event(0x4000, Some(0x2_9000_4000))], &l);
        assert_eq!(p.len(), 2, "{p:?}");
        assert!(p[0].contains("lacks DPA 0x2000"), "{p:?}");
        assert!(p[1].contains("unexpected record"), "{p:?}");
        // A DPA no region maps must come without an HPA.
        let no_region = CxlLayout {
            regions: vec![],
            ..l
        };
        assert!(hpa_violations(0, &[event(0x2000, None)], &no_region).is_empty());
        assert_eq!(
            hpa_violations(0, &[event(0x2000, Some(1))], &no_region).len(),
            1
        );
    }
}
