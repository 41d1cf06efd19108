//! Putting a vCPU back at the load that consumed poison, as hardware leaves
//! it when the load raises #MC before it retires.
//!
//! Under TCG, QEMU reports an x86 read watch point after the access: it
//! executes the instruction once more with the watch point off and stops
//! after it (accel/tcg/watchpoint.c; x86 does not ask for "stop before
//! access"). So at the stop the load has retired: RIP is past it, its
//! destination is written, its side effects (RSI/RDI of a string move, RSP
//! of a push, a read-modify-write's store) are done. Hardware would have
//! raised the machine check with RIP at the load (MCG_STATUS.EIPV) and
//! nothing of it done; the kernel's recovery depends on that: the exception
//! table is looked up by the load's own address (`ex_get_fixup_type(m->ip)`
//! in arch/x86/kernel/cpu/mce/severity.c), `is_copy_from_user()` decodes
//! the instruction at RIP to find the user address, and a user program's
//! SIGBUS handler that returns runs the load again.
//!
//! The lab finds the instruction that ends at the stop's RIP by decoding
//! (iced-x86): from the start of the enclosing kernel symbol when one is
//! known (System.map; exact), otherwise by a vote of forward decodes from
//! every byte of a window before RIP (x86 decoding re-synchronises within a
//! few instructions; [`vote`]). It then undoes what the instruction did
//! ([`plan`]): RIP to its first byte, registers it moved or combined put
//! back from the values they now hold and the memory's bytes (which QEMU
//! did not corrupt), a store it made put back. What it cannot undo is said
//! in the [`Rewind::note`] that steps.log prints, and in docs/poison.md.
//!
//! String moves are special: QEMU 7.2 stops a `rep movs` on the
//! instruction itself after one element (RIP unchanged, RSI/RDI/RCX moved
//! by one); QEMU 10.0.2 runs the whole `rep movsb` before it stops.

use iced_x86::{
    Decoder, DecoderOptions, FlowControl, Formatter, GasFormatter, Instruction, InstructionInfo,
    InstructionInfoFactory, Mnemonic, OpAccess, OpKind, Register,
};

/// The longest x86 instruction.
pub const MAX_INSTRUCTION: usize = 15;
/// How far before RIP the vote starts decoding (see [`vote`]).
pub const VOTE_WINDOW: u64 = 64;

/// EFLAGS.DF: string instructions count down.
pub const DIRECTION_FLAG: u64 = 1 << 10;
/// EFLAGS.ZF.
const ZERO_FLAG: u64 = 1 << 6;

/// The general registers in gdb's amd64 order.
const GPR: [Register; 16] = [
    Register::RAX,
    Register::RBX,
    Register::RCX,
    Register::RDX,
    Register::RSI,
    Register::RDI,
    Register::RBP,
    Register::RSP,
    Register::R8,
    Register::R9,
    Register::R10,
    Register::R11,
    Register::R12,
    Register::R13,
    Register::R14,
    Register::R15,
];

/// A vCPU's general registers (gdb's order: rax rbx rcx rdx rsi rdi rbp
/// rsp r8..r15), RIP and RFLAGS.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Regs {
    pub gpr: [u64; 16],
    pub rip: u64,
    pub rflags: u64,
}

/// Where a general register's bits sit: its slot in [`Regs::gpr`], shift
/// and width (AH is bits 8..16 of RAX).
fn field(r: Register) -> Option<(usize, u32, u32)> {
    if !r.is_gpr() {
        return None;
    }
    let slot = GPR.iter().position(|g| *g == r.full_register())?;
    let shift = match r {
        Register::AH | Register::BH | Register::CH | Register::DH => 8,
        _ => 0,
    };
    Some((slot, shift, 8 * r.size() as u32))
}

/// A register's name as GNU as writes it, without the `%`.
trait Name {
    fn name(self) -> String;
}

impl Name for Register {
    fn name(self) -> String {
        format!("{self:?}").to_lowercase()
    }
}

fn mask(bits: u32) -> u64 {
    if bits >= 64 {
        u64::MAX
    } else {
        (1 << bits) - 1
    }
}

impl Regs {
    /// The value of `r` (any general register, any width).
    pub fn get(&self, r: Register) -> Option<u64> {
        let (slot, shift, bits) = field(r)?;
        Some((self.gpr[slot] >> shift) & mask(bits))
    }

