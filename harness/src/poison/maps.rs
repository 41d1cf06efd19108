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

use std::collections::BTreeSet;

/// The kernel functions that install user mappings of NVDIMM memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Hook {
    Mixed,
    MixedMkwrite,
    Pmd,
    Pud,
}

impl Hook {
    pub const ALL: [Hook; 4] = [Hook::Mixed, Hook::MixedMkwrite, Hook::Pmd, Hook::Pud];

    /// The function's names, the current first. Before 6.7 the huge-page
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
        }
    }

    /// The size of the mapping it installs.
    pub fn size(self) -> u64 {
        match self {
            Hook::Mixed | Hook::MixedMkwrite => 4 << 10,
            Hook::Pmd => 2 << 20,
            Hook::Pud => 1 << 30,
        }
    }

    /// Whether the faulting address is in a register (`addr`, the second
    /// argument) or in `vmf->address` (the first argument points at vmf).
    pub fn address_in_vmf(self) -> bool {
        matches!(self, Hook::Pmd | Hook::Pud)
    }
}

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
    pub fn installed(hook: Hook, address: u64, pfn_t: u64) -> UserMap {
        let size = hook.size();
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
    fn a_pmd_mapping_is_2m_aligned_and_maps_its_lines() {
        // pfn 0x100a00 with PFN_DEV|PFN_MAP flags in the top bits.
        let pfn_t = (3u64 << 62) | 0x10_0a00;
        let m = UserMap::installed(Hook::Pmd, 0x7f12_3456_7890, pfn_t);
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
        assert!(maps.add(UserMap::installed(Hook::Mixed, 0x7000_0000_1234, 0x10_0a01)));
        assert!(!maps.add(UserMap::installed(Hook::Mixed, 0x7000_0000_1000, 0x10_0a01)));
        maps.add(UserMap::installed(Hook::Pud, 0x7f40_0000_0000, 0x10_0000));
        let mut a: Vec<u64> = maps.aliases(0x1_00a0_1040).collect();
        a.sort();
        assert_eq!(a, [0x7000_0000_1040, 0x7f40_00a0_1040]);
        assert_eq!(maps.len(), 2);
    }

    #[test]
    fn hooks_name_their_sizes() {
        assert_eq!(Hook::ALL.map(|h| h.size() >> 12), [1, 1, 512, 262144]);
        assert!(Hook::Pud.address_in_vmf() && !Hook::Mixed.address_in_vmf());
    }
}
