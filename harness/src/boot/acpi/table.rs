//! ACPI table bytes: the header, the checksum, QEMU's NVDIMM SSDT patch and
//! the SPA ranges of the NFIT. Pure functions over bytes (unit-tested with a
//! table dumped from QEMU 7.2).

/// Every ACPI table starts with this 36-byte header.
pub const HEADER_LEN: usize = 36;

/// QEMU's NVDIMM root `_DSM`: `Method (_DSM, 4) { Return (NCAL (Arg0, Arg1,
/// Arg2, Arg3, Zero)) }` from the name on (the per-DIMM methods pass `One`
/// as the last argument, so this is the root's alone). QEMU has built it
/// this way since NVDIMM support landed (hw/acpi/nvdimm.c).
const QEMU_ROOT_DSM: &[u8] = b"_DSM\x04\xa4NCAL\x68\x69\x6a\x6b\x00";

/// What the root `_DSM` is renamed to: the lab's method hands the UUIDs it
/// does not answer to it.
const RENAMED: &[u8; 4] = b"QDSM";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub signature: String,
    pub length: u32,
    pub revision: u8,
    pub oem_id: String,
    pub table_id: String,
    pub oem_revision: u32,
}

pub fn header(bytes: &[u8]) -> Result<Header, String> {
    if bytes.len() < HEADER_LEN {
        return Err(format!(
            "{} bytes is shorter than an ACPI header",
            bytes.len()
        ));
    }
    let text = |r: std::ops::Range<usize>| String::from_utf8_lossy(&bytes[r]).into_owned();
    let u32_at = |i: usize| u32::from_le_bytes(bytes[i..i + 4].try_into().unwrap());
    let h = Header {
        signature: text(0..4),
        length: u32_at(4),
        revision: bytes[8],
        oem_id: text(10..16),
        // Padded with NULs by QEMU, with spaces by iasl.
        table_id: text(16..24).trim_end_matches(['\0', ' ']).to_string(),
        oem_revision: u32_at(24),
    };
    if h.length as usize != bytes.len() {
        return Err(format!(
            "{} table says {} bytes but has {}",
            h.signature,
            h.length,
            bytes.len()
        ));
    }
    Ok(h)
}

/// The bytes of a table sum to zero (mod 256).
pub fn checksum_ok(bytes: &[u8]) -> bool {
    bytes.iter().fold(0u8, |a, b| a.wrapping_add(*b)) == 0
}

fn fix_checksum(bytes: &mut [u8]) {
    bytes[9] = 0;
    let sum = bytes.iter().fold(0u8, |a, b| a.wrapping_add(*b));
    bytes[9] = 0u8.wrapping_sub(sum);
}

/// Whether this is QEMU's NVDIMM SSDT (OEM "BOCHS ", table id "NVDIMM").
pub fn is_qemu_nvdimm_ssdt(bytes: &[u8]) -> bool {
    header(bytes)
        .is_ok_and(|h| h.signature == "SSDT" && h.oem_id == "BOCHS " && h.table_id == "NVDIMM")
}

/// QEMU's NVDIMM SSDT as the lab boots it: the same AML with the root
/// `_DSM` renamed to `QDSM` (same length, so nothing else moves) and the OEM
/// revision raised by one, which is what makes the kernel's table upgrade
/// replace the firmware's copy.
pub fn patch_qemu_ssdt(bytes: &[u8]) -> Result<Vec<u8>, String> {
    let h = header(bytes)?;
    if !is_qemu_nvdimm_ssdt(bytes) {
        return Err(format!(
            "not QEMU's NVDIMM SSDT: {} {:?} {:?}",
            h.signature, h.oem_id, h.table_id
        ));
    }
    let hits: Vec<usize> = bytes
        .windows(QEMU_ROOT_DSM.len())
        .enumerate()
        .filter(|(_, w)| *w == QEMU_ROOT_DSM)
        .map(|(i, _)| i)
        .collect();
    let [at] = hits[..] else {
        return Err(format!(
            "QEMU's NVDIMM SSDT has {} root _DSM methods of the known shape (expected 1); \
             this QEMU builds its table differently: use `root_dsm: qemu` and report it",
            hits.len()
        ));
    };
    let mut out = bytes.to_vec();
    out[at..at + 4].copy_from_slice(RENAMED);
    out[24..28].copy_from_slice(&(h.oem_revision + 1).to_le_bytes());
    fix_checksum(&mut out);
    Ok(out)
}

/// A System Physical Address range of the NFIT.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Spa {
    pub base: u64,
    pub length: u64,
}

