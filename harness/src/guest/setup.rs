//! Turn a case's `setup.namespaces` into real namespaces in the guest, and
//! remember what the kernel named them so steps can say `${ns.data.chardev}`.

use crate::address::{Geometry, NamespaceGeometry, RegionGeometry};
use crate::case::{Case, NamespaceMode, NamespaceSpec};
use crate::guest::error::{Absent, GuestError};
use crate::guest::ndctl::{json_list, sysfs_number as number};
use crate::guest::Guest;
use crate::namespace::Bus;
use crate::size::ByteSize;
use crate::template::{NsField, Ref};
use crate::unreadable::Unreadable;
use serde_json::Value;
use std::collections::BTreeMap;

/// What setup created for one case namespace.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct NamespaceInfo {
    /// What the kernel says it is now (a `reconfigure` step changes it).
    pub mode: NamespaceMode,
    pub dev: String,
    pub region: String,
    pub chardev: Option<String>,
    pub blockdev: Option<String>,
}

#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct Layout {
    /// QEMU NVDIMM index -> libnvdimm region, e.g. `region0`.
    pub regions: Vec<String>,
    pub namespaces: BTreeMap<String, NamespaceInfo>,
    /// Physical layout of the QEMU NVDIMM regions and the case namespaces.
    pub geometry: Geometry,
    /// The CXL devices and the regions setup made on them.
    pub cxl: crate::guest::cxl::CxlLayout,
}

impl Layout {
    /// The value of a placeholder (`${ns.NAME.FIELD}`, `${cxl.N.FIELD}`).
    pub fn lookup(&self, target: &Ref) -> Result<String, GuestError> {
        match target {
            Ref::Ns { name, field } => self.namespace_field(name, *field),
            Ref::Cxl { device, field } => self.cxl.lookup(*device, *field),
        }
    }

    fn namespace_field(&self, name: &str, field: NsField) -> Result<String, GuestError> {
        let ns = self.namespaces.get(name).ok_or_else(|| {
            GuestError::Missing(
                Absent::Namespace,
                format!("namespace `{name}` was not created"),
            )
        })?;
        let v = match field {
            NsField::Dev => Some(&ns.dev),
            NsField::Region => Some(&ns.region),
            NsField::Chardev => ns.chardev.as_ref(),
            NsField::Blockdev => ns.blockdev.as_ref(),
        };
        v.cloned().ok_or_else(|| {
            GuestError::Missing(
                Absent::Namespace,
                format!("namespace `{name}` ({}) has no {}", ns.dev, field.name()),
            )
        })
    }
}

/// Order regions by their physical start: QEMU places NVDIMMs in the order
/// their devices appear on the command line, so the n-th region by address
/// belongs to the n-th NVDIMM. Input: (region name, `resource` file text).
pub fn regions_by_address(found: &[(String, String)]) -> Result<Vec<String>, GuestError> {
    let mut parsed = found
        .iter()
        .map(|(name, res)| {
            let t = res.trim().trim_start_matches("0x");
            u64::from_str_radix(t, 16)
                .map(|addr| (addr, name.clone()))
                .map_err(|_| Unreadable::new(format!("{name}/resource"), "not an address", res))
        })
        .collect::<Result<Vec<_>, _>>()?;
    parsed.sort();
    Ok(parsed.into_iter().map(|(_, n)| n).collect())
}

/// Run `ndctl create-namespace` (a new one or `--reconfig`): its JSON.
fn create_namespace(guest: &mut Guest, argv: &[String]) -> Result<Value, GuestError> {
    guest.ok_json(&argv.iter().map(String::as_str).collect::<Vec<_>>())
}

