//! The lab's root _DSM table, executed on the host by ACPICA's own
//! interpreter (acpiexec, from acpica-tools, which the lab installs for
//! iasl anyway): every function's output bytes against the layouts the
//! kernel reads (include/uapi/linux/ndctl.h, drivers/acpi/nfit/core.c), and
//! the paths a VM case cannot reach cheaply (a full error list, malformed
//! input). No VM: runs in `cargo test`; without iasl or acpiexec each trial
//! is reported as ignored with the reason.
//!
//! The table is loaded over a stub DSDT of revision 1 (32-bit integers, as
//! QEMU's) that defines `\_SB.NVDR` and a `QDSM` answering one marker byte.

use libtest_mimic::{Arguments, Failed, Trial};
use pmem_lab_harness::boot::acpi::root_dsm::{self, SpaError};
use pmem_lab_harness::boot::acpi::table::Spa;
use pmem_lab_harness::boot::acpi::{ERROR_UNIT, MAX_ERROR_UNITS};
use pmem_lab_harness::run::preflight;
use pmem_lab_harness::vm::machine::DsmFault;
use std::path::PathBuf;
use std::process::Command;

const STUB_DSDT: &str = r#"
DefinitionBlock ("", "DSDT", 1, "PMLAB ", "STUB", 1)
{
    Scope (\_SB)
    {
        Device (NVDR)
        {
            Name (_HID, "ACPI0012")
            Method (QDSM, 4, NotSerialized)
            {
                Return (Buffer (One) { 0x77 })
            }
        }
    }
}
"#;

/// The NFIT root device UUID 2f10e7a4-9e91-11e4-89d3-123b93f75cba in
/// buffer byte order (what ToUUID produces).
const ROOT_UUID: [u8; 16] = [
    0xa4, 0xe7, 0x10, 0x2f, 0x91, 0x9e, 0xe4, 0x11, 0x89, 0xd3, 0x12, 0x3b, 0x93, 0xf7, 0x5c, 0xba,
];

const GIB: u64 = 1 << 30;
const MIB: u64 = 1 << 20;
/// Two NVDIMMs as QEMU places them: 1022M at 4G, then 3G at 5G.
const SPA: [Spa; 2] = [
    Spa {
        base: 4 * GIB,
        length: 1022 * MIB,
    },
    Spa {
        base: 5 * GIB,
        length: 3 * GIB,
    },
];

fn le(v: u64, n: usize) -> Vec<u8> {
    v.to_le_bytes()[..n].to_vec()
}

fn u32_at(b: &[u8], at: usize) -> u64 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap()) as u64
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
}

/// (address, length) as 16 input bytes.
fn range(address: u64, length: u64) -> Vec<u8> {
    [le(address, 8), le(length, 8)].concat()
}

struct Call {
    uuid: [u8; 16],
    func: u32,
    input: Vec<u8>,
}

fn root(func: u32, input: Vec<u8>) -> Call {
    Call {
        uuid: ROOT_UUID,
        func,
        input,
    }
}

/// The lab's table and the stub, compiled in a temp dir.
struct Tables {
    dir: tempfile::TempDir,
}

