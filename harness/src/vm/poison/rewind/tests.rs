use super::*;
use std::collections::HashMap;

const CODE: u64 = 0xffff_ffff_8100_0000;
const LINE: u64 = 0x7f00_0000_1040;

/// Guest memory: the line's 64 bytes are 0x40..0x80 (byte i of the line
/// holds 0x40 + i), code at CODE.
struct Mem(HashMap<u64, u8>);

impl Mem {
    fn new(code: &[u8]) -> Mem {
        let mut m = HashMap::new();
        for i in 0..64u64 {
            m.insert(LINE + i, 0x40 + i as u8);
        }
        for (i, b) in code.iter().enumerate() {
            m.insert(CODE + i as u64, *b);
        }
        Mem(m)
    }
    fn read(&self, a: u64, n: usize) -> Option<Vec<u8>> {
        (0..n as u64)
            .map(|i| self.0.get(&(a + i)).copied())
            .collect()
    }
}

fn regs(set: &[(Register, u64)], rip: u64) -> Regs {
    let mut r = Regs {
        rip,
        rflags: 0x246,
        ..Regs::default()
    };
    for (reg, v) in set {
        r.set_full(*reg, *v);
    }
    r
}

/// Decode `code` at CODE from its start (as from a symbol), stopped at
/// `rip_offset`, and plan.
fn plan_at(code: &[u8], rip_offset: u64, r: Regs) -> Result<Rewind, NotRewound> {
    plan_counted(code, rip_offset, r, None)
}

/// [`plan_at`] with the count a whole `rep movsb` began with.
fn plan_counted(
    code: &[u8],
    rip_offset: u64,
    r: Regs,
    rep_count: Option<u64>,
) -> Result<Rewind, NotRewound> {
    let mem = Mem::new(code);
    let (before, at) = decode_from(code, CODE, CODE + rip_offset);
    let mut read = |a: u64, n: usize| mem.read(a, n);
    plan(Stop {
        regs: Regs {
            rip: CODE + rip_offset,
            ..r
        },
        line_va: LINE,
        before,
        at,
        rep_count,
        mem: &mut read,
    })
}

#[test]
fn a_plain_load_goes_back_to_its_first_byte_and_keeps_its_inputs() {
    // nop; movzbl (%rax),%edx (getuser.S); ret
    let code = [0x90, 0x0f, 0xb6, 0x10, 0xc3];
    let r = regs(&[(Register::RAX, LINE + 5), (Register::RDX, 0x45)], 0);
    let w = plan_at(&code, 4, r).unwrap();
    assert_eq!(w.regs.rip, CODE + 1);
    assert_eq!(w.instruction, "movzbl (%rax),%edx");
    assert_eq!(w.regs.gpr, r.gpr);
    assert!(w.writes.is_empty() && w.note.is_none());
}

#[test]
fn a_load_that_overwrote_its_base_register_gets_it_back_from_the_line() {
    // mov 0x8(%rax),%rax: the line's bytes at +0x10 were loaded.
    let code = [0x48, 0x8b, 0x40, 0x08];
    let loaded = u64::from_le_bytes([0x50, 0x51, 0x52, 0x53, 0x54, 0x55, 0x56, 0x57]);
    let w = plan_at(&code, 4, regs(&[(Register::RAX, loaded)], 0)).unwrap();
    assert_eq!(w.regs.rip, CODE);
    assert_eq!(w.regs.get(Register::RAX), Some(LINE + 0x10 - 8));
    // A byte that repeats in the line cannot be solved: left, with why.
    let code = [0x8a, 0x00]; // mov (%rax),%al
    let mut mem = Mem::new(&code);
    mem.0.insert(LINE + 3, 0x41);
    let (before, at) = decode_from(&code, CODE, CODE + 2);
    let mut read = |a: u64, n: usize| mem.read(a, n);
    let e = plan(Stop {
        regs: regs(&[(Register::RAX, 0x41)], CODE + 2),
        line_va: LINE,
        before,
        at,
        rep_count: None,
        mem: &mut read,
    })
    .unwrap_err();
    assert!(
        matches!(e, NotRewound::Ambiguous { candidates: 2, .. }),
        "{e}"
    );
}