    /// Put `value` into `r`'s bits, leaving the rest of the register.
    fn put(&mut self, r: Register, value: u64) {
        if let Some((slot, shift, bits)) = field(r) {
            let m = mask(bits) << shift;
            self.gpr[slot] = (self.gpr[slot] & !m) | ((value << shift) & m);
        }
    }

    fn full(&self, r: Register) -> u64 {
        self.get(r.full_register()).unwrap_or(0)
    }

    fn set_full(&mut self, r: Register, v: u64) {
        self.put(r.full_register(), v);
    }

    /// The general registers that differ from `other`, by gdb number.
    pub fn changed(&self, other: &Regs) -> Vec<(u32, u64)> {
        (0..16)
            .filter(|i| self.gpr[*i] != other.gpr[*i])
            .map(|i| (i as u32, self.gpr[i]))
            .collect()
    }
}

/// Where the lab found the instruction's first byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Anchor {
    /// Decoded from the start of the enclosing symbol: exact.
    Symbol,
    /// The boundary most forward decodes from the window agreed on.
    Vote { agreeing: usize, of: usize },
}

/// Decode `code` (at virtual `va`) forward from its first byte: the
/// instruction that ends exactly at `rip`, if the decode lands there, and
/// the one at `rip`.
pub fn decode_from(code: &[u8], va: u64, rip: u64) -> (Option<Instruction>, Option<Instruction>) {
    let mut d = Decoder::with_ip(64, code, va, DecoderOptions::NONE);
    let mut before = None;
    while d.can_decode() {
        let i = d.decode();
        if i.is_invalid() {
            return (None, None);
        }
        if i.ip() == rip {
            return (before, Some(i));
        }
        if i.ip() > rip {
            return (None, None);
        }
        before = (i.next_ip() == rip).then_some(i);
        if i.next_ip() == rip && !d.can_decode() {
            return (before, None);
        }
    }
    (before, None)
}

/// The instruction that ends at `rip` when no instruction boundary before
/// it is known (user code, module code): decode forward from every byte of
/// `code` (which starts at `va` and runs past `rip`), keep the chains that
/// land exactly on `rip`, and take the last instruction most of them agree
/// on. x86 decoding re-synchronises after a few instructions, so chains
/// from far enough back agree on the true boundary; ties go to the chain
/// from furthest back. `Anchor::Vote` says how many agreed.
pub fn vote(code: &[u8], va: u64, rip: u64) -> Option<(Instruction, Anchor)> {
    let mut counts: Vec<(u64, usize, Instruction)> = Vec::new();
    let mut of = 0;
    for start in 0..(rip.saturating_sub(va) as usize).min(code.len()) {
        let (before, _) = decode_from(&code[start..], va + start as u64, rip);
        let Some(i) = before else { continue };
        of += 1;
        match counts.iter_mut().find(|(ip, _, _)| *ip == i.ip()) {
            Some(c) => c.1 += 1,
            None => counts.push((i.ip(), 1, i)),
        }
    }
    // The first of the most agreed (counts keeps first-seen order, i.e.
    // the chain from furthest back).
    let best = counts.iter().map(|c| c.1).max()?;
    let (_, agreeing, i) = counts.into_iter().find(|c| c.1 == best)?;
    Some((i, Anchor::Vote { agreeing, of }))
}

/// `i` as GNU as writes it.
pub fn text(i: &Instruction) -> String {
    let mut f = GasFormatter::new();
    let mut s = String::new();
    f.format(i, &mut s);
    s
}

/// How to put the vCPU back before the load.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rewind {
    /// The registers as they must be (RIP at the load).
    pub regs: Regs,
    /// Bytes to put back where the instruction stored (virtual address).
    pub writes: Vec<(u64, Vec<u8>)>,
    /// The instruction, as GNU as writes it.
    pub instruction: String,
    /// What is left as QEMU made it rather than as hardware leaves it.
    pub note: Option<String>,
}

/// Reads guest memory at a virtual address of the stopped vCPU.
pub type ReadMem<'a> = dyn FnMut(u64, usize) -> Option<Vec<u8>> + 'a;

fn le(bytes: &[u8]) -> u64 {
    let mut b = [0u8; 8];
    b[..bytes.len().min(8)].copy_from_slice(&bytes[..bytes.len().min(8)]);
    u64::from_le_bytes(b)
}

