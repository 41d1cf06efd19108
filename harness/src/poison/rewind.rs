//! Putting a vCPU back before the load that consumed poison.
//!
//! Under TCG, QEMU reports an x86 read watch point after the access: it
//! executes the instruction once more with the watch point off and stops
//! after it (accel/tcg/watchpoint.c; x86 does not ask for "stop before
//! access"). For `rep movs`, the string copy of memcpy and of the
//! copy_mc_*/copy_to_user paths, that one execution is one iteration: one
//! element of the line has been copied and RSI, RDI and RCX have moved past
//! it. Real hardware raises the machine check before the load retires, so
//! the lab steps the registers back by one element: the kernel's fixup then
//! sees the copy exactly where hardware would leave it (the count not
//! copied includes the poisoned element), and `read()` of a DAX file returns
//! what it would on a real machine instead of a one-byte short read. Any
//! other load is left where QEMU stopped it (RIP after the instruction);
//! docs/poison.md says so.

/// The element size of a `rep movs` whose bytes start `code`, if it is one
/// (prefixes in any order: F3 REP, 66 operand size, REX with W).
pub fn rep_movs_width(code: &[u8]) -> Option<u64> {
    let (mut rep, mut opsize, mut rexw) = (false, false, false);
    for b in code.iter().take(4) {
        match b {
            0xf3 => rep = true,
            0x66 => opsize = true,
            0x40..=0x4f => rexw = b & 0x08 != 0,
            0xa4 => return rep.then_some(1),
            0xa5 => {
                return rep.then_some(if rexw {
                    8
                } else if opsize {
                    2
                } else {
                    4
                })
            }
            _ => return None,
        }
    }
    None
}

/// EFLAGS.DF: string instructions count down.
pub const DIRECTION_FLAG: u64 = 1 << 10;

/// The registers of a string move one element back, if the element just
/// copied came from the watched line `[line_va, line_va + 64)`:
/// `(rsi, rdi, rcx)`.
pub fn one_back(
    width: u64,
    (rsi, rdi, rcx): (u64, u64, u64),
    eflags: u64,
    line_va: u64,
) -> Option<(u64, u64, u64)> {
    if eflags & DIRECTION_FLAG != 0 {
        return None;
    }
    let src = rsi.checked_sub(width)?;
    (line_va..line_va + super::LINE)
        .contains(&src)
        .then(|| (src, rdi.wrapping_sub(width), rcx + 1))
}

/// QEMU 10.0.2 runs a whole `rep movsb` when it re-executes the
/// instruction for a watch point, and reports the stop after it (measured:
/// it stops at copy_mc_enhanced_fast_string+0xc; 7.2 stops at +0xa, the
/// `rep movsb`, one byte done; versions in between were not tried). For a copy whose count came from RDX
/// (copy_mc_enhanced_fast_string: `movq %rdx, %rcx; rep movsb`,
/// arch/x86/lib/copy_mc_64.S), the registers at the first byte of the
/// watched line: the source began at RSI - (RDX - RCX). `(rsi, rdi, rcx)`.
pub fn back_to_line(
    (rsi, rdi, rcx): (u64, u64, u64),
    rdx: u64,
    eflags: u64,
    line_va: u64,
) -> Option<(u64, u64, u64)> {
    if eflags & DIRECTION_FLAG != 0 {
        return None;
    }
    let start = rsi.checked_sub(rdx.checked_sub(rcx)?)?;
    let first = line_va.max(start);
    let back = rsi.checked_sub(first).filter(|b| *b > 0)?;
    Some((first, rdi.wrapping_sub(back), rcx + back))
}

/// `rep movsb`.
pub const REP_MOVSB: [u8; 2] = [0xf3, 0xa4];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn string_moves_are_recognised_by_their_bytes() {
        assert_eq!(rep_movs_width(&[0xf3, 0xa4, 0xc3, 0x90]), Some(1));
        assert_eq!(rep_movs_width(&[0xf3, 0x48, 0xa5, 0x90]), Some(8));
        assert_eq!(rep_movs_width(&[0x66, 0xf3, 0xa5, 0x90]), Some(2));
        assert_eq!(rep_movs_width(&[0xf3, 0xa5, 0x90, 0x90]), Some(4));
        // movsb without rep, a mov load, nothing.
        assert_eq!(rep_movs_width(&[0xa4, 0x90, 0x90, 0x90]), None);
        assert_eq!(rep_movs_width(&[0x8a, 0x06, 0x90, 0x90]), None);
        assert_eq!(rep_movs_width(&[]), None);
    }

    #[test]
    fn a_whole_copy_goes_back_to_the_line() {
        let line = 0xff11_0001_00e0_0000;
        // A 4096-byte copy from the line's page start, all done (RCX 0).
        let done = (line + 4096, 0x5000 + 4096, 0);
        assert_eq!(
            back_to_line(done, 4096, 0x246, line),
            Some((line, 0x5000, 4096))
        );
        // The line 0x40 into the copy.
        assert_eq!(
            back_to_line(done, 4096, 0x246, line + 0x40),
            Some((line + 0x40, 0x5040, 4096 - 0x40))
        );
        // The copy began inside the line: back to where it began.
        let mid = (line + 0x20 + 100, 0x9000 + 100, 0);
        assert_eq!(
            back_to_line(mid, 100, 0x246, line),
            Some((line + 0x20, 0x9000, 100))
        );
        // The line is past the end of this copy, or counting down: leave it.
        assert_eq!(back_to_line(done, 4096, 0x246, line + 4096), None);
        assert_eq!(back_to_line(done, 4096, 0x646, line), None);
        assert_eq!(back_to_line((10, 10, 0), 4096, 0x246, 0), None);
    }

    #[test]
    fn one_element_back_only_into_the_watched_line() {
        let line = 0xff11_0001_00e0_0000;
        assert_eq!(
            one_back(1, (line + 1, 0x5000_0001, 4095), 0x246, line),
            Some((line, 0x5000_0000, 4096))
        );
        // The element came from before the line: leave it.
        assert_eq!(one_back(8, (line + 4, 0x5000, 10), 0x246, line), None);
        // Counting down: leave it.
        assert_eq!(one_back(1, (line + 1, 0x5001, 1), 0x646, line), None);
    }
}