/// What `ndctl create-namespace` printed, reduced to the names steps use.
pub fn namespace_info(created: &Value, region: &str) -> Result<NamespaceInfo, GuestError> {
    let unreadable =
        |why: String| Unreadable::new("create-namespace's output", why, created.to_string());
    let dev = created
        .get("dev")
        .and_then(Value::as_str)
        .ok_or_else(|| unreadable("no dev".into()))?;
    let chardev = created
        .pointer("/daxregion/devices/0/chardev")
        .and_then(Value::as_str)
        .map(str::to_string);
    let blockdev = created
        .get("blockdev")
        .and_then(Value::as_str)
        .map(str::to_string);
    let mode = match created.get("mode").and_then(Value::as_str) {
        Some("raw") => NamespaceMode::Raw,
        Some("fsdax") => NamespaceMode::Fsdax,
        Some("devdax") => NamespaceMode::Devdax,
        Some("sector") => NamespaceMode::Sector,
        other => return Err(unreadable(format!("mode {other:?}")).into()),
    };
    Ok(NamespaceInfo {
        mode,
        dev: dev.to_string(),
        region: region.to_string(),
        chardev,
        blockdev,
    })
}

/// Create the case's namespaces on the QEMU (ACPI.NFIT) NVDIMMs.
pub fn create_namespaces(guest: &mut Guest, case: &Case) -> Result<Layout, GuestError> {
    let mut layout = Layout::default();
    if !case.machine.nvdimms.is_empty() {
        layout.regions = qemu_regions(guest, case)?;
    }
    if !case.machine.cxl.is_empty() {
        layout.cxl = crate::guest::cxl::setup(guest, case.machine.cxl.len(), &case.cxl_regions)?;
    }
    // A fresh label area holds no index block: initialise it so
    // namespaces can be sized and named.
    if case.namespaces.iter().any(|n| n.bus.is_none()) {
        init_labels(guest, "ACPI.NFIT")?;
    }
    // nfit_test buses come up label-less, a raw namespace filling each
    // region, and label-less regions cannot be divided: a bus with a sized
    // namespace gets labels on all its DIMMs first (which empties it).
    let labeled: std::collections::BTreeSet<&str> = case
        .namespaces
        .iter()
        .filter(|n| !n.whole_region)
        .filter_map(|n| n.bus.as_deref())
        .collect();
    for bus in &labeled {
        init_labels(guest, bus)?;
    }
    let mut bus_regions: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for ns in &case.namespaces {
        let region = region_of(guest, ns, &mut layout, &mut bus_regions)?;
        let on_labeled_bus = ns.bus.as_deref().is_some_and(|b| labeled.contains(b));
        let info = if ns.whole_region && !on_labeled_bus {
            reconfigure_whole(guest, ns, &region)?
        } else {
            let created = create_namespace(guest, &create_namespace_argv(ns, &region))?;
            namespace_info(&created, &region)?
        };
        layout.namespaces.insert(ns.name.clone(), info);
    }
    layout.geometry = read_geometry(guest, case, &layout)?;
    Ok(layout)
}

/// Initialise the label areas of every DIMM on `bus` (its regions disabled
/// meanwhile).
fn init_labels(guest: &mut Guest, bus: &str) -> Result<(), GuestError> {
    let b = format!("--bus={bus}");
    for cmd in [
        &["ndctl", "disable-region", b.as_str(), "all"][..],
        &["ndctl", "init-labels", "--force", b.as_str(), "all"][..],
        &["ndctl", "enable-region", b.as_str(), "all"][..],
    ] {
        guest.ok(cmd)?;
    }
    Ok(())
}

/// The region a namespace goes on (its NVDIMM's, its CXL region's, or its
/// bus's by address order), added to the layout's regions.
fn region_of(
    guest: &mut Guest,
    ns: &NamespaceSpec,
    layout: &mut Layout,
    bus_regions: &mut BTreeMap<String, Vec<String>>,
) -> Result<String, GuestError> {
    let region = match &ns.bus {
        None => return Ok(layout.regions[ns.nvdimm].clone()),
        // The loader checked the index against setup.cxl_regions.
        Some(bus) if bus == Bus::Cxl.name() => layout.cxl.regions[ns.nvdimm].nd_region.clone(),
        Some(bus) => {
            if !bus_regions.contains_key(bus) {
                bus_regions.insert(bus.clone(), pmem_regions(guest, bus)?);
            }
            let regions = &bus_regions[bus];
            regions.get(ns.nvdimm).cloned().ok_or_else(|| {
                GuestError::Missing(
                    Absent::Region,
                    format!(
                        "{bus} has {} pmem region(s) ({}); namespace `{}` asks for region {}",
                        regions.len(),
                        regions.join(", "),
                        ns.name,
                        ns.nvdimm
                    ),
                )
            })?
        }
    };
    if !layout.regions.contains(&region) {
        layout.regions.push(region.clone());
    }
    Ok(region)
}

