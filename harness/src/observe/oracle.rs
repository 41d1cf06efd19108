//! The error-state oracle. After every step the lab takes an [`ErrorState`] of
//! what the guest says about media errors, keeps it in the case's artifacts
//! (`state.jsonl`), and checks the rules that hold whatever the case is
//! about:
//!
//! 1. each region's badblocks read the same through sysfs
//!    (`regionN/badblocks`) and through `ndctl list --media-errors`;
//! 2. each namespace's badblocks (ndctl's view, and the pmem block device's
//!    `badblocks` for raw and fsdax) equal its region's badblocks inside the
//!    namespace's data range, counted from the data start;
//! 3. the kernel logged no BUG, Oops, WARNING, panic or similar during the
//!    step, no ACPI interpreter error or warning (a fault in the lab's own
//!    ACPI table shows up this way), and no warning or error from the NFIT
//!    driver (e.g. "detected truncated ars results" from a malformed ARS
//!    status), unless the case's `allow_dmesg` covers the line;
//! 4. on a CXL machine, every record of every device's poison list (read
//!    through `trigger_poison_list` and its `cxl_poison` events) carries the
//!    host physical address the lab's own translation gives, or none where
//!    no region maps it.
//!
//! A violation fails the case with both sides printed.

use crate::address::Geometry;
use crate::badblocks::{self, Range, SECTOR};
use crate::guest::ndctl::json_list;
use crate::guest::setup::Layout;
use crate::guest::Guest;
use crate::guest::GuestError;
use pmem_lab_proto::KmsgRecord;
use pmem_lab_spec::cxl::PoisonEvent;
use regex::Regex;
use serde_json::{json, Value};
use std::fmt;

/// Kernel log text that means something went wrong in the kernel itself.
const KERNEL_TROUBLE: [&str; 9] = [
    "BUG:",
    "Oops",
    "WARNING:",
    "Kernel panic",
    "general protection fault",
    "kernel BUG at",
    "Call Trace:",
    "UBSAN:",
    "list_add corruption",
];