/// The persistent-memory SPA ranges of an NFIT, by address.
pub fn nfit_pm_ranges(nfit: &[u8]) -> Result<Vec<Spa>, String> {
    /// ACPI 6.x: the persistent memory region GUID, in table byte order.
    const PM_GUID: [u8; 16] = [
        0x79, 0xd3, 0xf0, 0x66, 0xf3, 0xb4, 0x74, 0x40, 0xac, 0x43, 0x0d, 0x33, 0x18, 0xb7, 0x8c,
        0xdb,
    ];
    let h = header(nfit)?;
    if h.signature != "NFIT" {
        return Err(format!("expected an NFIT, got {}", h.signature));
    }
    let u16_at = |i: usize| u16::from_le_bytes(nfit[i..i + 2].try_into().unwrap());
    let u64_at = |i: usize| u64::from_le_bytes(nfit[i..i + 8].try_into().unwrap());
    // The header is followed by 4 reserved bytes, then the structures.
    let mut at = HEADER_LEN + 4;
    let mut out = Vec::new();
    while at + 4 <= nfit.len() {
        let (kind, len) = (u16_at(at), u16_at(at + 2) as usize);
        if len < 4 || at + len > nfit.len() {
            return Err(format!(
                "NFIT structure at byte {at} has a bad length {len}"
            ));
        }
        if kind == 0 && len >= 56 && nfit[at + 16..at + 32] == PM_GUID {
            out.push(Spa {
                base: u64_at(at + 32),
                length: u64_at(at + 40),
            });
        }
        at += len;
    }
    out.sort_by_key(|s| s.base);
    Ok(out)
}

/// Bytes from `od -An -v -tx1` output (how the guest agent's text channel
/// carries a binary file).
pub fn parse_od(text: &str) -> Result<Vec<u8>, String> {
    text.split_ascii_whitespace()
        .map(|h| u8::from_str_radix(h, 16).map_err(|_| format!("`{h}` is not a hex byte")))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// QEMU 7.2's NVDIMM SSDT for one NVDIMM and 2G of RAM, from
    /// /sys/firmware/acpi/tables/SSDT in a lab guest.
    const QEMU_7_2_SSDT: &[u8] = include_bytes!("testdata/qemu-7.2-nvdimm-ssdt.aml");
    const QEMU_7_2_NFIT: &[u8] = include_bytes!("testdata/qemu-7.2-nfit.aml");

    #[test]
    fn reads_the_header() {
        let h = header(QEMU_7_2_SSDT).unwrap();
        assert_eq!(h.signature, "SSDT");
        assert_eq!(h.revision, 1);
        assert_eq!(h.oem_id, "BOCHS ");
        assert_eq!(h.table_id, "NVDIMM");
        assert_eq!(h.oem_revision, 1);
        assert!(checksum_ok(QEMU_7_2_SSDT));
        assert!(is_qemu_nvdimm_ssdt(QEMU_7_2_SSDT));
        assert!(header(&QEMU_7_2_SSDT[..40]).is_err(), "length mismatch");
    }

    #[test]
    fn patch_renames_only_the_root_dsm() {
        let p = patch_qemu_ssdt(QEMU_7_2_SSDT).unwrap();
        assert_eq!(p.len(), QEMU_7_2_SSDT.len());
        assert!(checksum_ok(&p));
        assert_eq!(header(&p).unwrap().oem_revision, 2);
        let diff: Vec<usize> = (0..p.len()).filter(|&i| p[i] != QEMU_7_2_SSDT[i]).collect();
        // checksum, OEM revision, and the first byte of the name (`_` -> `Q`)
        assert_eq!(diff.len(), 3, "{diff:?}");
        let count =
            |hay: &[u8], needle: &[u8]| hay.windows(needle.len()).filter(|w| *w == needle).count();
        assert_eq!(count(&p, b"QDSM"), 1);
        assert_eq!(count(&p, b"_DSM"), count(QEMU_7_2_SSDT, b"_DSM") - 1);
        // Patching the patched table finds no root _DSM any more.
        assert!(patch_qemu_ssdt(&p).unwrap_err().contains("0 root _DSM"));
    }

    #[test]
    fn patch_refuses_other_tables() {
        let mut t = QEMU_7_2_SSDT.to_vec();
        t[16..22].copy_from_slice(b"OTHER ");
        assert!(patch_qemu_ssdt(&t)
            .unwrap_err()
            .contains("not QEMU's NVDIMM SSDT"));
    }

    #[test]
    fn finds_the_nvdimm_spa_range() {
        let r = nfit_pm_ranges(QEMU_7_2_NFIT).unwrap();
        assert_eq!(
            r,
            vec![Spa {
                base: 0x1_0000_0000,
                length: 1022 << 20
            }]
        );
        assert!(nfit_pm_ranges(QEMU_7_2_SSDT).is_err());
    }

    #[test]
    fn od_output_round_trips() {
        assert_eq!(
            parse_od(" 53 53 44 54\n 0a ff\n").unwrap(),
            vec![0x53, 0x53, 0x44, 0x54, 0x0a, 0xff]
        );
        assert!(parse_od("zz").is_err());
    }
}