/// A label-less region's one namespace, made what the case asks; already
/// what it asks (nfit_test.1's read-only raw namespace cannot be
/// reconfigured at all), taken as it is.
fn reconfigure_whole(
    guest: &mut Guest,
    ns: &NamespaceSpec,
    region: &str,
) -> Result<NamespaceInfo, GuestError> {
    let listed = guest.ok(&[
        "ndctl",
        "list",
        "--namespaces",
        &format!("--region={region}"),
    ])?;
    let existing = json_list(&listed.stdout)?
        .into_iter()
        .next()
        .ok_or_else(|| {
            GuestError::Missing(
                Absent::Namespace,
                format!("{region} has no namespace to reconfigure for `{}`", ns.name),
            )
        })?;
    if existing["mode"] == ns.mode.ndctl_name() && ns.align.is_none() {
        return namespace_info(&existing, region);
    }
    let dev = existing["dev"].as_str().unwrap_or_default();
    let created = create_namespace(guest, &reconfigure_namespace_argv(ns, dev))?;
    namespace_info(&created, region)
}

/// QEMU's regions in NVDIMM order, with their alignment fixed up.
fn qemu_regions(guest: &mut Guest, case: &Case) -> Result<Vec<String>, GuestError> {
    let names = pmem_regions(guest, "ACPI.NFIT")?;
    if names.len() != case.machine.nvdimms.len() {
        return Err(GuestError::Missing(
            Absent::Region,
            format!(
                "the machine has {} NVDIMM(s) but the ACPI.NFIT bus shows {} pmem region(s): {}",
                case.machine.nvdimms.len(),
                names.len(),
                names.join(", ")
            ),
        ));
    }
    for name in &names {
        let resource = guest
            .read_all(&[format!("/sys/bus/nd/devices/{name}/resource")])?
            .remove(0);
        if let Some(align) = region_align_for(number(&resource, "region resource")?) {
            guest.write_file(
                &format!("/sys/bus/nd/devices/{name}/align"),
                &align.to_string(),
            )?;
        }
    }
    Ok(names)
}

/// A bus's pmem regions in address order.
fn pmem_regions(guest: &mut Guest, bus: &str) -> Result<Vec<String>, GuestError> {
    let listed = guest.ok(&[
        "ndctl",
        "list",
        "--regions",
        &format!("--bus={bus}"),
        "--type=pmem",
    ])?;
    let names: Vec<String> = json_list(&listed.stdout)?
        .iter()
        .filter_map(|r| r.get("dev").and_then(Value::as_str).map(str::to_string))
        .collect();
    let paths: Vec<String> = names
        .iter()
        .map(|n| format!("/sys/bus/nd/devices/{n}/resource"))
        .collect();
    let found: Vec<(String, String)> = names.into_iter().zip(guest.read_all(&paths)?).collect();
    regions_by_address(&found)
}

/// libnvdimm wants namespaces aligned to the region's `align`, 16M by
/// default. QEMU packs NVDIMMs back to back and each loses its label area,
/// so the second of two 1G NVDIMMs starts at 4G + 1022M: not 16M aligned,
/// and ndctl refuses every namespace there ("misaligned to 16M, adjust
/// region alignment"). Such a region gets the largest power-of-two align
/// that its start allows.
pub fn region_align_for(start: u64) -> Option<u64> {
    const DEFAULT: u64 = 16 << 20;
    if start.is_multiple_of(DEFAULT) {
        return None;
    }
    Some(1u64 << start.trailing_zeros().min(DEFAULT.trailing_zeros()))
}

