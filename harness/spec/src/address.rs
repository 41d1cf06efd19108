//! Locations in case terms ("offset 4M of namespace data") and the address
//! map that turns them into what the hardware and the kernel use: the
//! guest-physical address to inject at, the region's badblock sector, the
//! namespace's badblock sector.
//!
//! Nothing here is assumed: the geometry is read from the guest after setup
//! (see [`crate::setup`]):
//! - a region spans `[start, start + size)` (`regionN/resource`, `size`);
//! - a namespace spans `[start, start + size)` of its region
//!   (`namespaceX.Y/resource`, `size`);
//! - its *data* (what the dax device or the block device shows, offset 0)
//!   starts at `data_start`: after the info block and the struct-page memmap
//!   for devdax and fsdax (the dax device's `resource`, the pfn device's
//!   `resource`), at `start` for raw.
//!
//! Region badblocks count 512-byte sectors from the region start; a
//! namespace's (the pmem block device's `badblocks`, and `ndctl list
//! --media-errors`, "fixed up for dev dax") from its data start.

use crate::badblocks::SECTOR;
use crate::namespace::NamespaceMode;

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct RegionGeometry {
    /// `region0`
    pub dev: String,
    pub start: u64,
    pub size: u64,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct NamespaceGeometry {
    /// The case's name.
    pub name: String,
    /// Index into [`Geometry::regions`] (= the QEMU NVDIMM index).
    pub region: usize,
    pub mode: NamespaceMode,
    pub start: u64,
    pub size: u64,
    pub data_start: u64,
    pub data_size: u64,
}

impl NamespaceGeometry {
    /// The data's first sector, counted from the region start.
    pub fn data_first_sector(&self, region: &RegionGeometry) -> u64 {
        (self.data_start - region.start) / SECTOR
    }
}

#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Geometry {
    /// In QEMU NVDIMM order.
    pub regions: Vec<RegionGeometry>,
    pub namespaces: Vec<NamespaceGeometry>,
}

/// What a location names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// A case namespace, by name.
    Namespace(String),
    /// The region of QEMU NVDIMM `n`.
    Region(usize),
}

/// Where a namespace offset counts from (`from:` in a case).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Base {
    /// Offset 0 is the first byte of data (what mmap of the dax device or a
    /// read of the block device at 0 reaches). The default.
    Data,
    /// Offset 0 is the namespace's first byte: lets a case aim at the info
    /// block or the memmap in front of the data.
    Start,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    pub target: Target,
    pub offset: u64,
    pub base: Base,
}

/// A location translated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    /// Guest-physical address.
    pub gpa: u64,
    /// Region index (QEMU NVDIMM index).
    pub region: usize,
    /// Sector in the region's badblocks.
    pub region_sector: u64,
    /// Namespaces whose data holds the address, with the sector there.
    pub namespace_sectors: Vec<(String, u64)>,
}

/// Why a case location has no place in the VM's geometry.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Unplaced {
    #[error("no namespace `{0}` in this VM")]
    NoNamespace(String),
    #[error("no region for NVDIMM {index} ({regions} regions)")]
    NoRegion { index: usize, regions: usize },
    #[error("offset {offset:#x} is outside namespace `{name}` (its {what} is {limit:#x} bytes)")]
    PastNamespace {
        name: String,
        offset: u64,
        what: &'static str,
        limit: u64,
    },
    #[error("offset {offset:#x} is outside the region of NVDIMM {index} ({size:#x} bytes)")]
    PastRegion {
        index: usize,
        offset: u64,
        size: u64,
    },
}

impl Geometry {
    pub fn namespace(&self, name: &str) -> Result<&NamespaceGeometry, Unplaced> {
        self.namespaces
            .iter()
            .find(|n| n.name == name)
            .ok_or_else(|| Unplaced::NoNamespace(name.to_string()))
    }

    pub fn region(&self, index: usize) -> Result<&RegionGeometry, Unplaced> {
        self.regions.get(index).ok_or(Unplaced::NoRegion {
            index,
            regions: self.regions.len(),
        })
    }