impl Tables {
    fn new(errors: &[SpaError], faults: &[DsmFault]) -> Result<Tables, Failed> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let asl = root_dsm::render(&SPA, errors, faults)?;
        root_dsm::compile(&asl, dir.path())?;
        root_dsm::iasl(STUB_DSDT, dir.path(), "stub")?;
        Ok(Tables { dir })
    }

    /// Evaluate `calls` in order in one interpreter (the table's state
    /// carries over); each call's returned buffer.
    fn run(&self, calls: &[Call]) -> Result<Vec<Vec<u8>>, Failed> {
        let hex = |b: &[u8]| {
            b.iter()
                .map(|x| format!("{x:02x}"))
                .collect::<Vec<_>>()
                .join(" ")
        };
        let batch: Vec<String> = calls
            .iter()
            .map(|c| {
                // acpiexec cannot pass an empty buffer; functions without
                // input ignore this byte.
                let input = if c.input.is_empty() {
                    vec![0]
                } else {
                    c.input.clone()
                };
                format!(
                    "execute \\_SB.NVDR._DSM ({}) 1 {} [({})]",
                    hex(&c.uuid),
                    c.func,
                    hex(&input)
                )
            })
            .collect();
        let out = Command::new("acpiexec")
            .arg("-b")
            .arg(batch.join(";"))
            .arg(self.path("stub.aml"))
            .arg(self.path(&format!("{}.aml", root_dsm::STEM)))
            .output()
            .map_err(|e| format!("cannot run acpiexec: {e}"))?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let results = parse_buffers(&text);
        if results.len() != calls.len() || text.contains("ACPI Error") {
            return Err(format!(
                "{} calls, {} buffers back:\n{text}",
                calls.len(),
                results.len()
            )
            .into());
        }
        Ok(results)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

/// The buffers acpiexec printed, in order: "[Buffer] Length 48 =" followed
/// by "0000: 00 01 ... // ascii" rows (the first may share its line).
fn parse_buffers(text: &str) -> Vec<Vec<u8>> {
    let mut out: Vec<Vec<u8>> = Vec::new();
    let mut want = 0usize;
    for line in text.lines() {
        let mut rest = line;
        if let Some(at) = line.find("[Buffer] Length ") {
            let len = line[at + 16..].split_whitespace().next().unwrap_or("0");
            want = usize::from_str_radix(len, 16).unwrap_or(0);
            out.push(Vec::new());
            rest = &line[at..];
        }
        let Some(cur) = out.last_mut().filter(|c| c.len() < want) else {
            continue;
        };
        let Some(colon) = rest.find(": ").filter(|_| rest.contains("//")) else {
            continue;
        };
        let bytes = rest[colon + 2..].split("//").next().unwrap_or("");
        cur.extend(
            bytes
                .split_whitespace()
                .filter_map(|h| u8::from_str_radix(h, 16).ok()),
        );
    }
    out
}

fn check(ok: bool, what: impl Into<String>) -> Result<(), Failed> {
    if ok {
        Ok(())
    } else {
        Err(what.into().into())
    }
}

fn eq(got: u64, want: u64, what: &str) -> Result<(), Failed> {
    check(got == want, format!("{what}: got {got:#x}, want {want:#x}"))
}

/// ARS status records as (address, length).
fn records(status: &[u8]) -> Vec<(u64, u64)> {
    let n = u32_at(status, 44) as usize;
    (0..n)
        .map(|i| {
            (
                u64_at(status, 48 + 24 * i + 8),
                u64_at(status, 48 + 24 * i + 16),
            )
        })
        .collect()
}

/// ARS start over NVDIMM `i`'s whole range (persistent type).
fn ars_start(i: usize) -> Call {
    root(
        2,
        [range(SPA[i].base, SPA[i].length), le(2, 2), vec![0; 6]].concat(),
    )
}

fn query_and_forwarding() -> Result<(), Failed> {
    let t = Tables::new(&[], &[])?;
    let r = t.run(&[
        root(0, vec![]),
        Call {
            uuid: [0; 16],
            func: 3,
            input: vec![],
        },
        root(5, range(SPA[0].base, 512)),
        root(4, vec![1, 2, 3]),
    ])?;
    check(r[0] == [0x9f, 0x03], format!("function mask {:02x?}", r[0]))?;
    check(r[1] == [0x77], "another UUID goes to QEMU's QDSM")?;
    eq(u32_at(&r[2], 0), 1, "unsupported function status")?;
    eq(u32_at(&r[3], 0), 2, "short input status")
}

fn ars_capabilities() -> Result<(), Failed> {
    let t = Tables::new(&[], &[])?;
    let r = t.run(&[
        root(1, range(SPA[1].base, SPA[1].length)),
        root(1, range(SPA[0].base + SPA[0].length, 4096)),
    ])?;
    eq(r[0].len() as u64, 16, "nd_cmd_ars_cap output size")?;
    eq(u32_at(&r[0], 0), 2 << 16, "status: persistent scrub")?;
    eq(u32_at(&r[0], 4), 48 + 24 * MAX_ERROR_UNITS, "max_ars_out")?;
    eq(u32_at(&r[0], 8), ERROR_UNIT, "clear_err_unit")?;
    eq(u32_at(&r[1], 0), 2, "a range outside every NVDIMM")
}

fn ars_reports_latent_errors_by_range() -> Result<(), Failed> {
    let errors = [
        SpaError {
            address: SPA[0].base + 256 * MIB,
            length: 512,
        },
        SpaError {
            address: SPA[1].base + 2 * GIB + 256,
            length: 256,
        },
    ];
    let t = Tables::new(&errors, &[])?;
    let r = t.run(&[
        root(3, vec![]),
        ars_start(0),
        root(3, vec![]),
        ars_start(1),
        root(3, vec![]),
    ])?;
    // Before any start: "no ARS performed", a full empty header.
    eq(r[0].len() as u64, 48, "empty status size")?;
    eq(u32_at(&r[0], 0), 2 << 16, "NFIT_ARS_STATUS_NONE")?;
    eq(r[1].len() as u64, 8, "nd_cmd_ars_start output size")?;
    eq(u32_at(&r[1], 0), 0, "ARS start status")?;
    let first = &r[2];
    eq(u32_at(first, 0), 0, "status done")?;
    eq(u32_at(first, 4), 44 + 2 * 24, "out_length (from itself)")?;
    eq(first.len() as u64, 48 + 2 * 24, "buffer size")?;
    eq(u64_at(first, 8), SPA[0].base, "address echoed")?;
    eq(u64_at(first, 16), SPA[0].length, "length echoed")?;
    eq(u32_at(first, 40) & 0xffff, 2, "type echoed")?;
    let want = vec![
        (SPA[0].base + 256 * MIB, 256),
        (SPA[0].base + 256 * MIB + 256, 256),
    ];
    check(
        records(first) == want,
        format!("records {:x?}", records(first)),
    )?;
    let second = &r[4];
    let want = vec![(SPA[1].base + 2 * GIB + 256, 256)];
    check(
        records(second) == want,
        format!("records {:x?}", records(second)),
    )
}

fn clear_error() -> Result<(), Failed> {
    let at = SPA[0].base + 8 * MIB;
    let t = Tables::new(
        &[SpaError {
            address: at,
            length: 1024,
        }],
        &[],
    )?;
    let r = t.run(&[
        root(4, range(at + 512, 512)),
        root(4, range(at + 1, 512)),
        ars_start(0),
        root(3, vec![]),
    ])?;
    eq(r[0].len() as u64, 16, "nd_cmd_clear_error output size")?;
    eq(u32_at(&r[0], 0), 0, "clear status")?;
    eq(u64_at(&r[0], 8), 512, "cleared")?;
    eq(u32_at(&r[1], 0), 2, "a misaligned clear")?;
    let want = vec![(at, 256), (at + 256, 256)];
    check(
        records(&r[3]) == want,
        format!("after clearing the second half: {:x?}", records(&r[3])),
    )
}

fn inject_uninject_status() -> Result<(), Failed> {
    let latent = SPA[0].base + MIB;
    let t = Tables::new(
        &[SpaError {
            address: latent,
            length: 256,
        }],
        &[],
    )?;
    let a = SPA[0].base + 4096;
    let b = SPA[0].base + 8192;
    let inject = |at: u64| root(7, [range(at, 256), vec![0]].concat());
    let r = t.run(&[
        inject(a),
        inject(b),
        root(9, vec![]),
        root(8, range(b, 256)),
        root(8, range(latent, 256)),
        root(9, vec![]),
        ars_start(0),
        root(3, vec![]),
    ])?;
    eq(r[0].len() as u64, 4, "inject output size")?;
    eq(u32_at(&r[0], 0), 0, "inject status")?;
    let stat = &r[2];
    eq(
        u32_at(stat, 4),
        2,
        "two injected records (the latent error is not one)",
    )?;
    eq(u64_at(stat, 8), a, "first injected base")?;
    eq(u64_at(stat, 16), 256, "first injected length")?;
    eq(u64_at(stat, 24), b, "second injected base")?;
    eq(u32_at(&r[3], 0), 0, "inject clear status")?;
    eq(u32_at(&r[5], 4), 1, "after uninjecting b")?;
    eq(u64_at(&r[5], 8), a, "a is still injected")?;
    // Inject clear does not touch the latent error; ARS sees it and a.
    let mut got = records(&r[7]);
    got.sort();
    check(
        got == vec![(a, 256), (latent, 256)],
        format!("ARS after uninject: {got:x?}"),
    )
}

fn capacity_is_enforced() -> Result<(), Failed> {
    let t = Tables::new(&[], &[])?;
    let base = SPA[1].base;
    let full = MAX_ERROR_UNITS * ERROR_UNIT;
    let r = t.run(&[
        root(7, [range(base, full), vec![0]].concat()),
        root(7, [range(base, 256), vec![0]].concat()),
        root(7, [range(base + full, 256), vec![0]].concat()),
        ars_start(1),
        root(3, vec![]),
    ])?;
    eq(u32_at(&r[0], 0), 0, "filling the list")?;
    eq(u32_at(&r[1], 0), 0, "re-injecting a listed unit")?;
    eq(u32_at(&r[2], 0), 2, "one unit past capacity")?;
    eq(u32_at(&r[4], 44), MAX_ERROR_UNITS, "records")?;
    eq(
        r[4].len() as u64,
        48 + 24 * MAX_ERROR_UNITS,
        "fits max_ars_out",
    )
}

fn truncated_fault() -> Result<(), Failed> {
    let errors = [SpaError {
        address: SPA[0].base,
        length: 512,
    }];
    let t = Tables::new(&errors, &[DsmFault::TruncatedArsStatus])?;
    let r = t.run(&[ars_start(0), root(3, vec![])])?;
    eq(u32_at(&r[1], 44), 2, "num_records")?;
    eq(u32_at(&r[1], 4), 44 + 24, "out_length one record short")
}

type TrialFn = fn() -> Result<(), Failed>;

fn main() {
    let args = Arguments::from_args();
    let missing = ["iasl", "acpiexec"]
        .into_iter()
        .find(|tool| preflight::program(tool).is_none());
    let tests: [(&str, TrialFn); 8] = [
        ("query-and-forwarding", query_and_forwarding),
        ("ars-capabilities", ars_capabilities),
        (
            "ars-reports-latent-errors-by-range",
            ars_reports_latent_errors_by_range,
        ),
        ("clear-error", clear_error),
        ("inject-uninject-status", inject_uninject_status),
        ("capacity-is-enforced", capacity_is_enforced),
        ("truncated-ars-status-fault", truncated_fault),
        ("acpiexec-output-parses", || {
            let text = "  [Buffer] Length 02 =     0000: 9F 03   // ..\n  [Buffer] Length 12 = \n    0000: 00 01 02 03 04 05 06 07 08 09 0A 0B 0C 0D 0E 0F  // ....\n    0010: 10 11  // ..\n";
            let b = parse_buffers(text);
            check(
                b.len() == 2 && b[0] == [0x9f, 3] && b[1].len() == 0x12 && b[1][17] == 0x11,
                format!("{b:x?}"),
            )
        }),
    ];
    let trials = tests
        .into_iter()
        .map(|(name, f)| {
            let needs_tools = name != "acpiexec-output-parses";
            Trial::test(format!("root-dsm/{name}"), f)
                .with_ignored_flag(needs_tools && missing.is_some())
        })
        .collect();
    if let Some(tool) = missing {
        eprintln!("root-dsm trials ignored: `{tool}` is not installed (acpica-tools)");
    }
    libtest_mimic::run(&args, trials).exit();
}
