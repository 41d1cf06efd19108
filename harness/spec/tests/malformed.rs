//! A corpus of malformed case files: each must be refused with the exact
//! location and message, and none may panic.

use pmem_lab_spec::case::load_dir;
use std::path::Path;

/// Write `text` as `<root>/t/case.yaml` and load the root; the first error.
fn first_error(text: &str) -> String {
    let root = tempfile::tempdir().unwrap();
    std::fs::create_dir(root.path().join("t")).unwrap();
    std::fs::write(root.path().join("t/case.yaml"), text).unwrap();
    match std::panic::catch_unwind(|| load_dir(root.path())) {
        Err(_) => "PANICKED".to_string(),
        Ok(Err(e)) => format!("dir: {e}"),
        Ok(Ok(loaded)) => match loaded.iter().find_map(|l| l.case.as_ref().err()) {
            None => "accepted".to_string(),
            Some(e) => format!("{}:{} {}", e[0].line, e[0].column, e[0].message),
        },
    }
}

/// (what, file text, expected first error as `line:col message-prefix`).
const CORPUS: &[(&str, &str, &str)] = &[
    ("empty file", "", "1:1 the file is empty: a case needs at least `steps:`"),
    ("no steps", "description: x\n", "1:1 missing field `steps`"),
    ("steps not a list", "steps: 3\n", "1:8 expected sequence start"),
    ("empty step list", "steps: []\n", "1:8 a case needs at least one step"),
    ("unknown top-level field", "stpes:\n  - run: [true]\n", "1:1 unknown field `stpes`, expected one of name, description, machine, setup, steps, allow_dmesg, allow_oracle, cold_boot, matrix"),
    ("cold_boot not a boolean", "cold_boot: sometimes\nsteps:\n  - run: [true]\n", "1:12 invalid boolean"),
    ("unknown step field", "steps:\n  - run: [true]\n    expcet: {exit: 0}\n", "3:5 unknown field `expcet`, expected one of name, run, sh, inject, expect_badblocks, map, unmap, touch, consume, poison, signals, mce_kill, inject_error, scrub, clear, put, reconfigure, cxl_inject_poison, expect_cxl_poison, stdin, env, timeout, repeat, expect"),
    ("step without action", "steps:\n  - name: x\n", "2:5 this step has no action: add one of `run`, `sh`, `inject`, `expect_badblocks`, `map`, `unmap`, `touch`, `consume`, `poison`, `signals`, `mce_kill`, `inject_error`, `scrub`, `clear`"),
    ("step with two actions", "steps:\n  - run: [true]\n    sh: true\n", "2:5 a step has one action, this one has run and sh"),
    ("empty run", "steps:\n  - run: []\n", "2:10 run needs at least a program name"),
    ("empty program name", "steps:\n  - run: [\"\"]\n", "2:11 the program name is empty"),
    ("empty sh", "steps:\n  - sh: \"\"\n", "2:9 the script is empty"),
    ("blank sh", "steps:\n  - sh: \"   \"\n", "2:9 the script is empty"),
    ("exit 256", "steps:\n  - run: [true]\n    expect: {exit: 256}\n", "3:20 exit 256: an exit status is from 0 to 255 (a signal shows as 128 + its number)"),
    ("exit -1", "steps:\n  - run: [true]\n    expect: {exit: -1}\n", "3:20 exit -1: an exit status is from 0 to 255 (a signal shows as 128 + its number)"),
    ("exit word", "steps:\n  - run: [true]\n    expect: {exit: often}\n", "3:20 exit `often`: write a number, `nonzero` or `any`"),
    ("zero timeout", "steps:\n  - run: [true]\n    timeout: 0s\n", "3:14 `0s` waits for nothing: write at least 1ms"),
    ("huge timeout", "steps:\n  - run: [true]\n    timeout: 999999999999999999m\n", "3:14 `999999999999999999m` is longer than the limit of 60m"),
    ("timeout over an hour", "steps:\n  - run: [true]\n    timeout: 61m\n", "3:14 `61m` is longer than the limit of 60m"),
    ("timeout unit", "steps:\n  - run: [true]\n    timeout: 3h\n", "3:14 `3h`: unknown duration unit (use ms, s or m)"),
    ("zero boot timeout", "machine:\n  boot_timeout: 0ms\nsteps:\n  - run: [true]\n", "2:17 `0ms` waits for nothing: write at least 1ms"),
    ("zero signal wait", "steps:\n  - signals: {wait: 0s}\n", "2:21 `0s` waits for nothing: write at least 1ms"),
    ("repeat zero", "steps:\n  - run: [true]\n    repeat: 0\n", "3:13 repeat is from 1 to 1000"),
    ("repeat huge", "steps:\n  - run: [true]\n    repeat: 1000000000\n", "3:13 repeat is from 1 to 1000"),
    ("repeat negative", "steps:\n  - run: [true]\n    repeat: -1\n", "3:13 expected a whole number (not negative, not a word)"),
    ("cpus zero", "machine:\n  cpus: 0\nsteps:\n  - run: [true]\n", "2:9 cpus must be between 1 and 8"),
    ("cpus word", "machine:\n  cpus: many\nsteps:\n  - run: [true]\n", "2:9 expected a whole number (not negative, not a word)"),
    ("memory huge", "machine:\n  memory: 99999T\nsteps:\n  - run: [true]\n", "2:11 memory is from 256M to 16G and a multiple of 2M"),
    ("memory overflow", "machine:\n  memory: 99999999999T\nsteps:\n  - run: [true]\n", "2:11 `99999999999T` overflows 64 bits"),
    ("nvdimm huge", "machine:\n  nvdimms:\n    - size: 99999T\nsteps:\n  - run: [true]\n", "3:13 an NVDIMM is at most 256G (QEMU maps it into guest memory; the lab's backing file is sparse, the guest's page tables are not)"),
    ("nvdimm negative", "machine:\n  nvdimms:\n    - size: -1\nsteps:\n  - run: [true]\n", "3:13 a size cannot be negative"),
    ("size unit", "machine:\n  nvdimms:\n    - size: 1Q\nsteps:\n  - run: [true]\n", "3:13 `1Q`: unknown size unit `Q` (use K, M, G or T, binary)"),
    ("namespace sizes overflow", "machine:\n  nvdimms:\n    - size: 1G\nsetup:\n  namespaces:\n    - {name: a, mode: fsdax, size: 16777200T}\n    - {name: b, mode: fsdax, size: 16777200T}\nsteps:\n  - run: [true]\n", "6:36 NVDIMM 0 (1G, 128K label area) is too small: its namespaces need 16777200T, it has 1008M usable"),
    ("latent error near 2^64", "machine:\n  nvdimms:\n    - size: 1G\n      errors: [{offset: 18446744073709551360}]\nsteps:\n  - run: [true]\n", "4:25 error at 18446744073709551360 + 512 bytes ends past the NVDIMM's 1022M region"),
    ("map offset overflow", "machine:\n  nvdimms:\n    - size: 1G\nsetup:\n  namespaces:\n    - {name: d, mode: devdax, size: 512M, align: 2M}\nsteps:\n  - map: {name: m, namespace: d, offset: 18446744073707454464, length: 2M}\n", "8:72 17592186044414M+2M does not fit in namespace `d` (512M)"),
    ("touch overflow", "machine:\n  nvdimms:\n    - size: 1G\nsetup:\n  namespaces:\n    - {name: d, mode: devdax, size: 512M, align: 2M}\nsteps:\n  - map: {name: m, namespace: d, length: 2M}\n  - touch: {map: m, offset: 4K, length: 18446744073709551615}\n", "9:41 touch window 0x1000+0xffffffffffffffff is outside mapping `m` (0x200000 bytes)"),
    ("inject_error namespace only", "machine:\n  nvdimms:\n    - size: 1G\nsetup:\n  namespaces:\n    - {name: p, mode: fsdax, size: 512M}\nsteps:\n  - inject_error: {namespace: p}\n", "8:19 inject_error needs `block` (a 512-byte block of the namespace data) or `file` (+ `offset`)"),
    ("inject_error count zero", "machine:\n  nvdimms:\n    - size: 1G\nsetup:\n  namespaces:\n    - {name: p, mode: fsdax, size: 512M}\nsteps:\n  - inject_error: {namespace: p, block: 8, count: 0}\n", "8:51 count must be at least 1"),
    ("unknown namespace", "steps:\n  - clear: {namespace: nope}\n", "2:24 unknown namespace `nope` (setup defines: none)"),
    ("placeholder in env", "steps:\n  - run: [env]\n    env: {X: \"${ns.nope.dev}\"}\n", "3:14 unknown namespace `nope` (setup defines: none)"),
    ("unclosed placeholder", "steps:\n  - run: [echo, \"${ns.a\"]\n", "2:17 `${ns.a` is not closed with `}`"),
    ("duplicate key", "steps:\n  - run: [true]\nsteps:\n  - run: [false]\n", "3:1 `steps` is given twice in this map"),
    ("tab indentation", "steps:\n\t- run: [true]\n", "2:2 a tab in the indentation: YAML indents with spaces"),
    ("tab before a later item", "description: x\nsteps:\n  - run: [true]\n\t- sh: x\n", "4:2 a tab in the indentation: YAML indents with spaces"),
    ("unclosed flow list", "steps:\n  - run: [a, b\n", "2:10 unclosed bracket '['"),
    ("bad sector entry", "machine:\n  nvdimms:\n    - size: 1G\nsteps:\n  - expect_badblocks: {region: 0, sectors: [{first: 1}]}\n", "5:45 a sector is a number or a map {sector: N, count: N}"),
    ("bad regex", "steps:\n  - run: [true]\n    expect: {stdout: \"(\"}\n", "3:22 bad regex: regex parse error:"),
    ("signal word", "steps:\n  - signals: {}\n    expect: {signal: sometimes}\n", "3:22 signal `sometimes`: write `none` or a map with name, code, offset, lsb"),
    ("matrix scalar", "matrix: 5\nsteps:\n  - run: [echo, \"${matrix.x}\"]\n", "1:9 matrix is a map of lists (every combination) or a list of maps (one per cell)"),
    ("matrix map of maps", "matrix:\n  x: {a: 1}\nsteps:\n  - run: [echo, \"${matrix.x}\"]\n", "2:3 matrix `x`: write a list of values, e.g. `x: [4K, 2M]`"),
    ("placeholder without matrix", "steps:\n  - run: [echo, \"${matrix.x}\"]\n", "2:18 `${matrix.…}` is used but the file has no `matrix:`"),
    ("matrix unknown key", "matrix:\n  x: [1, 2]\nsteps:\n  - run: [echo, \"${matrix.y}\"]\n", "4:18 `${matrix.y}`: the matrix has no `y` (it has: x)"),
    ("matrix cell path", "matrix:\n  - {name: ../../etc, x: 1}\nsteps:\n  - run: [echo, \"${matrix.x}\"]\n", "2:3 matrix cell `../../etc`: a cell's name (its `name`, else key=value pairs) uses letters, digits and `._=,+-` only, without `..`, at most 100 characters: it names the cell's artifacts folder"),
    ("matrix cell slash", "matrix:\n  x: [a/b]\nsteps:\n  - run: [echo, \"${matrix.x}\"]\n", "2:3 matrix cell `x=a/b`: a cell's name (its `name`, else key=value pairs) uses letters, digits and `._=,+-` only, without `..`, at most 100 characters: it names the cell's artifacts folder"),
    ("matrix too large", "matrix:\n  a: [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]\n  b: [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]\n  c: [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]\nsteps:\n  - run: [echo, \"${matrix.a}\"]\n", "2:3 the matrix makes 1000 cells; the limit is 64 (each cell boots a VM)"),
    ("matrix empty axis", "matrix:\n  a: []\nsteps:\n  - run: [echo, \"${matrix.a}\"]\n", "2:3 matrix key `a` has no values"),
    ("alias bomb", "matrix:\n a: &a [x, x, x, x, x, x, x, x, x, x]\n b: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a, *a]\n c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b, *b]\n d: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c, *c]\n e: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d, *d]\n f: [*e, *e, *e, *e, *e, *e, *e, *e, *e, *e]\nsteps:\n  - run: [true]\n", "6:9 the file expands to too much data (YAML anchors and aliases, or nesting): a case file stays small"),
    ("cpu out of range", "machine:\n  nvdimms:\n    - size: 1G\nsetup:\n  namespaces:\n    - {name: d, mode: devdax, size: 512M, align: 2M}\nsteps:\n  - map: {name: m, namespace: d, length: 2M}\n  - consume: {map: m, offset: 0, cpu: 4294967295}\n", "9:39 cpu 4294967295 does not exist: the machine has 1"),
    ("mce_kill word", "steps:\n  - mce_kill: sometimes\n", "2:15 unknown variant `sometimes`, expected one of early, late, default"),
    ("root_dsm word", "machine:\n  root_dsm: bios\nsteps:\n  - run: [true]\n", "2:13 unknown variant `bios`, expected one of lab, qemu"),
    ("inject kind", "machine:\n  nvdimms:\n    - size: 1G\nsteps:\n  - inject: {kind: boom, region: 0, offset: 0}\n", "5:20 unknown variant `boom`, expected one of scrub, load"),
    ("put out of the folder", "steps:\n  - put: {from: ../x, to: /tmp/x}\n", "2:17 `../x`: `from` is a path relative to the case file's folder, without `..`"),
    ("put absolute source", "steps:\n  - put: {from: /etc/passwd, to: /tmp/x}\n", "2:17 `/etc/passwd`: `from` is a path relative to the case file's folder, without `..`"),
    ("put missing source", "steps:\n  - put: {from: nope.sh, to: /tmp/x}\n", "2:17 `nope.sh`: No such file or directory (os error 2)"),
    ("put relative target", "steps:\n  - put: {from: case.yaml, to: tmp/x}\n", "2:32 `tmp/x` is not absolute: write the guest path from /, e.g. /tmp/repro"),
    ("put into sysfs", "steps:\n  - put: {from: case.yaml, to: /sys/x}\n", "2:32 `/sys/x`: put makes a regular file, not one under /proc, /sys or /dev"),
    ("put a folder", "steps:\n  - put: {from: ., to: /tmp/x}\n", "2:17 `.` is not a regular file"),
    ("scrub bus word", "steps:\n  - scrub: ACPI\n", "2:12 unknown variant `ACPI`, expected one of ACPI.NFIT, nfit_test.0, nfit_test.1"),
    ("match word", "machine:\n  nvdimms:\n    - size: 1G\nsteps:\n  - expect_badblocks: {region: 0, match: some}\n", "5:42 unknown variant `some`, expected one of exact, contains"),
    ("from word", "machine:\n  nvdimms:\n    - size: 1G\nsteps:\n  - inject: {kind: scrub, region: 0, offset: 0, from: end}\n", "5:55 unknown variant `end`, expected one of data, start"),
    ("namespace on ACPI.NFIT bus", "machine:\n  nfit_test: true\nsetup:\n  namespaces:\n    - {name: a, bus: ACPI.NFIT, mode: raw}\nsteps:\n  - run: [true]\n", "5:22 QEMU's NVDIMMs need no bus: leave `bus` out (or use nfit_test.0, nfit_test.1, e820)"),
    ("poison without the lab's table", "machine:\n  poison: true\n  root_dsm: qemu\n  nvdimms:\n    - size: 1G\nsteps:\n  - run: [true]\n", "2:11 the poison model needs QEMU NVDIMMs with the lab's root _DSM (it learns of injections and clears from it)"),
    ("machine checks without poison", "steps:\n  - run: [true]\n    expect: {machine_checks: 1}\n", "3:30 `expect.machine_checks` counts what the poison model raises, and it is off on this machine"),
    ("machine checks with poison turned off", "machine:\n  poison: false\n  nvdimms: [{size: 1G}]\nsteps:\n  - run: [true]\n    expect: {machine_checks: 1}\n", "6:30 `expect.machine_checks` counts what the poison model raises, and it is off on this machine: drop `machine.poison: false`"),
    ("panic on a non-command step", "steps:\n  - signals: {wait: 1s}\n    expect: {panic: x}\n", "3:21 `expect.panic` applies to `run` and `sh` steps"),
    ("panic before the last step", "steps:\n  - run: [true]\n    expect: {panic: x}\n  - run: [true]\n", "3:21 a step that expects a panic must be the case's last (the VM is gone after it)"),
    ("panic with repeat", "steps:\n  - run: [true]\n    repeat: 2\n    expect: {panic: x}\n", "4:21 a step that expects a panic cannot repeat"),
    ("panic bad regex", "steps:\n  - run: [true]\n    expect: {panic: \"(\"}\n", "3:21 bad regex"),
    ("fault word", "machine:\n  root_dsm_faults: [flaky]\nsteps:\n  - run: [true]\n", "2:21 unknown variant `flaky`, expected one of truncated-ars-status"),
    ("signal code word", "steps:\n  - signals: {}\n    expect: {signal: {code: BUS_OOPS}}\n", "3:29 unknown variant `BUS_OOPS`, expected one of BUS_ADRALN, BUS_ADRERR, BUS_OBJERR, BUS_MCEERR_AR, BUS_MCEERR_AO"),
    ("signal name word", "steps:\n  - signals: {}\n    expect: {signal: {name: SIGSEGV}}\n", "3:29 unknown variant `SIGSEGV`, expected one of SIGBUS"),
    ("e820 misaligned", "machine:\n  e820_pmem:\n    - {at: 1G, size: 100M}\nsteps:\n  - run: [true]\n", "3:7 `at` and `size` are non-zero multiples of 16M"),
    ("e820 outside RAM", "machine:\n  memory: 2G\n  e820_pmem:\n    - {at: 2G, size: 512M}\nsteps:\n  - run: [true]\n", "4:7 e820 pmem lies inside guest RAM, from 512M up to 2G (the machine's memory, at most 3G)"),
    ("e820 overlap", "machine:\n  e820_pmem:\n    - {at: 1G, size: 512M}\n    - {at: 1280M, size: 256M}\nsteps:\n  - run: [true]\n", "4:7 e820 pmem ranges must not overlap"),
    ("e820 bus without e820", "setup:\n  namespaces:\n    - {name: p, bus: e820, mode: fsdax}\nsteps:\n  - run: [true]\n", "3:22 bus `e820` needs `machine.e820_pmem`"),
    ("map both namespace and file", "steps:\n  - map: {name: m, file: /f, namespace: x, length: 4K}\n", "2:10 name exactly one of `namespace` or `file`"),
    ("map relative file", "steps:\n  - map: {name: m, file: f, length: 4K}\n", "2:26 `file` is an absolute guest path"),
    ("reconfigure devdax", "machine:\n  nvdimms:\n    - size: 1G\nsetup:\n  namespaces:\n    - {name: d, mode: devdax, size: 512M, align: 2M}\nsteps:\n  - reconfigure: {namespace: d, mode: fsdax}\n", "8:30 namespace `d` is devdax: `reconfigure` moves between raw, fsdax and sector"),
    ("reconfigure raw with align", "machine:\n  nvdimms:\n    - size: 1G\nsetup:\n  namespaces:\n    - {name: r, mode: raw, size: 512M}\nsteps:\n  - reconfigure: {namespace: r, mode: raw, align: 2M}\n", "8:51 a raw namespace has no align (it maps nothing)"),
    ("cxl size not 256M", "machine:\n  cxl:\n    - size: 100M\nsteps:\n  - run: [true]\n", "3:13 a CXL device's size is a non-zero multiple of 256M (QEMU's and the HDM decoders' granule), at most 256G"),
    ("cxl with nvdimms", "machine:\n  nvdimms:\n    - size: 1G\n  cxl:\n    - size: 256M\nsteps:\n  - run: [true]\n", "5:7 a CXL machine (q35) takes no NVDIMMs, nfit_test or e820 pmem in the lab yet: put those in a case of their own"),
    ("cxl region without devices", "setup:\n  cxl_regions:\n    - {}\nsteps:\n  - run: [true]\n", "3:7 a CXL region needs `machine.cxl` devices"),
    ("cxl region twice on a device", "machine:\n  cxl:\n    - size: 256M\nsetup:\n  cxl_regions:\n    - devices: [0]\n    - devices: [0]\nsteps:\n  - run: [true]\n", "7:16 CXL device 0 is already in a region (a region takes all of a device's capacity)"),
    ("cxl region three ways", "machine:\n  cxl:\n    - size: 256M\n    - size: 256M\n    - size: 256M\nsetup:\n  cxl_regions:\n    - devices: [0, 1, 2]\nsteps:\n  - run: [true]\n", "8:16 a region interleaves 1, 2 or 4 devices"),
    ("cxl bus region out of range", "machine:\n  cxl:\n    - size: 256M\nsetup:\n  cxl_regions:\n    - devices: [0]\n  namespaces:\n    - {name: d, bus: cxl, region: 1, mode: devdax, size: 64M}\nsteps:\n  - run: [true]\n", "8:35 bus `cxl` region 1: setup.cxl_regions has 1"),
    ("cxl poison unaligned", "machine:\n  cxl:\n    - size: 256M\nsteps:\n  - cxl_inject_poison: {dpa: 100}\n", "5:30 poison is in 64-byte lines: DPA 0x64 and length 64 must be multiples of 64 (length non-zero)"),
    ("cxl poison past the device", "machine:\n  cxl:\n    - size: 256M\nsteps:\n  - cxl_inject_poison: {dpa: 256M}\n", "5:30 64 bytes at DPA 0x10000000 end past CXL device 0 (256M)"),
    ("cxl poison without a device", "steps:\n  - expect_cxl_poison: {records: []}\n", "2:24 CXL device 0: machine.cxl is empty"),
    ("cxl placeholder past the devices", "machine:\n  cxl:\n    - size: 256M\nsteps:\n  - sh: echo ${cxl.1.memdev}\n", "5:9 `${cxl.1.memdev}`: machine.cxl has 1"),
    ("cxl region placeholder without a region", "machine:\n  cxl:\n    - size: 256M\nsteps:\n  - sh: cxl list -r ${cxl.0.region}\n", "5:9 `${cxl.0.region}`: no setup.cxl_regions entry has device 0"),
    ("cxl poison source word", "machine:\n  cxl:\n    - size: 256M\nsteps:\n  - expect_cxl_poison: {records: [{dpa: 0, source: Bad}]}\n", "5:52 unknown variant `Bad`, expected one of Unknown, External, Internal, Injected, Vendor"),
];

