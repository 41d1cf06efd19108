//! Where a poisoned line can be read from: its kernel aliases, and every
//! user mapping of it the kernel has installed.
//!
//! User mappings of NVDIMM memory (device-dax, fsdax files) are installed
//! by four functions, whatever the program (drivers/dax/device.c and
//! fs/dax.c, 6.12): `vmf_insert_mixed()` and `vmf_insert_mixed_mkwrite()`
//! for 4K pages (vma, address, pfn), `vmf_insert_pfn_pmd()` and
//! `vmf_insert_pfn_pud()` for 2M and 1G (vmf, pfn; `..._prot()` on older
//! kernels, see [`Hook::symbols`]). The watcher stops at
//! their entry with a breakpoint, reads the arguments, and from then on
//! knows that virtual address range maps that physical range (in some
//! address space: every watch point fired there is checked against the
//! stopped CPU's translation before anything is injected).
//!
//! Other ways a user mapping of NVDIMM memory comes to be, from mm/ (6.12):
//! - mremap() moves page tables without faulting: `move_vma()` ->
//!   `move_page_tables()` (mm/mremap.c), which moves whole PMDs/PUDs of a
//!   device-dax mapping (`move_huge_pmd()`, `move_huge_pud()`) or its PTEs.
//!   The lab hooks the system call, `__x64_sys_mremap()` (its pt_regs: old
//!   address, old and new length), and, when the old range holds a known
//!   mapping, its return (the new address in RAX); every known mapping in
//!   the moved range then has its new address too ([`UserMaps::moved`]).
//!   Not `move_page_tables()` itself: exec's stack shift calls it too
//!   (`relocate_vma_down()`, mm/mmap.c; 6.1's `shift_arg_pages()`), and a
//!   stop at every exec cost 110 ms of each under TCG (docs/performance.md).
//! - fork() copies page tables only where `vma_needs_copy()` says
//!   (mm/memory.c: uffd-wp, VM_PFNMAP/VM_MIXEDMAP, an anon_vma, i.e. a
//!   MAP_PRIVATE fsdax file written to); the child's copy is at the same
//!   virtual address, which the watch point already covers in every address
//!   space. A MAP_SHARED dax mapping is not copied: the child faults, and
//!   the install hooks see it.
//! - a mapping installed before a line is poisoned: every mapping seen since
//!   the model started is kept, and each newly poisoned line is watched at
//!   all of them.

use std::collections::BTreeSet;

/// The kernel functions that install user mappings of NVDIMM memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Hook {
    Mixed,
    MixedMkwrite,
    Pmd,
    Pud,
    /// `__x64_sys_mremap(regs)`: the system call, at entry and (a
    /// breakpoint set there and then) at its return.
    Mremap,
}

impl Hook {
    pub const ALL: [Hook; 5] = [
        Hook::Mixed,
        Hook::MixedMkwrite,
        Hook::Pmd,
        Hook::Pud,
        Hook::Mremap,
    ];

    /// The function's names, the current first; the lab hooks every one
    /// the kernel has. Before 6.7 the huge-page
    /// ones were inline wrappers (include/linux/huge_mm.h) around
    /// `vmf_insert_pfn_pmd_prot()` / `_pud_prot()`, which take the same vmf
    /// and pfn in the same registers (a pgprot_t follows); 6.1 is such a
    /// kernel.
    pub fn symbols(self) -> &'static [&'static str] {
        match self {
            Hook::Mixed => &["vmf_insert_mixed"],
            Hook::MixedMkwrite => &["vmf_insert_mixed_mkwrite"],
            Hook::Pmd => &["vmf_insert_pfn_pmd", "vmf_insert_pfn_pmd_prot"],
            Hook::Pud => &["vmf_insert_pfn_pud", "vmf_insert_pfn_pud_prot"],
            // The x86-64 system call entry takes the saved user registers
            // (arch/x86/include/asm/syscall_wrapper.h), the same on 6.1.
            Hook::Mremap => &["__x64_sys_mremap"],
        }
    }

    /// The size of the mapping it installs (`None`: it moves mappings).
    pub fn size(self) -> Option<u64> {
        match self {
            Hook::Mixed | Hook::MixedMkwrite => Some(4 << 10),
            Hook::Pmd => Some(2 << 20),
            Hook::Pud => Some(1 << 30),
            Hook::Mremap => None,
        }
    }

    /// Whether the faulting address is in a register (`addr`, the second
    /// argument) or in `vmf->address` (the first argument points at vmf).
    pub fn address_in_vmf(self) -> bool {
        matches!(self, Hook::Pmd | Hook::Pud)
    }
}