/// Read where every region and namespace really is (see [`crate::address`]).
fn read_geometry(guest: &mut Guest, case: &Case, layout: &Layout) -> Result<Geometry, GuestError> {
    let nd = |dev: &str, attr: &str| format!("/sys/bus/nd/devices/{dev}/{attr}");
    let mut geometry = Geometry::default();
    for region in &layout.regions {
        let v = guest.read_all(&[nd(region, "resource"), nd(region, "size")])?;
        geometry.regions.push(RegionGeometry {
            dev: region.clone(),
            start: number(&v[0], &nd(region, "resource"))?,
            size: number(&v[1], &nd(region, "size"))?,
        });
    }
    for spec in &case.namespaces {
        let info = &layout.namespaces[&spec.name];
        let v = guest.read_all(&[
            nd(&info.dev, "resource"),
            nd(&info.dev, "size"),
            nd(&info.dev, "holder"),
        ])?;
        let (start, size) = (
            number(&v[0], "namespace resource")?,
            number(&v[1], "namespace size")?,
        );
        let holder = v[2].trim().to_string();
        let (data_start, data_size) = match (info.mode, &info.chardev, &info.blockdev) {
            (NamespaceMode::Devdax, Some(dax), _) => {
                let d = format!("/sys/bus/dax/devices/{dax}");
                let v = guest.read_all(&[format!("{d}/resource"), format!("{d}/size")])?;
                (number(&v[0], "dax resource")?, number(&v[1], "dax size")?)
            }
            (NamespaceMode::Fsdax, _, Some(block)) => {
                let v = guest
                    .read_all(&[nd(&holder, "resource"), format!("/sys/block/{block}/size")])?;
                (
                    number(&v[0], "pfn resource")?,
                    number(&v[1], "block size")? * 512,
                )
            }
            // A BTT's data is the namespace as a whole; where an LBA lands in
            // it is the BTT map's business.
            (NamespaceMode::Raw | NamespaceMode::Sector, _, Some(_)) => (start, size),
            _ => {
                return Err(GuestError::Missing(
                    Absent::Namespace,
                    format!("namespace `{}` ({}) lacks its device", spec.name, info.dev),
                ))
            }
        };
        let region = layout
            .regions
            .iter()
            .position(|r| *r == info.region)
            .expect("setup records every region");
        geometry.namespaces.push(NamespaceGeometry {
            name: spec.name.clone(),
            region,
            mode: info.mode,
            start,
            size,
            data_start,
            data_size,
        });
    }
    Ok(geometry)
}

/// Turn a region's existing namespace into the case's (label-less regions,
/// such as most of nfit_test's, cannot be divided or named).
pub fn reconfigure_namespace_argv(ns: &NamespaceSpec, existing: &str) -> Vec<String> {
    reconfig_argv(existing, ns.mode, ns.align)
}

/// `ndctl create-namespace --force --reconfig=EXISTING --mode=...`.
fn reconfig_argv(existing: &str, mode: NamespaceMode, align: Option<ByteSize>) -> Vec<String> {
    let mut argv: Vec<String> = vec![
        "ndctl".into(),
        "create-namespace".into(),
        "--force".into(),
        // ndctl would try to write labels to DIMMs the region keeps busy.
        "--no-autolabel".into(),
        format!("--reconfig={existing}"),
        format!("--mode={}", mode.ndctl_name()),
    ];
    if let Some(a) = align {
        argv.push(format!("--align={a}"));
    }
    argv
}

/// A `reconfigure` step: change a namespace's mode in place (its data and
/// its badblocks now count from a new data start), then read the layout
/// again so that every later check uses the new frame.
pub fn reconfigure(
    guest: &mut Guest,
    case: &Case,
    layout: &mut Layout,
    name: &str,
    mode: NamespaceMode,
    align: Option<ByteSize>,
) -> Result<NamespaceInfo, GuestError> {
    let old = layout.namespaces.get(name).cloned().ok_or_else(|| {
        GuestError::Missing(
            Absent::Namespace,
            format!("no namespace `{name}` in this VM"),
        )
    })?;
    let argv = reconfig_argv(&old.dev, mode, align);
    let created = create_namespace(guest, &argv)?;
    let info = namespace_info(&created, &old.region)?;
    layout.namespaces.insert(name.to_string(), info.clone());
    layout.geometry = read_geometry(guest, case, layout)?;
    Ok(info)
}