/// Round three (the surfaces added after the first hardening): regexes and
/// their budgets, matrix expansion, expectations that can never be checked,
/// put targets.
const CORPUS_3: &[(&str, &str, &str)] = &[
    ("a colon inside a plain value", "steps:\n  - name: late: a step\n    run: [true]\n", "2:15 a `: ` inside a plain value reads as a new key: quote the value"),
    ("e820 region that does not exist", "machine:\n  e820_pmem:\n    - {at: 1G, size: 512M}\nsetup:\n  namespaces:\n    - {name: p, bus: e820, region: 1, mode: fsdax}\nsteps:\n  - run: [true]\n", "6:36 bus `e820` region 1: machine.e820_pmem has 1 range(s)"),
    ("two namespaces on one e820 region", "machine:\n  e820_pmem:\n    - {at: 1G, size: 512M}\nsetup:\n  namespaces:\n    - {name: p, bus: e820, mode: fsdax}\n    - {name: q, bus: e820, mode: raw}\nsteps:\n  - run: [true]\n", "7:14 e820 region 0 already holds namespace `p`"),
    ("an e820 namespace with a size", "machine:\n  e820_pmem:\n    - {at: 1G, size: 512M}\nsetup:\n  namespaces:\n    - {name: p, bus: e820, mode: fsdax, size: 256M}\nsteps:\n  - run: [true]\n", "6:47 an e820 namespace is its whole range (512M): leave `size` out"),
    ("an e820 align the range cannot hold", "machine:\n  memory: 3G\n  e820_pmem:\n    - {at: 1G, size: 1G}\nsetup:\n  namespaces:\n    - {name: p, bus: e820, mode: devdax, align: 1G}\nsteps:\n  - run: [true]\n", "7:49 a 1G-aligned namespace of 1G leaves no data"),
    ("a devdax align its size cannot hold", "machine:\n  nvdimms:\n    - size: 4G\nsetup:\n  namespaces:\n    - {name: d, mode: devdax, size: 1G, align: 1G}\nsteps:\n  - run: [true]\n", "6:37 a 1G-aligned namespace of 1G leaves no data"),
    ("reconfigure to an align the namespace cannot take", "machine:\n  nvdimms:\n    - size: 1G\nsetup:\n  namespaces:\n    - {name: r, mode: raw, size: 16M}\nsteps:\n  - reconfigure: {namespace: r, mode: fsdax, align: 1G}\n", "8:53 namespace `r`: a 1G-aligned namespace of 16M leaves no data"),
    ("CXL namespaces larger than their region", "machine:\n  cxl:\n    - size: 256M\nsetup:\n  cxl_regions:\n    - devices: [0]\n  namespaces:\n    - {name: a, bus: cxl, mode: devdax, size: 128M}\n    - {name: b, bus: cxl, mode: devdax, size: 256M}\nsteps:\n  - run: [true]\n", "9:47 CXL region 0 (256M of 1 device(s)) is too small: its namespaces need 384M"),
    ("an unbounded lsa_size", "machine:\n  cxl:\n    - {size: 256M, lsa_size: 64G}\nsteps:\n  - run: [true]\n", "3:30 lsa_size is at most 16M"),
    (
        "bad regex in a list, at its item",
        "steps:\n  - run: [true]\n    expect: {stdout: [a, b, \"(\"]}\n",
        "3:29 bad regex",
    ),
    (
        "empty allow_oracle pattern",
        "allow_oracle: [\"\"]\nsteps:\n  - run: [true]\n",
        "1:16 `` matches any text",
    ),
    (
        "empty allow_oracle scalar",
        "allow_oracle: \"\"\nsteps:\n  - run: [true]\n",
        "1:15 `` matches any text",
    ),
    (
        "allow_dmesg that matches everything",
        "allow_dmesg: [ok, \".*\"]\nsteps:\n  - run: [true]\n",
        "1:19 `.*` matches any text",
    ),
    (
        "allow_dmesg alternation with nothing",
        "allow_dmesg: [\"WARNING|\"]\nsteps:\n  - run: [true]\n",
        "1:15 `WARNING|` matches any text",
    ),
    (
        "stdout that checks nothing",
        "steps:\n  - run: [true]\n    expect: {stdout: \"x*\"}\n",
        "3:22 `x*` matches any text",
    ),
    (
        "dmesg_not that fails always",
        "steps:\n  - run: [true]\n    expect: {dmesg_not: [\"(?:)\"]}\n",
        "3:26 `(?:)` matches any text",
    ),
    (
        "a regex too large compiled",
        "steps:\n  - run: [true]\n    expect: {stdout: \"(a{100}){100}\"}\n",
        "3:22 the regex compiles to more than 32 KiB",
    ),
    (
        "a Unicode class repeated",
        "steps:\n  - run: [true]\n    expect: {stdout: \"\\\\w{500}\"}\n",
        "3:22 the regex compiles to more than 32 KiB",
    ),
    (
        "a regex too long",
        "steps:\n  - run: [true]\n    expect: {stdout: \"LONG\"}\n",
        "3:22 the regex has 3000 bytes; at most 2048",
    ),
    (
        "too many regexes",
        "allow_dmesg: [MANY]\nsteps:\n  - run: [true]\n",
        "1:325 more than 64 regexes in one case",
    ),
    (
        "panic beside exit",
        "steps:\n  - run: [true]\n    expect: {exit: 0, panic: x}\n",
        "3:30 `expect.panic` ends the guest: `exit` beside it can never be checked",
    ),
    (
        "panic beside stdout and json",
        "steps:\n  - run: [true]\n    expect: {stdout: a, json: {}, panic: x}\n",
        "3:42 `expect.panic` ends the guest: `stdout`, `json` beside it",
    ),
    (
        "matrix expansion past the bound",
        "matrix:\n  - {name: big, v: BIG}\nsteps:\nPLACES",
        "the file past 256 KiB",
    ),
    (
        "put to a trailing dot",
        "steps:\n  - put: {from: case.yaml, to: /tmp/.}\n",
        "2:32 `/tmp/.` is not a plain file path",
    ),
    (
        "put to a trailing slash",
        "steps:\n  - put: {from: case.yaml, to: /tmp/x/}\n",
        "2:32 `/tmp/x/` is not a plain file path",
    ),
    (
        "put over the agent",
        "steps:\n  - put: {from: case.yaml, to: /sbin/pmem-lab-agent}\n",
        "2:32 `/sbin/pmem-lab-agent` is the lab's own",
    ),
    (
        "put over init",
        "steps:\n  - put: {from: case.yaml, to: /init}\n",
        "2:32 `/init` is the lab's own",
    ),
    (
        "put to a NUL byte",
        "steps:\n  - put: {from: case.yaml, to: \"/tmp/a\\0b\"}\n",
        "2:32 the guest path holds a NUL byte",
    ),
    (
        "put to a long path",
        "steps:\n  - put: {from: case.yaml, to: LONGTO}\n",
        "2:32 the guest path has 5206 bytes; at most 4095",
    ),
    (
        "put to a long name",
        "steps:\n  - put: {from: case.yaml, to: /tmp/LONGNAME}\n",
        "2:32 a part of `/tmp/",
    ),
    (
        "put to a placeholder",
        "steps:\n  - put: {from: case.yaml, to: \"/tmp/${ns.a.dev}\"}\n",
        "2:32 `/tmp/${ns.a.dev}`: a put path is not a template",
    ),
];

