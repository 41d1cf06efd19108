//! The lab's ACPI table upgrade: ARS, error injection and clear-error on
//! QEMU's NVDIMMs.
//!
//! QEMU's NVDIMM root device answers no root `_DSM` function but the query,
//! so on a stock QEMU `ndctl start-scrub`, `inject-error` and `clear-errors`
//! fail. With `root_dsm: lab` (the default for machines with NVDIMMs) the
//! lab boots every VM with two extra ACPI tables in an uncompressed cpio put
//! in front of the initramfs, which the kernel's ACPI table upgrade
//! (CONFIG_ACPI_TABLE_UPGRADE) picks up before it parses the firmware's
//! tables:
//!
//! 1. QEMU's own NVDIMM SSDT, read from a guest on the same machine (see
//!    [`qemu_tables`]), with its root `_DSM` renamed to `QDSM` and its OEM
//!    revision raised so that it replaces the firmware's copy; labels,
//!    `_FIT` and the per-DIMM methods keep reaching QEMU unchanged;
//! 2. the lab's SSDT ([`root_dsm`], images/acpi/root-dsm.asl), which adds
//!    the root `_DSM`: ARS capabilities/start/status, clear uncorrectable
//!    error, and ARS error inject/clear/status, with the machine's latent
//!    errors (`machine.nvdimms[].errors`) in its error list from boot.
//!
//! Both tables and the rendered ASL are kept in the case's artifacts.

pub mod qemu_tables;
pub mod root_dsm;
pub mod table;

use crate::boot::error::BootError;
use crate::guest::Guest;
use crate::vm::lab_env::LabEnv;
use crate::vm::machine::MachineSpec;
use qemu_tables::QemuTables;
use root_dsm::SpaError;
use std::io::Write as _;
use std::path::Path;

pub use pmem_lab_spec::machine::{ERROR_UNIT, MAX_ERROR_UNITS};

/// What the kernel logs when it takes each table (drivers/acpi/tables.c).
pub const OVERRIDE_LINE: &str = "Table Upgrade: override [SSDT-BOCHS -  NVDIMM]";
pub const INSTALL_LINE: &str = "Table Upgrade: install [SSDT-PMLAB - ROOTDSM]";

const TABLE_DIR: &str = "kernel/firmware/acpi";

/// Write to `out` the initrd a VM of `machine` boots: the tables' cpio,
/// then the lab's image (`env.initrd`) as it is. Returns QEMU's tables the
/// lab's are built on, for [`check_upgraded`].
pub fn write_initrd(
    machine: &MachineSpec,
    env: &LabEnv,
    dir: &Path,
    out: &Path,
) -> Result<QemuTables, BootError> {
    let qemu = qemu_tables::get(&machine.qemu_shape(), env, &dir.join("acpi-probe"))?;
    let mut bytes = initrd_prefix(machine, &qemu, dir)?;
    let image = std::fs::read(&env.initrd).map_err(BootError::host(&env.initrd))?;
    bytes.extend_from_slice(&image);
    std::fs::write(out, bytes).map_err(BootError::host(out))?;
    Ok(qemu)
}

/// The cpio archive to put in front of the initramfs for `machine`; the
/// tables also go to `dir`.
fn initrd_prefix(
    machine: &MachineSpec,
    qemu: &QemuTables,
    dir: &Path,
) -> Result<Vec<u8>, BootError> {
    if qemu.spa.len() != machine.nvdimms.len() {
        return Err(BootError::Tables(format!(
            "QEMU's NFIT has {} persistent-memory ranges for {} NVDIMMs",
            qemu.spa.len(),
            machine.nvdimms.len()
        )));
    }
    let errors: Vec<SpaError> = machine
        .nvdimms
        .iter()
        .zip(&qemu.spa)
        .flat_map(|(nv, spa)| {
            nv.errors.iter().map(|e| SpaError {
                address: spa.base + e.offset,
                length: e.length,
            })
        })
        .collect();
    let lab = root_dsm::compile(
        &root_dsm::render(&qemu.spa, &errors, &machine.dsm_faults)?,
        dir,
    )?;
    let patched = table::patch_qemu_ssdt(&qemu.ssdt).map_err(BootError::Tables)?;
    let _ = std::fs::write(dir.join("qemu-nvdimm-ssdt.aml"), &patched);
    // Short names: the kernel truncates table file names past 18 characters
    // (MAX_CPIO_FILE_NAME in lib/earlycpio.c), and says so in the log.
    let archive = cpio(&[("nvdimm.aml", &patched), ("pmemlab.aml", &lab)])
        .map_err(BootError::host(dir.join(CPIO_ARTIFACT)))?;
    // Kept for booting the machine by hand (docs/reproducing.md).
    let _ = std::fs::write(dir.join(CPIO_ARTIFACT), &archive);
    Ok(archive)
}