/// The system call arguments in `struct pt_regs` (arch/x86/include/asm/
/// ptrace.h: r15 r14 r13 r12 bp bx r11 r10 r9 r8 ax cx dx si di ...; the
/// x86-64 syscall ABI passes di, si, dx, r10, r8, r9): offsets of di
/// (old address), si (old length), dx (new length).
pub const PT_REGS_DI: u64 = 112;
pub const PT_REGS_SI: u64 = 104;
pub const PT_REGS_DX: u64 = 96;

/// `offsetof(struct vm_fault, address)`: vma, gfp_mask (padded to 8),
/// pgoff, then address (include/linux/mm.h, the same since 5.18 and in
/// 6.1 and 6.12).
pub const VMF_ADDRESS: u64 = 24;

/// A `pfn_t`'s pfn: its top 12 bits are flags (include/linux/pfn_t.h,
/// PFN_FLAGS_MASK).
pub fn pfn_of(pfn_t: u64) -> u64 {
    pfn_t & ((1 << 52) - 1)
}

/// One installed user mapping: `size` bytes at virtual `va` map physical `pa`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct UserMap {
    pub va: u64,
    pub pa: u64,
    pub size: u64,
}

impl UserMap {
    /// From a hook's arguments: the faulting address and the pfn_t.
    /// `size`: the hook's ([`Hook::size`]).
    pub fn installed(size: u64, address: u64, pfn_t: u64) -> UserMap {
        UserMap {
            va: address & !(size - 1),
            pa: pfn_of(pfn_t) << 12,
            size,
        }
    }

    /// The virtual address of physical `line` in this mapping.
    pub fn alias(&self, line: u64) -> Option<u64> {
        (self.pa..self.pa + self.size)
            .contains(&line)
            .then(|| self.va + (line - self.pa))
    }
}

/// Every user mapping of NVDIMM memory seen since the model started. Old
/// ones are kept (a watch point on a virtual address no longer mapped there
/// only costs a stop that the translation check lets pass).
#[derive(Debug, Default)]
pub struct UserMaps(BTreeSet<UserMap>);

impl UserMaps {
    /// Whether it is new.
    pub fn add(&mut self, m: UserMap) -> bool {
        self.0.insert(m)
    }

    /// Page tables of `[old, old + len)` moved to `new` (mremap): every
    /// known mapping's part in that range is now also at its new address
    /// (the old stays known: a stale watch point only costs a stop the
    /// translation check lets pass). The new mappings.
    pub fn moved(&mut self, old: u64, new: u64, len: u64) -> Vec<UserMap> {
        let end = old.saturating_add(len);
        let moved: Vec<UserMap> = self
            .0
            .iter()
            .filter_map(|m| {
                let (lo, hi) = (m.va.max(old), (m.va + m.size).min(end));
                (lo < hi).then(|| UserMap {
                    va: new.wrapping_add(lo - old),
                    pa: m.pa + (lo - m.va),
                    size: hi - lo,
                })
            })
            .collect();
        moved.into_iter().filter(|m| self.0.insert(*m)).collect()
    }

    /// Whether a known mapping overlaps `[va, va + len)`.
    pub fn overlaps(&self, va: u64, len: u64) -> bool {
        let end = va.saturating_add(len);
        len != 0 && self.0.iter().any(|m| m.va < end && va < m.va + m.size)
    }