fn corpus_3_text(text: &str) -> String {
    let many: Vec<String> = (0..70).map(|i| format!("p{i}")).collect();
    let places = "  - run: [echo, \"${matrix.v}\"]\n".repeat(300);
    text.replace("LONGTO", &LONG_TO.replace("@", "a/"))
        .replace("LONGNAME", &"n".repeat(256))
        .replace("LONG", &"a".repeat(3000))
        .replace("MANY", &many.join(", "))
        .replace("BIG", &"v".repeat(1000))
        .replace("PLACES", &places)
}

const LONG_TO: &str = "/tmp/LONGPARTSx";

#[test]
fn round_three_inputs_are_refused_at_their_place() {
    let mut report = Vec::new();
    for (what, text, want) in CORPUS_3 {
        let text = corpus_3_text(
            &text.replace("LONGTO", &LONG_TO.replace("LONGPARTS", &"a/".repeat(2600))),
        );
        let got = first_error(&text);
        if !got.contains(want) || (want.as_bytes()[0].is_ascii_digit() && !got.starts_with(want)) {
            report.push(format!("{what}: want {want:?}\n    got  {got:?}"));
        }
    }
    assert!(
        report.is_empty(),
        "{} of {}:\n{}",
        report.len(),
        CORPUS_3.len(),
        report.join("\n")
    );
}