    pub fn resolve(&self, loc: &Location) -> Result<Resolved, Unplaced> {
        let (gpa, region) = match &loc.target {
            Target::Namespace(name) => {
                let ns = self.namespace(name)?;
                let (base, limit, what) = match loc.base {
                    Base::Data => (ns.data_start, ns.data_size, "data"),
                    Base::Start => (ns.start, ns.size, "size"),
                };
                if loc.offset >= limit {
                    return Err(Unplaced::PastNamespace {
                        name: name.clone(),
                        offset: loc.offset,
                        what,
                        limit,
                    });
                }
                (base + loc.offset, ns.region)
            }
            Target::Region(i) => {
                let r = self.region(*i)?;
                if loc.offset >= r.size {
                    return Err(Unplaced::PastRegion {
                        index: *i,
                        offset: loc.offset,
                        size: r.size,
                    });
                }
                (r.start + loc.offset, *i)
            }
        };
        let r = self.region(region)?;
        let namespace_sectors = self
            .namespaces
            .iter()
            .filter(|n| {
                n.region == region && n.data_start <= gpa && gpa < n.data_start + n.data_size
            })
            .map(|n| (n.name.clone(), (gpa - n.data_start) / SECTOR))
            .collect();
        Ok(Resolved {
            gpa,
            region,
            region_sector: (gpa - r.start) / SECTOR,
            namespace_sectors,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::size::{GIB, MIB};

    /// Two NVDIMMs as QEMU lays them out: region0 at 4G, a 2M devdax
    /// namespace whose data starts 10M in; region1 behind it with an fsdax
    /// namespace at an offset (a second namespace on the DIMM).
    fn geometry() -> Geometry {
        let r0 = 0x1_0000_0000;
        let r1 = 0x1_4000_0000;
        Geometry {
            regions: vec![
                RegionGeometry {
                    dev: "region0".into(),
                    start: r0,
                    size: 1022 * MIB,
                },
                RegionGeometry {
                    dev: "region1".into(),
                    start: r1,
                    size: 1022 * MIB,
                },
            ],
            namespaces: vec![
                NamespaceGeometry {
                    name: "dax".into(),
                    region: 0,
                    mode: NamespaceMode::Devdax,
                    start: r0,
                    size: 512 * MIB,
                    data_start: r0 + 10 * MIB,
                    data_size: 502 * MIB,
                },
                NamespaceGeometry {
                    name: "fs".into(),
                    region: 1,
                    mode: NamespaceMode::Fsdax,
                    start: r1 + 256 * MIB,
                    size: 256 * MIB,
                    data_start: r1 + 256 * MIB + 6 * MIB,
                    data_size: 250 * MIB,
                },
            ],
        }
    }

    fn at(target: Target, offset: u64, base: Base) -> Location {
        Location {
            target,
            offset,
            base,
        }
    }

    #[test]
    fn namespace_data_offsets_map_to_gpa_and_both_sector_frames() {
        let g = geometry();
        let r = g
            .resolve(&at(
                Target::Namespace("dax".into()),
                4 * MIB + 0x1040,
                Base::Data,
            ))
            .unwrap();
        assert_eq!(r.gpa, 0x1_0000_0000 + 14 * MIB + 0x1040);
        assert_eq!(r.region, 0);
        assert_eq!(r.region_sector, (14 * MIB + 0x1040) / 512);
        assert_eq!(
            r.namespace_sectors,
            [("dax".to_string(), (4 * MIB + 0x1040) / 512)]
        );
    }

    #[test]
    fn second_dimm_and_second_namespace_use_their_own_starts() {
        let g = geometry();
        let r = g
            .resolve(&at(Target::Namespace("fs".into()), 512, Base::Data))
            .unwrap();
        assert_eq!(r.gpa, 0x1_4000_0000 + 262 * MIB + 512);
        assert_eq!(r.region, 1);
        assert_eq!(r.region_sector, (262 * MIB + 512) / 512);
        assert_eq!(r.namespace_sectors, [("fs".to_string(), 1)]);
    }

    #[test]
    fn metadata_hits_the_region_but_no_namespace_data() {
        let g = geometry();
        let r = g
            .resolve(&at(Target::Namespace("dax".into()), 4096, Base::Start))
            .unwrap();
        assert_eq!(r.gpa, 0x1_0000_1000);
        assert_eq!(r.region_sector, 8);
        assert!(r.namespace_sectors.is_empty());
    }

    #[test]
    fn region_offsets_find_the_namespace_they_land_in() {
        let g = geometry();
        let r = g
            .resolve(&at(Target::Region(0), 10 * MIB, Base::Data))
            .unwrap();
        assert_eq!(r.namespace_sectors, [("dax".to_string(), 0)]);
        let r = g
            .resolve(&at(Target::Region(0), 600 * MIB, Base::Data))
            .unwrap();
        assert!(r.namespace_sectors.is_empty(), "beyond every namespace");
    }

    #[test]
    fn out_of_range_offsets_are_refused_with_the_limit() {
        let g = geometry();
        let e = g
            .resolve(&at(Target::Namespace("dax".into()), 502 * MIB, Base::Data))
            .unwrap_err();
        assert!(
            matches!(&e, Unplaced::PastNamespace { name, limit: 0x1f600000, .. } if name == "dax"),
            "{e}"
        );
        assert!(g.resolve(&at(Target::Region(1), GIB, Base::Data)).is_err());
        assert!(g.resolve(&at(Target::Region(2), 0, Base::Data)).is_err());
        assert!(g
            .resolve(&at(Target::Namespace("nope".into()), 0, Base::Data))
            .is_err());
    }
}