fn sign_extend(v: u64, bits: u32) -> u64 {
    if bits >= 64 {
        return v;
    }
    let s = 64 - bits;
    (((v << s) as i64) >> s) as u64
}

/// What the vCPU looked like at the stop.
pub struct Stop<'a> {
    pub regs: Regs,
    /// The watched line's virtual address (the watch point's, 64 bytes).
    pub line_va: u64,
    /// The instruction that ends at RIP, and the one at RIP.
    pub before: Option<Instruction>,
    pub at: Option<Instruction>,
    /// The element count a whole `rep movsb` started with, where the lab
    /// knows it (RDX in copy_mc_enhanced_fast_string).
    pub rep_count: Option<u64>,
    pub mem: &'a mut ReadMem<'a>,
}

/// The string instructions that read memory, by what they read through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StringRead {
    /// `movs`: reads through RSI, stores through RDI.
    Movs,
    /// `lods`: reads through RSI.
    Lods,
    /// `cmps`: reads through both.
    Cmps,
    /// `scas`: reads through RDI.
    Scas,
}

impl StringRead {
    fn of(i: &Instruction) -> Option<StringRead> {
        if !i.is_string_instruction() {
            return None;
        }
        Some(match i.mnemonic() {
            Mnemonic::Movsb | Mnemonic::Movsw | Mnemonic::Movsd | Mnemonic::Movsq => {
                StringRead::Movs
            }
            Mnemonic::Lodsb | Mnemonic::Lodsw | Mnemonic::Lodsd | Mnemonic::Lodsq => {
                StringRead::Lods
            }
            Mnemonic::Cmpsb | Mnemonic::Cmpsw | Mnemonic::Cmpsd | Mnemonic::Cmpsq => {
                StringRead::Cmps
            }
            Mnemonic::Scasb | Mnemonic::Scasw | Mnemonic::Scasd | Mnemonic::Scasq => {
                StringRead::Scas
            }
            _ => return None,
        })
    }

    /// Which of RSI and RDI it moves.
    fn pointers(self) -> (bool, bool) {
        match self {
            StringRead::Lods => (true, false),
            StringRead::Scas => (false, true),
            StringRead::Movs | StringRead::Cmps => (true, true),
        }
    }
}

fn is_string_read(i: &Instruction) -> bool {
    StringRead::of(i).is_some()
}

fn has_rep(i: &Instruction) -> bool {
    i.has_rep_prefix() || i.has_repe_prefix() || i.has_repne_prefix()
}

/// Which of RSI and RDI a string instruction moves.
fn string_pointers(i: &Instruction) -> (bool, bool) {
    StringRead::of(i).map_or((true, true), StringRead::pointers)
}

fn element(i: &Instruction) -> u64 {
    (i.memory_size().size() as u64).max(1)
}

/// Put a string instruction's pointers back by `n` elements (and RCX up
/// by `n` for a rep).
fn string_back(i: &Instruction, regs: &mut Regs, n: u64) {
    let w = element(i) * n;
    let (si, di) = string_pointers(i);
    if si {
        let v = regs.full(Register::RSI).wrapping_sub(w);
        regs.set_full(Register::RSI, v);
    }
    if di {
        let v = regs.full(Register::RDI).wrapping_sub(w);
        regs.set_full(Register::RDI, v);
    }
    if has_rep(i) {
        let v = regs.full(Register::RCX).wrapping_add(n);
        regs.set_full(Register::RCX, v);
    }
}

/// The pointer through which a string instruction reads the line.
fn string_source(i: &Instruction, regs: &Regs) -> u64 {
    match string_pointers(i) {
        (false, true) => regs.full(Register::RDI),
        _ => regs.full(Register::RSI),
    }
}

fn in_line(line: u64, a: u64, len: u64) -> bool {
    a < line + super::LINE && a.wrapping_add(len) > line
}

