//! The lab's NVDIMM root `_DSM` table: images/acpi/root-dsm.asl with the
//! machine's SPA ranges and latent errors filled in, compiled by iasl.

use super::table::Spa;
use super::{ERROR_UNIT, MAX_ERROR_UNITS};
use crate::boot::error::BootError;
use crate::vm::machine::DsmFault;
use std::path::Path;
use std::process::Command;

/// The ASL, built into the harness so a binary always renders the table it
/// was tested with.
pub const TEMPLATE: &str = include_str!("../../../../images/acpi/root-dsm.asl");

/// The table's integers are 32 bits (see the ASL), and addresses are kept in
/// 256-byte units: SPAs must stay below 2^40.
const UNIT_LIMIT: u64 = 1 << 32;

/// A latent error as an SPA range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpaError {
    pub address: u64,
    pub length: u64,
}

fn unit(address: u64) -> Result<u64, BootError> {
    let u = address / ERROR_UNIT;
    if u >= UNIT_LIMIT {
        return Err(BootError::Tables(format!(
            "SPA {address:#x} is above 1 TiB, beyond what the lab's table can address"
        )));
    }
    Ok(u)
}

/// The ASL source for these NVDIMM ranges, latent errors and faults.
pub fn render(spa: &[Spa], errors: &[SpaError], faults: &[DsmFault]) -> Result<String, BootError> {
    let mut units: Vec<u64> = Vec::new();
    for e in errors {
        let (first, end) = (
            unit(e.address)?,
            (e.address + e.length).div_ceil(ERROR_UNIT),
        );
        for u in first..end {
            if !units.contains(&u) {
                units.push(u);
            }
        }
    }
    if units.len() as u64 > MAX_ERROR_UNITS {
        return Err(BootError::Tables(format!(
            "{} error units; the lab's table holds {MAX_ERROR_UNITS}",
            units.len()
        )));
    }
    let mut ranges = Vec::new();
    for s in spa {
        ranges.push(format!("{:#x}", unit(s.base)?));
        ranges.push(format!("{:#x}", unit(s.base + s.length - 1)? + 1));
    }
    let hex = |v: &[u64]| {
        v.iter()
            .map(|u| format!("{u:#x}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let out = TEMPLATE
        .replace("@@COUNT@@", &units.len().to_string())
        .replace("@@UNITS@@", &hex(&units))
        .replace("@@INJECTED@@", &vec!["0"; units.len()].join(", "))
        .replace("@@SPA@@", &ranges.join(", "))
        .replace(
            "@@LOG_PORT@@",
            &format!("{:#x}", crate::vm::machine::PLATFORM_LOG_PORT),
        )
        .replace(
            "@@FAULT_TRUNCATE@@",
            if faults.contains(&DsmFault::TruncatedArsStatus) {
                "1"
            } else {
                "0"
            },
        );
    Ok(out)
}

/// File stem of the lab's table in a case's artifacts (`.asl`, `.aml`).
pub const STEM: &str = "pmem-lab-root-dsm";

/// Compile the lab's table with iasl in `dir` (which keeps the .asl and the
/// .aml for a failure's artifacts); the AML bytes.
pub fn compile(asl: &str, dir: &Path) -> Result<Vec<u8>, BootError> {
    iasl(asl, dir, STEM)
}

/// Compile `asl` with iasl to `dir/STEM.aml` (source kept as `STEM.asl`).
pub fn iasl(asl: &str, dir: &Path, stem: &str) -> Result<Vec<u8>, BootError> {
    let prefix = dir.join(stem);
    let src = prefix.with_extension("asl");
    std::fs::write(&src, asl).map_err(BootError::host(&src))?;
    let out = Command::new("iasl")
        .arg("-p")
        .arg(&prefix)
        .arg(&src)
        .output()
        .map_err(|e| BootError::Tool {
            tool: "iasl".into(),
            output: format!("cannot run it: {e} (install acpica-tools)"),
        })?;
    let aml = prefix.with_extension("aml");
    if !out.status.success() || !aml.is_file() {
        return Err(BootError::Tool {
            tool: "iasl".into(),
            output: format!(
                "could not compile {}:\n{}{}",
                src.display(),
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        });
    }
    std::fs::read(&aml).map_err(BootError::host(&aml))
}

#[cfg(test)]
mod tests {
    use super::*;

    const ONE_DIMM: [Spa; 1] = [Spa {
        base: 0x1_0000_0000,
        length: 1022 << 20,
    }];

    #[test]
    fn renders_units_and_ranges() {
        let asl = render(
            &ONE_DIMM,
            &[SpaError {
                address: 0x1_0000_0000 + (256 << 20),
                length: 512,
            }],
            &[],
        )
        .unwrap();
        assert!(asl.contains("Name (LCNT, 2)"), "{asl}");
        assert!(asl.contains("Name (LFTR, 0)"));
        assert!(asl.contains("Package (256) { 0x1100000, 0x1100001 }"));
        assert!(asl.contains("Package (256) { 0, 0 }"));
        assert!(asl.contains("Package () { 0x1000000, 0x13fe000 }"));
        assert!(!asl.contains("@@"));
    }

    #[test]
    fn overlapping_errors_share_units() {
        let e = |address, length| SpaError { address, length };
        let asl = render(
            &ONE_DIMM,
            &[e(0x1_0000_0000, 1024), e(0x1_0000_0200, 512)],
            &[],
        )
        .unwrap();
        assert!(asl.contains("Name (LCNT, 4)"));
    }

    #[test]
    fn faults_switch_on_in_the_table() {
        let asl = render(&ONE_DIMM, &[], &[DsmFault::TruncatedArsStatus]).unwrap();
        assert!(asl.contains("Name (LFTR, 1)"));
    }

    #[test]
    fn refuses_what_the_table_cannot_hold() {
        let far = [Spa {
            base: 1 << 40,
            length: 1 << 30,
        }];
        assert!(render(&far, &[], &[])
            .unwrap_err()
            .to_string()
            .contains("above 1 TiB"));
        let many = SpaError {
            address: 0x1_0000_0000,
            length: (MAX_ERROR_UNITS + 1) * ERROR_UNIT,
        };
        assert!(render(&ONE_DIMM, &[many], &[])
            .unwrap_err()
            .to_string()
            .contains("holds 256"));
    }
}