#[test]
fn every_malformed_case_is_refused_at_its_place() {
    let mut report = Vec::new();
    for (what, text, want) in CORPUS {
        let got = first_error(text);
        if !got.starts_with(want) {
            report.push(format!("{what}: want {want:?}\n    got  {got:?}"));
        }
    }
    assert!(
        report.is_empty(),
        "{} of {}:\n{}",
        report.len(),
        CORPUS.len(),
        report.join("\n")
    );
}

/// Each file alone: checked in well under a second.
#[test]
fn every_malformed_case_is_checked_quickly() {
    // A thousand heavy patterns (1.5 GB and a minute before the budget) and
    // a matrix whose cells expand past the file bound, beside the corpora.
    let heavy = format!(
        "allow_oracle: [{}]\nsteps:\n  - run: [true]\n",
        vec!["\"(a{100}){100}\""; 1000].join(", ")
    );
    let wide = format!(
        "matrix:\n  v: [{}]\nsteps:\n{}",
        (0..64)
            .map(|i| format!("v{i}{}", "x".repeat(3000)))
            .collect::<Vec<_>>()
            .join(", "),
        "  - run: [echo, \"${matrix.v}\"]\n".repeat(2000)
    );
    let texts = CORPUS
        .iter()
        .map(|(what, text, _)| (*what, text.to_string()))
        .chain(CORPUS_3.iter().map(|(what, text, _)| {
            (
                *what,
                corpus_3_text(
                    &text.replace("LONGTO", &LONG_TO.replace("LONGPARTS", &"a/".repeat(2600))),
                ),
            )
        }))
        .chain([("a thousand heavy regexes", heavy), ("a wide matrix", wide)]);
    for (what, text) in texts {
        let start = std::time::Instant::now();
        let _ = first_error(&text);
        let took = start.elapsed();
        assert!(took < std::time::Duration::from_secs(1), "{what}: {took:?}");
    }
    // The process's peak memory (all the tests of this binary, the alias
    // bomb and the 300 KiB file included) stays far below 100 MB.
    if let Some(peak_kib) = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
    {
        assert!(peak_kib < 100 * 1024, "peak memory {peak_kib} KiB");
    }
}