/// Why a stop is left as QEMU made it (shown in steps.log: the model's
/// accuracy, docs/poison.md).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum NotRewound {
    #[error("a string instruction counting down (EFLAGS.DF) is not rewound")]
    CountingDown,
    #[error("no instruction that reads memory ends at RIP")]
    NoInstruction,
    #[error("`{0}` is not a plain load")]
    NotPlainLoad(String),
    #[error("`{0}` has no memory operand")]
    NoMemoryOperand(String),
    #[error("`{0}` does not read memory")]
    NoRead(String),
    #[error("`{0}` wrote a register of its own address")]
    OwnAddressRegister(String),
    #[error("`{instruction}` overwrote its base register and {candidates} addresses of the line hold the loaded value")]
    Ambiguous {
        instruction: String,
        candidates: usize,
    },
    #[error("`{0}`: cannot compute its address")]
    NoAddress(String),
    #[error("`{instruction}` read {read:#x}, not the watched line {line:#x}")]
    OtherAddress {
        instruction: String,
        read: u64,
        line: u64,
    },
    #[error("`{0}` stopped before the watched line")]
    BeforeLine(String),
    #[error("cannot read the line")]
    LineUnreadable,
    #[error("no source value")]
    NoSource,
}

/// Work out how to put the vCPU back before the load of the watched line.
/// `Err` says why it cannot (the stop is then left as QEMU made it).
pub fn plan(stop: Stop<'_>) -> Result<Rewind, NotRewound> {
    let Stop {
        regs,
        line_va,
        before,
        at,
        rep_count,
        mem,
    } = stop;
    // Counting down: no kernel copy does, and the lab does not model it.
    if regs.rflags & DIRECTION_FLAG != 0
        && at.as_ref().or(before.as_ref()).is_some_and(is_string_read)
    {
        return Err(NotRewound::CountingDown);
    }
    if let Some(r) = at.and_then(|i| rep_after_one(&i, regs, line_va)) {
        return Ok(r);
    }
    let i = before.ok_or(NotRewound::NoInstruction)?;
    if i.flow_control() != FlowControl::Next && !is_string_read(&i) {
        return Err(NotRewound::NotPlainLoad(text(&i)));
    }
    let mut back = regs;
    back.rip = i.ip();
    if is_string_read(&i) {
        return string_whole(&i, back, line_va, rep_count);
    }
    let load = Load::of(i)?;
    let (ea, solved) = load.address(&regs, &mut back, line_va, mem)?;
    if !in_line(line_va, ea, load.size.max(1)) {
        return Err(NotRewound::OtherAddress {
            instruction: text(&i),
            read: ea,
            line: line_va,
        });
    }
    let now = mem(ea, load.size as usize).map(|b| le(&b));
    let undone = load.undo(&regs, &mut back, ea, now)?;
    Ok(Rewind {
        regs: back,
        writes: undone.writes,
        instruction: text(&i),
        note: undone.note.or(solved),
    })
}

/// QEMU 7.2 stopped on a rep string instruction after one element of the
/// line: one element back.
fn rep_after_one(i: &Instruction, regs: Regs, line_va: u64) -> Option<Rewind> {
    let w = element(i);
    let read = string_source(i, &regs).wrapping_sub(w);
    if !(is_string_read(i) && has_rep(i) && in_line(line_va, read, w)) {
        return None;
    }
    let mut back = regs;
    string_back(i, &mut back, 1);
    Some(Rewind {
        regs: back,
        writes: Vec::new(),
        instruction: text(i),
        note: string_store_note(i, 1),
    })
}

/// `v`'s low `size` bytes, as memory holds them.
fn bytes(v: u64, size: u64) -> Vec<u8> {
    v.to_le_bytes()[..size as usize].to_vec()
}

/// What undoing an instruction's effects stores back, and what it leaves.
#[derive(Default)]
struct Undone {
    writes: Vec<(u64, Vec<u8>)>,
    note: Option<String>,
}

impl Undone {
    fn write(ea: u64, v: u64, size: u64) -> Undone {
        Undone {
            writes: vec![(ea, bytes(v, size))],
            note: None,
        }
    }

    fn note(note: String) -> Undone {
        Undone {
            writes: Vec::new(),
            note: Some(note),
        }
    }
}

/// A plain (not string) instruction that read memory, as undoing it needs.
struct Load {
    i: Instruction,
    /// Its memory operand.
    mem_op: u32,
    /// The bytes it reads.
    size: u64,
    info: InstructionInfo,
    /// The general registers it writes.
    written: Vec<Register>,
}