#[derive(Debug, Clone, PartialEq)]
pub struct RegionState {
    pub dev: String,
    pub sysfs: Vec<Range>,
    pub ndctl: Vec<Range>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct NamespaceState {
    /// The case's name.
    pub name: String,
    pub dev: String,
    pub ndctl: Vec<Range>,
    /// The pmem block device's badblocks (raw, fsdax); device-dax has none.
    pub sysfs: Option<Vec<Range>>,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct ErrorState {
    pub regions: Vec<RegionState>,
    pub namespaces: Vec<NamespaceState>,
    /// Kernel log records since the previous snapshot.
    pub kmsg: Vec<KmsgRecord>,
    /// What `ndctl list --media-errors` printed, for the artifacts.
    pub ndctl_json: Value,
    /// /proc/meminfo's HardwareCorrupted (kB): memory memory_failure()
    /// took out of use.
    pub hardware_corrupted_kb: Option<u64>,
    /// The page frames under the regions' badblocks that the kernel has
    /// marked HWPOISON (/proc/kpageflags bit 19): a badblock is the
    /// driver's record, the flag memory_failure()'s.
    pub hwpoison_pfns: Vec<u64>,
    /// Those /proc/kpageflags does not list: it ends at max_pfn and has no
    /// ZONE_DEVICE support (fs/proc/page.c, "TODO: ZONE_DEVICE support"),
    /// which is every NVDIMM page; the flag of those cannot be read.
    pub unlisted_pfns: usize,
    /// Per CXL device (machine.cxl order): its poison list now.
    pub cxl: Vec<Vec<PoisonEvent>>,
    /// CXL records whose HPA is not the lab's translation.
    pub cxl_hpa: Vec<String>,
}

/// KPF_HWPOISON, include/uapi/linux/kernel-page-flags.h.
pub const KPF_HWPOISON: u64 = 1 << 19;

/// The most page frames a snapshot looks at (badblocks can be long).
const MAX_PFNS: usize = 256;

/// The page frames under `ranges` of a region starting at `start`.
pub fn pfns_under(start: u64, ranges: &[Range]) -> Vec<u64> {
    let mut pfns: Vec<u64> = ranges
        .iter()
        .flat_map(|r| {
            let first = (start + r.sector * SECTOR) >> 12;
            let last = (start + (r.sector + r.count) * SECTOR - 1) >> 12;
            first..=last
        })
        .take(MAX_PFNS)
        .collect();
    pfns.sort_unstable();
    pfns.dedup();
    pfns
}

/// `HardwareCorrupted:     4 kB` in /proc/meminfo.
pub fn hardware_corrupted(meminfo: &str) -> Option<u64> {
    meminfo
        .lines()
        .find_map(|l| l.strip_prefix("HardwareCorrupted:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
}

impl ErrorState {
    pub fn region(&self, index: usize) -> Option<&RegionState> {
        self.regions.get(index)
    }

    pub fn namespace(&self, name: &str) -> Option<&NamespaceState> {
        self.namespaces.iter().find(|n| n.name == name)
    }

    pub fn to_json(&self, step: &str) -> Value {
        let show = |r: &[Range]| badblocks::show(r);
        json!({
            "after": step,
            "regions": self.regions.iter().map(|r| json!({
                "dev": r.dev, "sysfs": show(&r.sysfs), "ndctl": show(&r.ndctl)})).collect::<Vec<_>>(),
            "namespaces": self.namespaces.iter().map(|n| json!({
                "name": n.name, "dev": n.dev, "ndctl": show(&n.ndctl),
                "sysfs": n.sysfs.as_deref().map(show)})).collect::<Vec<_>>(),
            "dmesg": self.kmsg.iter().map(KmsgRecord::render).collect::<Vec<_>>(),
            "hardware_corrupted_kb": self.hardware_corrupted_kb,
            "hwpoison_pfns": self.hwpoison_pfns.iter().map(|p| format!("{p:#x}")).collect::<Vec<_>>(),
            "unlisted_pfns": self.unlisted_pfns,
            "cxl_poison": self.cxl.iter().map(|list| list.iter().map(|e| json!({
                "memdev": e.memdev, "dpa": format!("{:#x}", e.dpa), "length": e.length,
                "source": format!("{:?}", e.source), "region": e.region,
                "hpa": e.hpa.map(|h| format!("{h:#x}"))})).collect::<Vec<_>>()).collect::<Vec<_>>(),
            "ndctl": self.ndctl_json,
        })
    }
}

impl ErrorState {
    /// What two guests in the same state must agree on: every view of the
    /// error state, as [`ErrorState::to_json`] has them, without the kernel
    /// log (its timestamps and timing-dependent lines differ from boot to
    /// boot; the kernel-log rule itself is checked on every observation)
    /// and without namespace UUIDs (`ndctl create-namespace` draws them at
    /// random on every cold boot).
    pub fn equivalence_view(&self) -> Value {
        let mut v = self.to_json("setup");
        if let Some(o) = v.as_object_mut() {
            o.remove("after");
            o.remove("dmesg");
        }
        strip_keys(&mut v, &["uuid", "raw_uuid"]);
        v
    }
}

fn strip_keys(v: &mut Value, keys: &[&str]) {
    match v {
        Value::Object(o) => {
            for k in keys {
                o.remove(*k);
            }
            o.values_mut().for_each(|v| strip_keys(v, keys));
        }
        Value::Array(a) => a.iter_mut().for_each(|v| strip_keys(v, keys)),
        _ => {}
    }
}

/// Where two equivalence views differ, one line per differing field, or
/// `None` when they are equal.
pub fn view_difference(cold: &Value, other: &Value) -> Option<String> {
    if cold == other {
        return None;
    }
    let empty = serde_json::Map::new();
    let (a, b) = (
        cold.as_object().unwrap_or(&empty),
        other.as_object().unwrap_or(&empty),
    );
    let mut keys: Vec<&String> = a.keys().chain(b.keys()).collect();
    keys.sort();
    keys.dedup();
    let cut = |v: Option<&Value>| {
        let s = v
            .map(|v| v.to_string())
            .unwrap_or_else(|| "(absent)".into());
        if s.len() > 600 {
            format!("{}…", &s[..s.floor_char_boundary(600)])
        } else {
            s
        }
    };
    let lines: Vec<String> = keys
        .into_iter()
        .filter(|k| a.get(*k) != b.get(*k))
        .map(|k| format!("  {k}: cold {} / other {}", cut(a.get(k)), cut(b.get(k))))
        .collect();
    Some(if lines.is_empty() {
        format!("  cold {cold} / other {other}")
    } else {
        lines.join("\n")
    })
}

/// Read the error state. `after_seq`: the last kernel log record already
/// seen (from the previous snapshot).
pub fn take(
    guest: &mut Guest,
    layout: &Layout,
    after_seq: Option<u64>,
) -> Result<ErrorState, GuestError> {
    let mut snap = ErrorState {
        kmsg: guest.kmsg(after_seq)?,
        ..Default::default()
    };
    cxl_state(guest, layout, &mut snap)?;
    if layout.regions.is_empty() {
        return Ok(snap);
    }
    let listed = guest.ok(&[
        "ndctl",
        "list",
        "--regions",
        "--namespaces",
        "--media-errors",
    ])?;
    let top: Value = Value::Array(json_list(&listed.stdout)?);
    let mut regions_json = Vec::new();
    collect_regions(&top, &mut regions_json);
    snap.ndctl_json = top;
    let mut paths: Vec<String> = layout
        .regions
        .iter()
        .map(|r| format!("/sys/bus/nd/devices/{r}/badblocks"))
        .collect();
    let blocks: Vec<(String, String)> = layout
        .namespaces
        .iter()
        .filter(|(_, info)| info.mode.block_view())
        .filter_map(|(name, info)| info.blockdev.as_ref().map(|b| (name.clone(), b.clone())))
        .collect();
    paths.extend(
        blocks
            .iter()
            .map(|(_, b)| format!("/sys/block/{b}/badblocks")),
    );
    // In the same round trip: HardwareCorrupted.
    paths.push(MEMINFO.to_string());
    let mut files = guest.read_all(&paths)?;
    snap.hardware_corrupted_kb = files.pop().as_deref().and_then(hardware_corrupted);
    for (region, text) in layout.regions.iter().zip(&files) {
        let obj = regions_json.iter().find(|r| r["dev"] == region.as_str());
        snap.regions.push(RegionState {
            dev: region.clone(),
            sysfs: badblocks::parse_sysfs(text)?,
            ndctl: obj
                .map(badblocks::parse_ndctl)
                .transpose()?
                .unwrap_or_default(),
        });
    }
    // One file per path asked (Guest::read_files checks the count).
    let block_files = &files[layout.regions.len()..];
    snap.namespaces = namespace_states(layout, &regions_json, &blocks, block_files)?;
    poison_flags(guest, layout, &mut snap)?;
    Ok(snap)
}

/// Each CXL device's poison list, and where its HPAs disagree with the
/// region's decoders.
fn cxl_state(guest: &mut Guest, layout: &Layout, snap: &mut ErrorState) -> Result<(), GuestError> {
    for (device, memdev) in layout.cxl.memdevs.iter().enumerate() {
        let list = crate::guest::cxl::poison_list(guest, memdev)?;
        snap.cxl_hpa.extend(crate::guest::cxl::hpa_violations(
            device,
            &list,
            &layout.cxl,
        ));
        snap.cxl.push(list);
    }
    Ok(())
}

/// Each namespace's media errors as ndctl lists them (in `regions_json`)
/// and, for those with a block device (`blocks`: name and device, whose
/// badblocks files are `block_files` in that order), as sysfs does.
fn namespace_states(
    layout: &Layout,
    regions_json: &[Value],
    blocks: &[(String, String)],
    block_files: &[String],
) -> Result<Vec<NamespaceState>, GuestError> {
    let mut out = Vec::new();
    for (name, info) in &layout.namespaces {
        let obj = regions_json
            .iter()
            .filter_map(|r| r.get("namespaces").and_then(Value::as_array))
            .flatten()
            .find(|n| n["dev"] == info.dev.as_str());
        let sysfs = match blocks.iter().position(|(n, _)| n == name) {
            Some(i) => Some(badblocks::parse_sysfs(&block_files[i])?),
            None => None,
        };
        out.push(NamespaceState {
            name: name.clone(),
            dev: info.dev.clone(),
            ndctl: obj
                .map(badblocks::parse_ndctl)
                .transpose()?
                .unwrap_or_default(),
            sysfs,
        });
    }
    Ok(out)
}

const MEMINFO: &str = "/proc/meminfo";

/// The HWPOISON flag of the pages under badblocks.
fn poison_flags(
    guest: &mut Guest,
    layout: &Layout,
    snap: &mut ErrorState,
) -> Result<(), GuestError> {
    let mut pfns = Vec::new();
    for (i, r) in snap.regions.iter().enumerate() {
        if let Ok(g) = layout.geometry.region(i) {
            pfns.extend(pfns_under(g.start, &r.sysfs));
        }
    }
    pfns.truncate(MAX_PFNS);
    if pfns.is_empty() {
        return Ok(());
    }
    let flags = guest.page_flags(&pfns)?;
    snap.unlisted_pfns = flags.iter().filter(|f| f.is_none()).count();
    snap.hwpoison_pfns = pfns
        .into_iter()
        .zip(flags)
        .filter(|(_, f)| f.is_some_and(|f| f & KPF_HWPOISON != 0))
        .map(|(p, _)| p)
        .collect();
    Ok(())
}

/// Every region object in ndctl's listing, however ndctl nested it: a bare
/// object, `{"regions": [...]}`, or per bus when there are several buses.
fn collect_regions(v: &Value, out: &mut Vec<Value>) {
    match v {
        Value::Array(items) => items.iter().for_each(|i| collect_regions(i, out)),
        Value::Object(map) => {
            if map
                .get("dev")
                .and_then(Value::as_str)
                .is_some_and(|d| d.starts_with("region"))
            {
                out.push(v.clone());
            } else {
                map.values().for_each(|i| collect_regions(i, out));
            }
        }
        _ => {}
    }
}

/// What the namespace's badblocks must be, given its region's.
pub fn expected_namespace_view(
    geometry: &Geometry,
    snap: &ErrorState,
    name: &str,
) -> Option<Vec<Range>> {
    let ns = geometry.namespace(name).ok()?;
    // A BTT's LBAs go through its map: no shifted view to expect.
    if ns.mode == crate::namespace::NamespaceMode::Sector {
        return None;
    }
    let region_geom = geometry.region(ns.region).ok()?;
    let region = snap.region(ns.region)?;
    Some(badblocks::window(
        &region.sysfs,
        ns.data_first_sector(region_geom),
        ns.data_size / SECTOR,
    ))
}

/// Every broken rule, one message each, with both sides.
/// An invariant the error state broke.
#[derive(Debug, Clone, PartialEq)]
pub enum Violation {
    /// A region's sysfs and ndctl badblocks differ.
    RegionViews {
        region: String,
        sysfs: Vec<Range>,
        ndctl: Vec<Range>,
    },
    /// ndctl's namespace badblocks are not the region's, shifted.
    NamespaceNdctl {
        dev: String,
        name: String,
        ndctl: Vec<Range>,
        region: String,
        region_sysfs: Vec<Range>,
        want: Vec<Range>,
    },
    /// The block device's badblocks are not the region's, shifted.
    NamespaceBlock {
        dev: String,
        name: String,
        sysfs: Vec<Range>,
        want: Vec<Range>,
    },
    /// A CXL poison record's HPA is not the lab's translation.
    CxlAddress(String),
    /// A kernel log line that means trouble (the rendered record).
    KernelLog(String),
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let show = badblocks::show;
        match self {
            Violation::RegionViews { region, sysfs, ndctl } => write!(
                f,
                "{region}: sysfs badblocks {} but ndctl list --media-errors {}",
                show(sysfs),
                show(ndctl)
            ),
            Violation::NamespaceNdctl { dev, name, ndctl, region, region_sysfs, want } => write!(
                f,
                "{dev} (`{name}`): ndctl lists badblocks {} but its region {region} has {} there, which is {} from the data start",
                show(ndctl),
                show(region_sysfs),
                show(want)
            ),
            Violation::NamespaceBlock { dev, name, sysfs, want } => write!(
                f,
                "{dev} (`{name}`): block device badblocks {} but its region's view gives {}",
                show(sysfs),
                show(want)
            ),
            Violation::CxlAddress(m) => write!(f, "CXL poison list: {m}"),
            Violation::KernelLog(line) => write!(f, "kernel log: {line}"),
        }
    }
}

/// The invariants `snap` breaks. `allow` tolerates kernel log lines
/// (`allow_dmesg`), `allow_views` view violations (`allow_oracle`) by their
/// rendered message.
pub fn violations(
    geometry: &Geometry,
    snap: &ErrorState,
    allow: &[Regex],
    allow_views: &[Regex],
) -> Vec<Violation> {
    let mut out = Vec::new();
    for r in &snap.regions {
        if r.sysfs != r.ndctl {
            out.push(Violation::RegionViews {
                region: r.dev.clone(),
                sysfs: r.sysfs.clone(),
                ndctl: r.ndctl.clone(),
            });
        }
    }
    for n in &snap.namespaces {
        let Some(want) = expected_namespace_view(geometry, snap, &n.name) else {
            continue;
        };
        let region = &snap.regions[geometry.namespace(&n.name).map(|g| g.region).unwrap_or(0)];
        if n.ndctl != want {
            out.push(Violation::NamespaceNdctl {
                dev: n.dev.clone(),
                name: n.name.clone(),
                ndctl: n.ndctl.clone(),
                region: region.dev.clone(),
                region_sysfs: region.sysfs.clone(),
                want: want.clone(),
            });
        }
        if let Some(sysfs) = &n.sysfs {
            if *sysfs != want {
                out.push(Violation::NamespaceBlock {
                    dev: n.dev.clone(),
                    name: n.name.clone(),
                    sysfs: sysfs.clone(),
                    want: want.clone(),
                });
            }
        }
    }
    out.extend(snap.cxl_hpa.iter().cloned().map(Violation::CxlAddress));
    out.retain(|v| {
        let shown = v.to_string();
        !allow_views.iter().any(|a| a.is_match(&shown))
    });
    out.extend(
        kernel_trouble(&snap.kmsg, allow)
            .into_iter()
            .map(Violation::KernelLog),
    );
    out
}

/// ACPICA's own messages ("ACPI Error: Aborting method ...", "ACPI BIOS
/// Error (bug): ..."), at any level.
const ACPI_TROUBLE: [&str; 3] = ["ACPI Error", "ACPI Warning", "ACPI BIOS "];

/// The NFIT driver's device prefix: at warning level or worse (printk level
/// 4 or lower), its messages mean the firmware interface misbehaved.
const NFIT_DEVICE: &str = "nfit ACPI0012:";

fn is_trouble(r: &KmsgRecord) -> bool {
    KERNEL_TROUBLE.iter().any(|m| r.text.contains(m))
        || ACPI_TROUBLE.iter().any(|m| r.text.starts_with(m))
        || (r.level <= 4 && r.text.starts_with(NFIT_DEVICE))
}

/// Log lines that mean kernel trouble and are not allowed by the case.
pub fn kernel_trouble(records: &[KmsgRecord], allow: &[Regex]) -> Vec<String> {
    records
        .iter()
        .filter(|r| is_trouble(r))
        .filter(|r| !allow.iter().any(|a| a.is_match(&r.text)))
        .map(KmsgRecord::render)
        .collect()
}

/// A one-region machine with an fsdax namespace whose data starts 2 MiB
/// in, and snapshots of it: for the oracle's tests and the checks'.
#[cfg(test)]
pub(crate) mod fixtures {
    use super::*;
    use crate::address::{NamespaceGeometry, RegionGeometry};
    use crate::case::NamespaceMode;
    use crate::size::MIB;

    pub fn r(sector: u64, count: u64) -> Range {
        Range { sector, count }
    }

    pub fn geometry() -> Geometry {
        let start = 0x1_0000_0000;
        Geometry {
            regions: vec![RegionGeometry {
                dev: "region0".into(),
                start,
                size: 1022 * MIB,
            }],
            namespaces: vec![NamespaceGeometry {
                name: "fs".into(),
                region: 0,
                mode: NamespaceMode::Fsdax,
                start,
                size: 512 * MIB,
                data_start: start + 2 * MIB,
                data_size: 510 * MIB,
            }],
        }
    }

    pub fn snapshot(region: Vec<Range>, ns_ndctl: Vec<Range>, ns_sysfs: Vec<Range>) -> ErrorState {
        ErrorState {
            regions: vec![RegionState {
                dev: "region0".into(),
                sysfs: region.clone(),
                ndctl: region,
            }],
            namespaces: vec![NamespaceState {
                name: "fs".into(),
                dev: "namespace0.0".into(),
                ndctl: ns_ndctl,
                sysfs: Some(ns_sysfs),
            }],
            kmsg: Vec::new(),
            ndctl_json: Value::Null,
            ..Default::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::fixtures::{geometry, r, snapshot};
    use super::*;

    #[test]
    fn pages_under_badblocks_and_hardware_corrupted() {
        let r = |sector, count| Range { sector, count };
        // Region at 4G: sector 8 is the second page; 15..17 crosses into
        // the third.
        assert_eq!(
            pfns_under(0x1_0000_0000, &[r(8, 1), r(15, 2)]),
            [0x10_0001, 0x10_0002]
        );
        assert_eq!(pfns_under(0x1_0000_0000, &[r(0, 1 << 20)]).len(), MAX_PFNS);
        let meminfo = "MemTotal:        2030000 kB\nHardwareCorrupted:     4 kB\n";
        assert_eq!(hardware_corrupted(meminfo), Some(4));
        assert_eq!(hardware_corrupted("MemTotal: 1 kB\n"), None);
    }

    #[test]
    fn regions_are_found_however_ndctl_nests_them() {
        let one = json!([{"dev": "region0"}]);
        let wrapped = json!([{"regions": [{"dev": "region0", "namespaces": [{"dev": "namespace0.0"}]}, {"dev": "region1"}]}]);
        let buses = json!([{"provider": "nfit_test.0", "regions": [{"dev": "region1"}]}, {"provider": "ACPI.NFIT", "regions": [{"dev": "region0"}]}]);
        for (v, n) in [(one, 1), (wrapped, 2), (buses, 2)] {
            let mut out = Vec::new();
            collect_regions(&v, &mut out);
            assert_eq!(out.len(), n, "{v}");
        }
    }

    #[test]
    fn a_consistent_state_passes() {
        // Region sector 4096+8 is 2M (sector 4096) past the region start,
        // so sector 8 of the namespace data; sector 10 is metadata.
        let snap = snapshot(vec![r(10, 1), r(4104, 1)], vec![r(8, 1)], vec![r(8, 1)]);
        assert!(violations(&geometry(), &snap, &[], &[]).is_empty());
    }

    #[test]
    fn clear_reported_but_badblocks_remaining_is_caught() {
        // The namespace claims clean while the region still has the error.
        let snap = snapshot(vec![r(4104, 1)], vec![], vec![]);
        let v: Vec<String> = violations(&geometry(), &snap, &[], &[])
            .iter()
            .map(|v| v.to_string())
            .collect();
        assert_eq!(v.len(), 2, "{v:?}");
        assert!(
            v[0].contains("ndctl lists badblocks [] but its region region0 has [4104]"),
            "{}",
            v[0]
        );
        assert!(
            v[0].contains("which is [8] from the data start"),
            "{}",
            v[0]
        );
        assert!(
            v[1].contains("block device badblocks [] but its region's view gives [8]"),
            "{}",
            v[1]
        );
    }

    #[test]
    fn a_case_may_allow_a_view_violation_by_its_message_only() {
        // The block device lists sector 8, the region nothing.
        let snap = snapshot(vec![], vec![], vec![r(8, 1)]);
        assert_eq!(violations(&geometry(), &snap, &[], &[]).len(), 1);
        let allow = [Regex::new("block device badblocks \\[8\\]").unwrap()];
        assert!(violations(&geometry(), &snap, &[], &allow).is_empty());
        // It does not hide another view's problem.
        let other = snapshot(vec![r(4104, 1)], vec![], vec![r(8, 1)]);
        assert_eq!(violations(&geometry(), &other, &[], &allow).len(), 1);
    }

    #[test]
    fn sysfs_and_ndctl_must_agree_on_regions() {
        let mut snap = snapshot(vec![], vec![], vec![]);
        snap.regions[0].ndctl = vec![r(1, 1)];
        let v: Vec<String> = violations(&geometry(), &snap, &[], &[])
            .iter()
            .map(|v| v.to_string())
            .collect();
        assert_eq!(
            v,
            ["region0: sysfs badblocks [] but ndctl list --media-errors [1]"]
        );
    }

    #[test]
    fn kernel_warnings_fail_unless_allowed() {
        let mut snap = snapshot(vec![], vec![], vec![]);
        snap.kmsg = vec![
            KmsgRecord {
                seq: 1,
                level: 6,
                usec: 1,
                text: "Memory failure: 0x100a00: recovery action for dax page: Recovered".into(),
            },
            KmsgRecord {
                seq: 2,
                level: 4,
                usec: 2,
                text: "WARNING: CPU: 0 PID: 1 at drivers/acpi/nfit/core.c:3000".into(),
            },
        ];
        let v: Vec<String> = violations(&geometry(), &snap, &[], &[])
            .iter()
            .map(|v| v.to_string())
            .collect();
        assert_eq!(v.len(), 1);
        assert!(
            v[0].starts_with("kernel log: [    0.000002] WARNING: CPU: 0"),
            "{}",
            v[0]
        );
        let allow = [Regex::new("nfit/core.c").unwrap()];
        assert!(violations(&geometry(), &snap, &allow, &[]).is_empty());
    }

    #[test]
    fn acpi_errors_and_nfit_warnings_fail() {
        let rec = |level, text: &str| KmsgRecord {
            seq: 1,
            level,
            usec: 1,
            text: text.into(),
        };
        let log = [
            rec(4, "nfit ACPI0012:00: detected truncated ars results"),
            rec(3, "ACPI Error: Aborting method \\_SB.NVDR._DSM due to previous error (AE_AML_BUFFER_LIMIT)"),
            rec(6, "nfit ACPI0012:00: ARS: range 1 complete"),
            rec(6, "ACPI: Table Upgrade: install [SSDT-PMLAB - ROOTDSM]"),
        ];
        let bad = kernel_trouble(&log, &[]);
        assert_eq!(bad.len(), 2, "{bad:?}");
        assert!(bad[0].contains("truncated ars results"));
        assert!(bad[1].contains("AE_AML_BUFFER_LIMIT"));
    }
}