const GOOD: &str = "steps:\n  - run: [true]\n";

fn root_with(files: &[(&str, &str)]) -> tempfile::TempDir {
    let root = tempfile::tempdir().unwrap();
    for (path, text) in files {
        let p = root.path().join(path);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }
    root
}

/// (id, message) of every failed file.
fn problems(root: &Path) -> Vec<(String, String)> {
    load_dir(root)
        .unwrap()
        .iter()
        .filter_map(|l| Some((l.id.clone(), l.case.as_ref().err()?[0].message.clone())))
        .collect()
}

#[test]
fn an_empty_root_is_an_error() {
    let root = tempfile::tempdir().unwrap();
    let e = load_dir(root.path()).err().unwrap().to_string();
    assert!(e.starts_with("no case files (*.yaml) under"), "{e}");
    std::fs::write(root.path().join("notes.txt"), "x").unwrap();
    assert!(load_dir(root.path()).is_err());
}

#[test]
fn two_files_for_one_id_are_both_refused() {
    let root = root_with(&[("a/x.yaml", GOOD), ("a/x.yml", GOOD), ("a/y.yaml", GOOD)]);
    let p = problems(root.path());
    assert_eq!(p.len(), 2, "{p:?}");
    assert!(p
        .iter()
        .all(|(id, m)| id == "a/x" && m.starts_with("two case files make the id `a/x`")));
}