impl Load {
    fn of(i: Instruction) -> Result<Load, NotRewound> {
        let mem_op = (0..i.op_count())
            .find(|o| i.op_kind(*o) == OpKind::Memory)
            .ok_or_else(|| NotRewound::NoMemoryOperand(text(&i)))?;
        let info = InstructionInfoFactory::new().info(&i).clone();
        let reads = info.used_memory().iter().any(|m| {
            matches!(
                m.access(),
                OpAccess::Read | OpAccess::CondRead | OpAccess::ReadWrite | OpAccess::ReadCondWrite
            )
        });
        if !reads {
            return Err(NotRewound::NoRead(text(&i)));
        }
        let written = info
            .used_registers()
            .iter()
            .filter(|u| {
                u.register().is_gpr()
                    && matches!(
                        u.access(),
                        OpAccess::Write
                            | OpAccess::CondWrite
                            | OpAccess::ReadWrite
                            | OpAccess::ReadCondWrite
                    )
            })
            .map(|u| u.register())
            .collect();
        Ok(Load {
            i,
            mem_op,
            size: i.memory_size().size() as u64,
            info,
            written,
        })
    }

    fn clobbered(&self, r: Register) -> bool {
        r != Register::None
            && self
                .written
                .iter()
                .any(|w| w.full_register() == r.full_register())
    }

    /// The effective address: from the registers now, or, when the load
    /// wrote its own base register (`mov (%rax),%rax`), solved from the
    /// line's bytes (putting the base back in `back`; the note says when a
    /// 32-bit destination left the solved base's upper half a guess).
    fn address(
        &self,
        regs: &Regs,
        back: &mut Regs,
        line_va: u64,
        mem: &mut ReadMem<'_>,
    ) -> Result<(u64, Option<String>), NotRewound> {
        let (i, base, index) = (&self.i, self.i.memory_base(), self.i.memory_index());
        if !self.clobbered(base) && !self.clobbered(index) {
            let ea = i.virtual_address(self.mem_op, 0, |r, _, _| match r {
                Register::ES | Register::CS | Register::SS | Register::DS => Some(0),
                Register::FS | Register::GS => None,
                r => regs.get(r),
            });
            return Ok((ea.ok_or_else(|| NotRewound::NoAddress(text(i)))?, None));
        }
        let dest = i.op0_register();
        if self.clobbered(index)
            || dest.full_register() != base.full_register()
            || i.op_kind(0) != OpKind::Register
        {
            return Err(NotRewound::OwnAddressRegister(text(i)));
        }
        let ea = self.loaded_from(regs.get(dest).unwrap_or(0), dest, line_va, mem)?;
        // Solve base = ea - disp - index * scale (as the instruction's
        // address arithmetic, in 64 bits).
        let idx = if index == Register::None {
            0
        } else {
            regs.full(index)
        };
        let disp = if i.is_ip_rel_memory_operand() {
            0
        } else {
            i.memory_displacement64()
        };
        let old = ea
            .wrapping_sub(disp)
            .wrapping_sub(idx.wrapping_mul(i.memory_index_scale() as u64));
        // Where the load's destination is narrower than its base, the
        // base's other bits are as they were.
        let dbits = 8 * dest.size() as u32;
        let prior = match dest.size() {
            8 | 4 => old,
            _ => (regs.full(base) & !mask(dbits)) | (old & mask(dbits)),
        };
        back.set_full(base, prior);
        let note = (dest.size() == 4).then(|| {
            format!(
                "{} was solved from the line's bytes",
                base.full_register().name()
            )
        });
        Ok((ea, note))
    }

    /// The one address of the line from which the load can have read
    /// `loaded` (into `dest`); ambiguous when several hold that value.
    fn loaded_from(
        &self,
        loaded: u64,
        dest: Register,
        line_va: u64,
        mem: &mut ReadMem<'_>,
    ) -> Result<u64, NotRewound> {
        let size = self.size;
        let signed = matches!(self.i.mnemonic(), Mnemonic::Movsx | Mnemonic::Movsxd);
        let dbits = 8 * dest.size() as u32;
        // One read of every byte a load of the line can touch (one gdbstub
        // round trip, not one per candidate). The bytes around the line may
        // be on another page, not mapped: then the line's own.
        let wide = line_va.saturating_sub(size - 1);
        let (from, window) = match mem(wide, (line_va + super::LINE + size - 1 - wide) as usize) {
            Some(w) => (wide, w),
            None => (
                line_va,
                mem(line_va, super::LINE as usize).ok_or(NotRewound::LineUnreadable)?,
            ),
        };
        let candidates: Vec<u64> = (from..line_va + super::LINE)
            .filter(|a| {
                let at = (a - from) as usize;
                window.get(at..at + size as usize).is_some_and(|b| {
                    let v = le(b);
                    let v = if signed {
                        sign_extend(v, 8 * size as u32)
                    } else {
                        v
                    };
                    v & mask(dbits) == loaded
                })
            })
            .collect();
        match candidates[..] {
            [ea] => Ok(ea),
            _ => Err(NotRewound::Ambiguous {
                instruction: text(&self.i),
                candidates: candidates.len(),
            }),
        }
    }

