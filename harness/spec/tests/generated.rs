//! Generated input for the loader: arbitrary text, and YAML-shaped text
//! built from the case vocabulary. Whatever comes in, the loader answers
//! with a case or located errors: no panic, and quickly.

use pmem_lab_spec::case::load_str;
use proptest::prelude::*;
use std::path::Path;
use std::time::{Duration, Instant};

/// Words a case file is made of, to reach deep into the checks.
const WORDS: &[&str] = &[
    "steps:",
    "machine:",
    "setup:",
    "namespaces:",
    "nvdimms:",
    "matrix:",
    "- ",
    "  ",
    "\n",
    "run: [true]",
    "sh: x",
    "size: 1G",
    "size: 99999T",
    "mode: devdax",
    "mode: fsdax",
    "align: 2M",
    "name: a",
    "namespace: a",
    "offset: 18446744073709551615",
    "length: 0",
    "timeout: 0s",
    "repeat: 4294967295",
    "exit: 256",
    "cpu: 9",
    "cpus: 2",
    "map:",
    "touch:",
    "consume:",
    "inject:",
    "inject_error:",
    "clear:",
    "scrub: ACPI.NFIT",
    "expect_badblocks:",
    "errors: [{offset: 1M}]",
    "${matrix.x}",
    "${ns.a.dev}",
    "{",
    "}",
    "[",
    "]",
    ",",
    "&a",
    "*a",
    ": ",
    "'",
    "\"",
    "\t",
    "#",
    "signals: {wait: 1s}",
    "mce_kill: early",
    "block: 8",
    "count: 0",
    "region: 0",
    "kind: scrub",
    "from: start",
    // Round three: the surfaces added after the first hardening.
    "put: {from: case.yaml, to: /tmp/x}",
    "to: /tmp/.",
    "to: /sbin/pmem-lab-agent",
    "compile: true",
    "allow_oracle: ['']",
    "allow_dmesg: [x, '.*']",
    "stdout: '(a{100}){100}'",
    "dmesg_not: ['\\w{500}']",
    "panic: x",
    "e820_pmem: [{at: 1G, size: 1G}]",
    "bus: e820",
    "bus: cxl",
    "cxl: [{size: 256M, lsa_size: 64G}]",
    "cxl_regions: [{devices: [0]}]",
    "reconfigure: {namespace: a, mode: fsdax, align: 1G}",
    "cxl_inject_poison: {dpa: 256M}",
    "expect_cxl_poison: {records: []}",
    "align: 1G",
    "size: 16M",
    "matrix: {v: [a, b]}",
    "cold_boot: true",
];

/// Generated known-failure lists: an entry list built from its vocabulary.
const KNOWN_WORDS: &[&str] = &[
    "- ",
    "case: ",
    "reason: ",
    "kernel: ",
    "a",
    "t/case",
    "t/*",
    "*",
    "'>=6.12, <6.14'",
    "'>=6.x'",
    "'<6.1, >6.2'",
    "''",
    "'=6'",
    "'>= 6.1 ,'",
    "\n",
    "  ",
    "{",
    "}",
    ",",
    "'",
    "&a",
    "*a",
    "99999999999999999999",
];

fn check(text: &str) {
    let start = Instant::now();
    let result = load_str("t/case", Path::new("cases/t/case.yaml"), text);
    if let Err(errors) = &result {
        assert!(!errors.is_empty());
    }
    assert!(start.elapsed() < Duration::from_secs(1), "{text:?}");
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_text_never_panics(text in "\\PC{0,400}") {
        check(&text);
    }

    #[test]
    fn known_failure_lists_never_panic(words in proptest::collection::vec(0..KNOWN_WORDS.len(), 0..60)) {
        let text: String = words.iter().map(|&i| KNOWN_WORDS[i]).collect();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("known-failures.yaml");
        std::fs::write(&path, &text).unwrap();
        let start = Instant::now();
        if let Err(errors) = pmem_lab_spec::known::load(&path, &["t/case", "a"]) {
            prop_assert!(!errors.is_empty());
        }
        prop_assert!(start.elapsed() < Duration::from_secs(1), "{text:?}");
    }

    #[test]
    fn case_shaped_text_never_panics(words in proptest::collection::vec(0..WORDS.len(), 0..120)) {
        let text: String = words.iter().map(|&i| WORDS[i]).collect();
        check(&text);
    }
}