#[test]
fn directory_symlinks_are_not_followed() {
    let root = root_with(&[("a/x.yaml", GOOD)]);
    // A loop back into the tree and a way out of it.
    std::os::unix::fs::symlink(root.path(), root.path().join("a/loop")).unwrap();
    std::os::unix::fs::symlink("/", root.path().join("out")).unwrap();
    let loaded = load_dir(root.path()).unwrap();
    assert_eq!(loaded.len(), 1);
    assert!(loaded[0].case.is_ok());
}

#[test]
fn file_symlinks_must_stay_inside_and_be_regular() {
    let outside = tempfile::tempdir().unwrap();
    std::fs::write(outside.path().join("o.yaml"), GOOD).unwrap();
    let root = root_with(&[("a/x.yaml", GOOD)]);
    let link = |target: &Path, name: &str| {
        std::os::unix::fs::symlink(target, root.path().join(name)).unwrap()
    };
    link(&root.path().join("a/x.yaml"), "inside.yaml");
    link(&outside.path().join("o.yaml"), "escape.yaml");
    link(Path::new("/dev/zero"), "zero.yaml");
    link(Path::new("/nonexistent.yaml"), "broken.yaml");
    let p = problems(root.path());
    let msg = |id: &str| p.iter().find(|(i, _)| i == id).map(|(_, m)| m.clone());
    assert_eq!(msg("inside"), None, "{p:?}");
    assert!(
        msg("escape")
            .unwrap()
            .starts_with("a symlink out of the cases root"),
        "{p:?}"
    );
    assert!(
        msg("zero")
            .unwrap()
            .starts_with("a symlink out of the cases root"),
        "{p:?}"
    );
    assert!(
        msg("broken").unwrap().starts_with("a broken symlink"),
        "{p:?}"
    );
}