pub fn create_namespace_argv(ns: &NamespaceSpec, region: &str) -> Vec<String> {
    let mut argv: Vec<String> = vec![
        "ndctl".into(),
        "create-namespace".into(),
        format!("--region={region}"),
        format!("--mode={}", ns.mode.ndctl_name()),
    ];
    // Without a size ndctl takes what the region has left.
    if !ns.whole_region {
        argv.push(format!("--size={}", ns.size));
    }
    argv.push(format!("--name={}", ns.name));
    if let Some(a) = ns.align {
        argv.push(format!("--align={a}"));
    }
    argv
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::case::NamespaceMode;
    use crate::size::ByteSize;
    use serde_json::json;

    #[test]
    fn ndctl_lists_become_vectors() {
        assert!(json_list("").unwrap().is_empty());
        assert_eq!(json_list(r#"{"dev":"region0"}"#).unwrap().len(), 1);
        assert_eq!(
            json_list(r#"[{"dev":"region0"},{"dev":"region1"}]"#)
                .unwrap()
                .len(),
            2
        );
        assert!(json_list("42").is_err());
    }

    #[test]
    fn misaligned_regions_get_the_align_their_start_allows() {
        assert_eq!(region_align_for(0x1_0000_0000), None);
        assert_eq!(region_align_for(0x1_3fe0_0000), Some(2 << 20));
        assert_eq!(region_align_for(0x1_0100_0000), None);
        assert_eq!(region_align_for(0x1_0080_0000), Some(8 << 20));
    }

    #[test]
    fn regions_are_ordered_by_physical_address() {
        let found = vec![
            ("region1".to_string(), "0x140000000\n".to_string()),
            ("region0".to_string(), "0x100000000\n".to_string()),
        ];
        assert_eq!(regions_by_address(&found).unwrap(), ["region0", "region1"]);
        assert!(regions_by_address(&[("r".into(), "zz".into())]).is_err());
    }

    #[test]
    fn created_namespaces_yield_device_names() {
        let devdax = json!({"dev":"namespace0.0","mode":"devdax","daxregion":{"id":0,"align":2097152,
            "devices":[{"chardev":"dax0.0","size":534773760}]},"align":2097152});
        let info = namespace_info(&devdax, "region0").unwrap();
        assert_eq!(info.chardev.as_deref(), Some("dax0.0"));
        assert_eq!(info.blockdev, None);
        let fsdax = json!({"dev":"namespace1.0","mode":"fsdax","blockdev":"pmem1"});
        assert_eq!(
            namespace_info(&fsdax, "region1")
                .unwrap()
                .blockdev
                .as_deref(),
            Some("pmem1")
        );
        let mut layout = Layout::default();
        layout
            .namespaces
            .insert("fs".into(), namespace_info(&fsdax, "region1").unwrap());
        let ns = |field| Ref::Ns {
            name: "fs".into(),
            field,
        };
        assert_eq!(layout.lookup(&ns(NsField::Blockdev)).unwrap(), "pmem1");
        assert!(layout
            .lookup(&ns(NsField::Chardev))
            .unwrap_err()
            .to_string()
            .contains("has no chardev"));
        let cxl = Ref::Cxl {
            device: 0,
            field: crate::template::CxlField::Memdev,
        };
        assert!(layout
            .lookup(&cxl)
            .unwrap_err()
            .to_string()
            .contains("CXL device 0 has no memdev"));
        layout.cxl.memdevs = vec!["mem1".into()];
        assert_eq!(layout.lookup(&cxl).unwrap(), "mem1");
    }

    #[test]
    fn create_namespace_is_fully_explicit() {
        let ns = NamespaceSpec {
            name: "data".into(),
            nvdimm: 0,
            bus: None,
            whole_region: false,
            mode: NamespaceMode::Devdax,
            size: ByteSize(512 << 20),
            align: Some(ByteSize(2 << 20)),
        };
        assert_eq!(
            create_namespace_argv(&ns, "region0"),
            [
                "ndctl",
                "create-namespace",
                "--region=region0",
                "--mode=devdax",
                "--size=512M",
                "--name=data",
                "--align=2M"
            ]
        );
    }
}