    /// Undo what the instruction did beyond reading (`now`: the bytes at
    /// `ea`, which QEMU did not corrupt): registers into `back`, stores
    /// as writes.
    fn undo(
        &self,
        regs: &Regs,
        back: &mut Regs,
        ea: u64,
        now: Option<u64>,
    ) -> Result<Undone, NotRewound> {
        let (i, size) = (&self.i, self.size);
        let now = || now.ok_or(NotRewound::LineUnreadable);
        Ok(match (i.mnemonic(), i.op_kind(0)) {
            (Mnemonic::Add | Mnemonic::Sub | Mnemonic::Xor, OpKind::Register) => {
                self.undo_register_rmw(regs, back, now()?)
            }
            (
                Mnemonic::Add
                | Mnemonic::Sub
                | Mnemonic::Xor
                | Mnemonic::Inc
                | Mnemonic::Dec
                | Mnemonic::Neg
                | Mnemonic::Not,
                OpKind::Memory,
            ) => self.undo_memory_rmw(regs, ea, now()?)?,
            // xchg: the register holds the line's old bytes, the line the
            // register's.
            (Mnemonic::Xchg, _) => {
                let r = if i.op_kind(0) == OpKind::Register {
                    i.op0_register()
                } else {
                    i.op1_register()
                };
                let line = now()?;
                back.put(r, line);
                Undone::write(ea, regs.get(r).unwrap_or(0), size)
            }
            // xadd: line = old + reg, reg = old line.
            (Mnemonic::Xadd, OpKind::Memory) => {
                let r = i.op1_register();
                let got = regs.get(r).unwrap_or(0);
                back.put(r, now()?.wrapping_sub(got));
                Undone::write(ea, got, size)
            }
            (Mnemonic::Cmpxchg, OpKind::Memory) => self.undo_cmpxchg(regs, ea),
            (Mnemonic::Push, _) => {
                back.set_full(Register::RSP, regs.full(Register::RSP).wrapping_add(size));
                Undone::default()
            }
            (Mnemonic::Pop, _) => {
                back.set_full(Register::RSP, regs.full(Register::RSP).wrapping_sub(size));
                Undone::default()
            }
            (m, _) => self.destination_only(m),
        })
    }

    /// A read-modify-write of a register: inverted with the line's bytes
    /// (unchanged in memory).
    fn undo_register_rmw(&self, regs: &Regs, back: &mut Regs, line: u64) -> Undone {
        let d = self.i.op0_register();
        let now = regs.get(d).unwrap_or(0);
        let v = if d.size() as u64 > self.size {
            sign_extend(line, 8 * self.size as u32)
        } else {
            line
        };
        let old = match self.i.mnemonic() {
            Mnemonic::Add => now.wrapping_sub(v),
            Mnemonic::Sub => now.wrapping_add(v),
            _ => now ^ v,
        };
        back.put(d, old);
        if d.size() == 4 {
            return Undone::note(format!(
                "the upper half of {} is lost (a 32-bit result clears it)",
                d.full_register().name()
            ));
        }
        Undone::default()
    }

    /// A read-modify-write of the line: its old bytes put back.
    fn undo_memory_rmw(&self, regs: &Regs, ea: u64, now: u64) -> Result<Undone, NotRewound> {
        let i = &self.i;
        let src = if matches!(i.mnemonic(), Mnemonic::Add | Mnemonic::Sub | Mnemonic::Xor) {
            match i.op_kind(1) {
                OpKind::Register => regs.get(i.op1_register()),
                OpKind::Memory => None,
                _ => Some(i.immediate(1)),
            }
            .ok_or(NotRewound::NoSource)?
        } else {
            0
        };
        let old = match i.mnemonic() {
            Mnemonic::Add => now.wrapping_sub(src),
            Mnemonic::Sub => now.wrapping_add(src),
            Mnemonic::Xor => now ^ src,
            Mnemonic::Inc => now.wrapping_sub(1),
            Mnemonic::Dec => now.wrapping_add(1),
            Mnemonic::Neg => now.wrapping_neg(),
            _ => !now,
        };
        Ok(Undone::write(ea, old, self.size))
    }