#[test]
fn a_fifo_is_refused_without_being_opened() {
    let root = root_with(&[("a/x.yaml", GOOD)]);
    let fifo = root.path().join("a/pipe.yaml");
    let status = std::process::Command::new("mkfifo").arg(&fifo).status();
    // Coreutils is everywhere the lab runs: a test that passes without its
    // FIFO would prove nothing.
    assert!(
        status.is_ok_and(|s| s.success()),
        "mkfifo (coreutils) is needed"
    );
    let p = problems(root.path());
    assert_eq!(p.len(), 1, "{p:?}");
    assert!(p[0].1.starts_with("not a regular file"), "{p:?}");
}

#[test]
fn a_huge_file_is_refused_unread() {
    let big = format!("steps:\n  - run: [true]\n#{}\n", "x".repeat(300 * 1024));
    let root = root_with(&[("a/big.yaml", &big)]);
    let p = problems(root.path());
    assert_eq!(
        p[0].1,
        "larger than 256 KiB: a case file (and the known-failure list) stays small"
    );
}

#[test]
fn unsafe_names_are_refused() {
    let root = root_with(&[
        ("a b/x.yaml", GOOD),
        (".hidden/y.yaml", GOOD),
        ("ok/z.yaml", GOOD),
    ]);
    let p = problems(root.path());
    assert_eq!(p.len(), 2, "{p:?}");
    assert!(
        p.iter().any(|(_, m)| m.starts_with("`a b` in the case id")),
        "{p:?}"
    );
    assert!(
        p.iter()
            .any(|(_, m)| m.starts_with("`.hidden` in the case id")),
        "{p:?}"
    );
}

#[test]
fn one_bad_file_does_not_hide_the_others() {
    let root = root_with(&[
        ("a/bad1.yaml", "steps: []\n"),
        ("a/good.yaml", GOOD),
        ("b/bad2.yaml", "steps:\n  - run: [true]\n    timeout: 0s\n"),
    ]);
    let p = problems(root.path());
    let ids: Vec<&str> = p.iter().map(|(i, _)| i.as_str()).collect();
    assert_eq!(ids, ["a/bad1", "b/bad2"]);
}