/// The tables' cpio in a case's artifacts: `cat` it in front of the image to
/// boot the case's machine by hand.
pub const CPIO_ARTIFACT: &str = "acpi-tables.cpio";

/// An uncompressed newc archive with `tables` under kernel/firmware/acpi/
/// (the kernel only looks for tables in an uncompressed archive at the very
/// start of the initrd).
fn cpio(tables: &[(&str, &[u8])]) -> std::io::Result<Vec<u8>> {
    let mut out = Vec::new();
    let mut ino = 1;
    let mut entry = |name: String, mode: u32, data: &[u8], out: &mut Vec<u8>| {
        let b = cpio::newc::Builder::new(&name).ino(ino).mode(mode).nlink(1);
        ino += 1;
        let mut w = b.write(out, data.len() as u32);
        w.write_all(data)?;
        w.finish().map(|_| ())
    };
    let mut path = String::new();
    for part in TABLE_DIR.split('/') {
        if !path.is_empty() {
            path.push('/');
        }
        path.push_str(part);
        entry(path.clone(), 0o040755, &[], &mut out)?;
    }
    for (name, data) in tables {
        entry(format!("{TABLE_DIR}/{name}"), 0o100644, data, &mut out)?;
    }
    cpio::newc::trailer(&mut out)?;
    Ok(out)
}

/// After boot: the kernel took both tables, and the firmware's NFIT is the
/// one they were built from (a guard against a cache entry that no longer
/// matches the machine); else the case cannot mean what it says.
pub fn check_upgraded(guest: &mut Guest, built_on: &QemuTables) -> Result<(), BootError> {
    let log = guest
        .kmsg(None)
        .map_err(|e| BootError::from(e).context("kernel log"))?;
    for line in [OVERRIDE_LINE, INSTALL_LINE] {
        if !log.iter().any(|r| r.text.contains(line)) {
            return Err(BootError::NotTaken(format!(
                "the kernel did not log \"{line}\": the lab's ACPI tables were not used \
                 (is CONFIG_ACPI_TABLE_UPGRADE set? the tables are in the case's artifacts)"
            )));
        }
    }
    if qemu_tables::dump(guest, "NFIT")? != built_on.nfit {
        return Err(BootError::NotTaken(format!(
            "the guest's NFIT differs from the one the lab's tables were built from: \
             remove the stale cache entry {} and run again",
            built_on.cached_in.display()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpio_holds_the_tables_under_the_upgrade_path() {
        let a = cpio(&[("x.aml", b"SSDT....")]).unwrap();
        let mut r = std::io::Cursor::new(a);
        let mut names = Vec::new();
        loop {
            let e = cpio::NewcReader::new(r).unwrap();
            if e.entry().is_trailer() {
                break;
            }
            names.push((e.entry().name().to_string(), e.entry().file_size()));
            r = e.finish().unwrap();
        }
        assert_eq!(
            names,
            vec![
                ("kernel".to_string(), 0),
                ("kernel/firmware".to_string(), 0),
                ("kernel/firmware/acpi".to_string(), 0),
                ("kernel/firmware/acpi/x.aml".to_string(), 8),
            ]
        );
    }
}
