//! The kernel's own aliases of a poisoned line: the direct map, or another
//! mapping the kernel made of NVDIMM memory.
//!
//! An fsdax or devdax namespace has struct pages (`devm_memremap_pages()`),
//! so its memory is in the kernel's linear map at `page_offset_base` +
//! physical address, which is where the pmem driver, the DAX read paths and
//! BTT read it. A raw namespace has none: the pmem driver maps it with
//! `devm_memremap()` -> `ioremap_cache()` into the vmalloc area
//! (drivers/nvdimm/pmem.c, pmem_attach_disk()), at an address nothing
//! outside the kernel can name (/proc/vmallocinfo prints hashed pointers).
//! For a line the direct map does not translate, the lab walks the kernel
//! half of the page tables (read through the direct map, where page tables
//! live) and takes every leaf that maps it. (QEMU's HMP `info tlb` prints the
//! same, but as 3 MB of text for this small guest: too slow through the
//! gdbstub.)

/// CR4.LA57: 5-level paging.
pub const CR4_LA57: u64 = 1 << 12;

/// Page-table entry bits (Intel SDM vol. 3A, "4-Level Paging and 5-Level
/// Paging").
const PRESENT: u64 = 1;
const PAGE_SIZE_BIT: u64 = 1 << 7;
const ADDRESS: u64 = 0x000f_ffff_ffff_f000;

/// One leaf: `size` bytes at virtual `va` map physical `pa`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Leaf {
    pub va: u64,
    pub pa: u64,
    pub size: u64,
}

impl Leaf {
    /// The virtual address of physical `line` in this leaf.
    pub fn alias(&self, line: u64) -> Option<u64> {
        (self.pa..self.pa + self.size)
            .contains(&line)
            .then(|| self.va + (line - self.pa))
    }
}

/// Reads one 4 KiB page table by its physical address.
pub trait Tables {
    type Error;
    fn table(&mut self, pa: u64) -> Result<[u64; 512], Self::Error>;
}

/// The leaves of the kernel half (top-level entries 256..512) of the page
/// tables at `root` with `levels` levels (4, or 5 with CR4.LA57), keeping
/// those that `keep(pa, size)` wants.
pub fn kernel_leaves<M: Tables>(
    mem: &mut M,
    root: u64,
    levels: u32,
    keep: &dyn Fn(u64, u64) -> bool,
) -> Result<Vec<Leaf>, M::Error> {
    let mut out = Vec::new();
    let top = mem.table(root & ADDRESS)?;
    let shift = 12 + 9 * (levels - 1);
    for (i, e) in top.iter().enumerate().skip(256) {
        if e & PRESENT != 0 {
            let va = sign_extend((i as u64) << shift, 12 + 9 * levels);
            descend(mem, *e, va, shift, keep, &mut out)?;
        }
    }
    Ok(out)
}

fn sign_extend(va: u64, bits: u32) -> u64 {
    let unused = 64 - bits;
    (((va << unused) as i64) >> unused) as u64
}

/// Entry `e` maps `1 << shift` bytes at `va`.
fn descend<M: Tables>(
    mem: &mut M,
    e: u64,
    va: u64,
    shift: u32,
    keep: &dyn Fn(u64, u64) -> bool,
    out: &mut Vec<Leaf>,
) -> Result<(), M::Error> {
    let size = 1u64 << shift;
    // A leaf: a 4K entry, or PS at the 1G and 2M levels.
    if shift == 12 || (e & PAGE_SIZE_BIT != 0 && (shift == 21 || shift == 30)) {
        let pa = e & ADDRESS & !(size - 1);
        if keep(pa, size) {
            out.push(Leaf { va, pa, size });
        }
        return Ok(());
    }
    let table = mem.table(e & ADDRESS)?;
    for (i, sub) in table.iter().enumerate() {
        if sub & PRESENT != 0 {
            descend(
                mem,
                *sub,
                va + ((i as u64) << (shift - 9)),
                shift - 9,
                keep,
                out,
            )?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    struct Fake(HashMap<u64, [u64; 512]>);

    impl Tables for Fake {
        /// The physical address with no table.
        type Error = u64;
        fn table(&mut self, pa: u64) -> Result<[u64; 512], u64> {
            self.0.get(&pa).copied().ok_or(pa)
        }
    }

    fn table(entries: &[(usize, u64)]) -> [u64; 512] {
        let mut t = [0u64; 512];
        for (i, e) in entries {
            t[*i] = *e;
        }
        t
    }

    /// 4-level: user entry 0 (never walked), kernel entry 0x1f4 -> PDPT
    /// with a 1G page (PS) at index 0 and a PD at index 1 holding a 2M page
    /// and a 4K page table.
    fn tables() -> Fake {
        let p = PRESENT | 2;
        Fake(HashMap::from([
            (0x1000, table(&[(0, 0x9000 | p), (0x1f4, 0x2000 | p)])),
            (
                0x2000,
                table(&[(0, 0x1_0000_0000 | p | PAGE_SIZE_BIT), (1, 0x3000 | p)]),
            ),
            (
                0x3000,
                // 2M page with the PAT bit (12) set, which is not address.
                table(&[
                    (0, 0x1_4000_0000 | 0x1000 | p | PAGE_SIZE_BIT),
                    (1, 0x4000 | p),
                ]),
            ),
            (0x4000, table(&[(3, 0x1_8000_3000 | p)])),
        ]))
    }

    #[test]
    fn the_kernel_half_is_walked_to_its_leaves() {
        let leaves = kernel_leaves(&mut tables(), 0x1000, 4, &|_, _| true).unwrap();
        let base = 0xfffffa0000000000; // PML4 index 0x1f4, sign-extended
        assert_eq!(
            leaves,
            [
                Leaf {
                    va: base,
                    pa: 0x1_0000_0000,
                    size: 1 << 30
                },
                Leaf {
                    va: base + (1 << 30),
                    pa: 0x1_4000_0000,
                    size: 2 << 20
                },
                Leaf {
                    va: base + (1 << 30) + (2 << 20) + 0x3000,
                    pa: 0x1_8000_3000,
                    size: 4096
                },
            ]
        );
        assert_eq!(
            leaves[1].alias(0x1_4000_1040),
            Some(base + (1 << 30) + 0x1040)
        );
        assert_eq!(leaves[1].alias(0x1_4020_0000), None);
    }

    #[test]
    fn only_wanted_leaves_are_kept_and_a_missing_table_is_an_error() {
        let keep = |pa: u64, size: u64| (pa..pa + size).contains(&0x1_8000_3040);
        let leaves = kernel_leaves(&mut tables(), 0x1000, 4, &keep).unwrap();
        assert_eq!(leaves.len(), 1);
        let mut broken = tables();
        broken.0.remove(&0x4000);
        assert!(kernel_leaves(&mut broken, 0x1000, 4, &|_, _| true).is_err());
    }

    #[test]
    fn five_levels_sign_extend_from_bit_56() {
        assert_eq!(sign_extend(0x1f4 << 48, 57), 0xfff4_0000_0000_0000);
        assert_eq!(sign_extend(0x111 << 48, 57), 0xff11_0000_0000_0000);
        assert_eq!(sign_extend(0x1f4 << 39, 48), 0xffff_fa00_0000_0000);
    }
}