#[test]
fn register_and_memory_read_modify_writes_are_inverted() {
    // add (%rsi),%rbx: rbx = old + line[0..8]
    let v = u64::from_le_bytes([0x40, 0x41, 0x42, 0x43, 0x44, 0x45, 0x46, 0x47]);
    let code = [0x48, 0x03, 0x1e];
    let w = plan_at(
        &code,
        3,
        regs(
            &[
                (Register::RSI, LINE),
                (Register::RBX, 1000u64.wrapping_add(v)),
            ],
            0,
        ),
    )
    .unwrap();
    assert_eq!(w.regs.get(Register::RBX), Some(1000));
    // addq $1,(%rdi)... here: incb 0x2(%rdi): the line holds old + 1.
    let code = [0xfe, 0x47, 0x02];
    let w = plan_at(&code, 3, regs(&[(Register::RDI, LINE)], 0)).unwrap();
    assert_eq!(w.writes, [(LINE + 2, vec![0x41])]);
    // xchg %rax,(%rdi): rax holds the line's old bytes, the line rax's.
    let code = [0x48, 0x87, 0x07];
    let w = plan_at(
        &code,
        3,
        regs(&[(Register::RDI, LINE + 8), (Register::RAX, 7)], 0),
    )
    .unwrap();
    assert_eq!(
        w.regs.get(Register::RAX),
        Some(u64::from_le_bytes([
            0x48, 0x49, 0x4a, 0x4b, 0x4c, 0x4d, 0x4e, 0x4f
        ]))
    );
    assert_eq!(w.writes, [(LINE + 8, 7u64.to_le_bytes().to_vec())]);
    // lock xadd %eax,(%rdi)
    let code = [0xf0, 0x0f, 0xc1, 0x07];
    let line = u32::from_le_bytes([0x40, 0x41, 0x42, 0x43]) as u64;
    let w = plan_at(
        &code,
        4,
        regs(&[(Register::RDI, LINE), (Register::RAX, 5)], 0),
    )
    .unwrap();
    assert_eq!(w.writes, [(LINE, vec![5, 0, 0, 0])]);
    assert_eq!(
        w.regs.get(Register::EAX),
        Some(line.wrapping_sub(5) & 0xffff_ffff)
    );
    // or (%rsi),%rbx cannot be inverted: said.
    let code = [0x48, 0x0b, 0x1e];
    let w = plan_at(&code, 3, regs(&[(Register::RSI, LINE)], 0)).unwrap();
    assert!(w.note.unwrap().contains("Or"));
}

#[test]
fn push_pop_and_plain_string_loads_move_their_pointers_back() {
    // pushq (%rax)
    let code = [0xff, 0x30];
    let w = plan_at(
        &code,
        2,
        regs(&[(Register::RAX, LINE), (Register::RSP, 0x1000)], 0),
    )
    .unwrap();
    assert_eq!(w.regs.get(Register::RSP), Some(0x1008));
    // lodsq
    let code = [0x48, 0xad];
    let w = plan_at(&code, 2, regs(&[(Register::RSI, LINE + 8)], 0)).unwrap();
    assert_eq!((w.regs.get(Register::RSI), w.regs.rip), (Some(LINE), CODE));
}

