//! How often the poison model's vote (harness/src/vm/poison/rewind.rs) finds
//! the true start of a load when no symbol anchors the decode: over a
//! kernel's whole text, every instruction that reads memory, decoded
//! exactly from its function's start, is taken as a stop (RIP after it)
//! and the vote over the window before it is compared with the truth.
//!
//!     objcopy -O binary --only-section=.text vmlinux text.bin
//!     cargo run --release -p pmem-lab-harness --example rewind-vote -- text.bin System.map
//!
//! docs/poison.md quotes its figures.
use iced_x86::{Decoder, DecoderOptions, InstructionInfoFactory, OpAccess};
use pmem_lab_harness::vm::poison::rewind;
use pmem_lab_harness::vm::poison::watcher::{symbol, TextSymbols};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, text, map] = &args[..] else {
        eprintln!("usage: rewind-vote TEXT.BIN SYSTEM.MAP");
        std::process::exit(2);
    };
    let text = std::fs::read(text).expect("text");
    let map = std::fs::read_to_string(map).expect("System.map");
    // The symbols the watcher decodes kernel loads from.
    let base = symbol(&map, "_text").expect("_text in System.map");
    let symbols = TextSymbols::parse(&map, 0);
    let (all, etext) = symbols.starts();
    let starts: Vec<u64> = all
        .iter()
        .copied()
        .filter(|a| (base..etext).contains(a))
        .collect();
    let (mut loads, mut right, mut wrong, mut none) = (0u64, 0u64, 0u64, 0u64);
    let mut info = InstructionInfoFactory::new();
    for w in starts.windows(2) {
        let (s, e) = (w[0], w[1].min(etext));
        let code = &text[(s - base) as usize..(e - base) as usize];
        let mut d = Decoder::with_ip(64, code, s, DecoderOptions::NONE);
        while d.can_decode() {
            let i = d.decode();
            if i.is_invalid() {
                break;
            }
            let reads = info
                .info(&i)
                .used_memory()
                .iter()
                .any(|m| matches!(m.access(), OpAccess::Read | OpAccess::ReadWrite));
            if !reads || i.is_string_instruction() {
                continue;
            }
            loads += 1;
            let rip = i.next_ip();
            let from = rip.saturating_sub(rewind::VOTE_WINDOW).max(base);
            let to = (rip + rewind::MAX_INSTRUCTION as u64).min(etext);
            let window = &text[(from - base) as usize..(to - base) as usize];
            match rewind::vote(window, from, rip) {
                Some((v, _)) if v.ip() == i.ip() => right += 1,
                Some(_) => wrong += 1,
                None => none += 1,
            }
        }
    }
    println!(
        "{loads} loads; vote over {} bytes: {right} right ({:.3}%), {wrong} wrong, {none} undecided",
        rewind::VOTE_WINDOW,
        100.0 * right as f64 / loads as f64
    );
}