    /// The user virtual addresses of physical `line`.
    pub fn aliases(&self, line: u64) -> impl Iterator<Item = u64> + '_ {
        self.0.iter().filter_map(move |m| m.alias(line))
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_range_overlaps_only_the_mappings_it_touches() {
        let mut maps = UserMaps::default();
        maps.add(UserMap {
            va: 0x7f00_0020_0000,
            pa: 0x1_0000_0000,
            size: 2 << 20,
        });
        assert!(maps.overlaps(0x7f00_0000_0000, 0x20_1000));
        assert!(maps.overlaps(0x7f00_003f_f000, 0x1000));
        // Ending where it starts, starting where it ends: no overlap.
        assert!(!maps.overlaps(0x7f00_0000_0000, 0x20_0000));
        assert!(!maps.overlaps(0x7f00_0040_0000, 0x1000));
        assert!(!maps.overlaps(0x7f00_0030_0000, 0));
    }

    #[test]
    fn a_pmd_mapping_is_2m_aligned_and_maps_its_lines() {
        // pfn 0x100a00 with PFN_DEV|PFN_MAP flags in the top bits.
        let pfn_t = (3u64 << 62) | 0x10_0a00;
        let m = UserMap::installed(2 << 20, 0x7f12_3456_7890, pfn_t);
        assert_eq!(
            m,
            UserMap {
                va: 0x7f12_3440_0000,
                pa: 0x1_00a0_0000,
                size: 2 << 20
            }
        );
        assert_eq!(m.alias(0x1_00a0_1040), Some(0x7f12_3440_1040));
        assert_eq!(m.alias(0x1_00c0_0000), None);
    }

    #[test]
    fn every_mapping_of_a_line_is_an_alias() {
        let mut maps = UserMaps::default();
        assert!(maps.add(UserMap::installed(4096, 0x7000_0000_1234, 0x10_0a01)));
        assert!(!maps.add(UserMap::installed(4096, 0x7000_0000_1000, 0x10_0a01)));
        maps.add(UserMap::installed(1 << 30, 0x7f40_0000_0000, 0x10_0000));
        let mut a: Vec<u64> = maps.aliases(0x1_00a0_1040).collect();
        a.sort();
        assert_eq!(a, [0x7000_0000_1040, 0x7f40_00a0_1040]);
        assert_eq!(maps.len(), 2);
    }

    #[test]
    fn a_moved_range_takes_its_mappings_with_it() {
        let mut maps = UserMaps::default();
        // A 2M device-dax mapping and a 4K one elsewhere.
        maps.add(UserMap::installed(2 << 20, 0x7f00_0020_0000, 0x10_0a00));
        maps.add(UserMap::installed(4096, 0x7e00_0000_0000, 0x10_0b00));
        // mremap(MREMAP_FIXED) of the 2M to 0x7f10_0000_0000.
        let new = maps.moved(0x7f00_0020_0000, 0x7f10_0000_0000, 2 << 20);
        assert_eq!(
            new,
            [UserMap {
                va: 0x7f10_0000_0000,
                pa: 0x1_00a0_0000,
                size: 2 << 20
            }]
        );
        let mut a: Vec<u64> = maps.aliases(0x1_00a0_1040).collect();
        a.sort();
        assert_eq!(a, [0x7f00_0020_1040, 0x7f10_0000_1040]);
        // Half of it moved again: only that half.
        let new = maps.moved(0x7f10_0010_0000, 0x7f20_0000_0000, 4 << 20);
        assert_eq!(new.len(), 1);
        assert_eq!(
            (new[0].va, new[0].pa, new[0].size),
            (0x7f20_0000_0000, 0x1_00b0_0000, 1 << 20)
        );
        // Nothing known there: nothing new.
        assert!(maps.moved(0x1000, 0x2000, 0x1000).is_empty());
    }

    #[test]
    fn hooks_name_their_sizes() {
        assert_eq!(
            Hook::ALL.map(|h| h.size().map(|s| s >> 12)),
            [Some(1), Some(1), Some(512), Some(262144), None]
        );
        assert!(Hook::Pud.address_in_vmf() && !Hook::Mixed.address_in_vmf());
    }
}