#[test]
fn a_rep_movs_stopped_after_one_element_steps_back_one() {
    // QEMU 7.2: RIP still on `rep movsb`, one byte done.
    let code = [0xf3, 0xa4, 0xc3];
    let r = regs(
        &[
            (Register::RSI, LINE + 1),
            (Register::RDI, 0x5001),
            (Register::RCX, 4095),
        ],
        0,
    );
    let w = plan_at(&code, 0, r).unwrap();
    assert_eq!(w.regs.rip, CODE);
    assert_eq!(
        (
            w.regs.get(Register::RSI),
            w.regs.get(Register::RDI),
            w.regs.get(Register::RCX)
        ),
        (Some(LINE), Some(0x5000), Some(4096))
    );
    // rep movsq, 8 bytes.
    let code = [0xf3, 0x48, 0xa5];
    let r = regs(
        &[
            (Register::RSI, LINE + 8),
            (Register::RDI, 0x5008),
            (Register::RCX, 1),
        ],
        0,
    );
    assert_eq!(
        plan_at(&code, 0, r).unwrap().regs.get(Register::RSI),
        Some(LINE)
    );
}

#[test]
fn a_whole_rep_movsb_goes_back_to_the_line() {
    // QEMU 10: after `rep movsb`, RCX 0; the copy of 4096 began 0x40
    // before the line (RDX known, as in copy_mc_enhanced_fast_string).
    let code = [0xf3, 0xa4, 0xc3];
    let start = LINE - 0x40;
    let r = regs(
        &[
            (Register::RSI, start + 4096),
            (Register::RDI, 0x9000 + 4096),
            (Register::RCX, 0),
        ],
        0,
    );
    let w = plan_counted(&code, 2, r, Some(4096)).unwrap();
    assert_eq!(w.regs.rip, CODE);
    assert_eq!(
        (
            w.regs.get(Register::RSI),
            w.regs.get(Register::RDI),
            w.regs.get(Register::RCX)
        ),
        (Some(LINE), Some(0x9040), Some(4096 - 0x40))
    );
    // The copy began inside the line: back to where it began.
    let r = regs(
        &[
            (Register::RSI, LINE + 0x20 + 100),
            (Register::RDI, 0x9000 + 100),
            (Register::RCX, 0),
        ],
        0,
    );
    let w = plan_counted(&code, 2, r, Some(100)).unwrap();
    assert_eq!(w.regs.get(Register::RSI), Some(LINE + 0x20));
    // Without the count: to the line's start, and said.
    let w = plan_counted(&code, 2, r, None).unwrap();
    assert_eq!(w.regs.get(Register::RSI), Some(LINE));
    assert!(w.note.unwrap().contains("whole rep"));
}

#[test]
fn a_load_of_another_address_is_not_rewound() {
    // mov (%rsi),%al with RSI elsewhere: not the watched line.
    let code = [0x8a, 0x06];
    let e = plan_at(&code, 2, regs(&[(Register::RSI, 0x1000)], 0)).unwrap_err();
    assert!(
        matches!(e, NotRewound::OtherAddress { read: 0x1000, .. }),
        "{e}"
    );
    // RIP after a jump: nothing ends there that reads.
    let e = plan_at(&[0xc3], 1, regs(&[], 0)).unwrap_err();
    assert!(
        matches!(
            e,
            NotRewound::NotPlainLoad(_) | NotRewound::NoMemoryOperand(_)
        ),
        "{e}"
    );
}

#[test]
fn the_vote_finds_the_boundary_a_prefix_like_byte_before_it_hides() {
    // mov $0x48,%cl; mov (%rsi),%eax: from the byte 0x48, `48 8b 06` would
    // also end at RIP. Chains from further back agree on `8b 06`.
    let mut code = vec![
        0x55, // push %rbp
        0x48, 0x89, 0xe5, // mov %rsp,%rbp
        0x48, 0x83, 0xec, 0x10, // sub $0x10,%rsp
        0x31, 0xc0, // xor %eax,%eax
        0xb1, 0x48, // mov $0x48,%cl
        0x8b, 0x06, // mov (%rsi),%eax
    ];
    let rip = CODE + code.len() as u64;
    code.extend([0xc3, 0x90, 0x90]);
    let (i, anchor) = vote(&code, CODE, rip).unwrap();
    assert_eq!(text(&i), "mov (%rsi),%eax");
    let Anchor::Vote { agreeing, of } = anchor else {
        panic!()
    };
    assert!(agreeing * 2 > of, "{agreeing}/{of}");
}