    /// cmpxchg: equal (ZF) -> the line took the source and the
    /// accumulator is unchanged; not equal -> the accumulator took the
    /// line, its old value is lost.
    fn undo_cmpxchg(&self, regs: &Regs, ea: u64) -> Undone {
        let acc = match self.size {
            1 => Register::AL,
            2 => Register::AX,
            4 => Register::EAX,
            _ => Register::RAX,
        };
        if regs.rflags & ZERO_FLAG != 0 {
            return Undone::write(ea, regs.get(acc).unwrap_or(0), self.size);
        }
        Undone::note("cmpxchg found the line different: the accumulator's old value is lost".into())
    }

    /// Anything else: every register it writes must be its destination
    /// only (loads of every width and extension, compares, tests, vector
    /// loads), which the fixup or the load run again overwrites; the note
    /// names what it changed otherwise.
    fn destination_only(&self, m: Mnemonic) -> Undone {
        let i = &self.i;
        let dest = (i.op_kind(0) == OpKind::Register).then(|| i.op0_register().full_register());
        let other: Vec<String> = self
            .written
            .iter()
            .filter(|w| Some(w.full_register()) != dest)
            .map(|w| w.name())
            .collect();
        let rmw = self.info.used_registers().iter().any(|u| {
            Some(u.register().full_register()) == dest
                && matches!(u.access(), OpAccess::ReadWrite | OpAccess::ReadCondWrite)
        }) && !matches!(
            m,
            Mnemonic::Mov | Mnemonic::Movzx | Mnemonic::Movsx | Mnemonic::Movsxd
        );
        if other.is_empty() && !rmw {
            return Undone::default();
        }
        Undone::note(format!(
            "`{m:?}` changed {} from the line's bytes; not put back",
            if other.is_empty() {
                "its destination".to_string()
            } else {
                other.join(", ")
            }
        ))
    }
}

/// A string instruction QEMU ran to its end before it stopped (QEMU 10's
/// whole `rep movsb`, or any non-rep one): back to the line's first
/// element it read.
fn string_whole(
    i: &Instruction,
    mut back: Regs,
    line_va: u64,
    rep_count: Option<u64>,
) -> Result<Rewind, NotRewound> {
    let rep = has_rep(i);
    let w = element(i);
    let src = string_source(i, &back);
    if !rep {
        if !in_line(line_va, src.wrapping_sub(w), w) {
            return Err(NotRewound::OtherAddress {
                instruction: text(i),
                read: src.wrapping_sub(w),
                line: line_va,
            });
        }
        string_back(i, &mut back, 1);
        return Ok(Rewind {
            regs: back,
            writes: Vec::new(),
            instruction: text(i),
            note: string_store_note(i, 1),
        });
    }
    let done_from =
        |count: u64| src.wrapping_sub(count.wrapping_sub(back.full(Register::RCX)).wrapping_mul(w));
    let (first, note) = match rep_count {
        Some(c) => {
            let start = done_from(c);
            (line_va.max(start), None)
        }
        None => (
            line_va,
            Some("QEMU ran the whole rep: rewound to the line's first byte (exact when the copy began at or before it)".to_string()),
        ),
    };
    if src <= first {
        return Err(NotRewound::BeforeLine(text(i)));
    }
    let n = (src - first) / w;
    string_back(i, &mut back, n);
    Ok(Rewind {
        regs: back,
        writes: Vec::new(),
        instruction: text(i),
        note: note.or(string_store_note(i, n)),
    })
}

/// A `movs` stored what it loaded before QEMU stopped it.
fn string_store_note(i: &Instruction, n: u64) -> Option<String> {
    (StringRead::of(i) == Some(StringRead::Movs)).then(|| {
        format!(
            "{n} element(s) already stored at the destination (the fixup counts them as not copied)"
        )
    })
}

#[cfg(test)]
mod tests;
