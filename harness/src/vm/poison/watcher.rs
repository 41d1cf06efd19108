//! The thread that owns QEMU's gdbstub for a VM with the poison model: it
//! keeps a read watch point on the kernel's direct-map alias of every
//! poisoned line, and when a vCPU stops at one it decides, injects and
//! resumes.
//!
//! Why a watch point and not a page protection: QEMU has no way to trap a
//! guest-physical line, but its TCG watch points stop a vCPU at the
//! instruction that reads a virtual address, in any mode, on any vCPU; the
//! gdbstub is the interface to them that every QEMU since 2.x has. User
//! mappings are learnt at the kernel functions that install them
//! ([`super::maps`]).
//! Measured on this machine (../shared/design.md): `dd iflag=direct` on the
//! fsdax block device stops in copy_mc_enhanced_fast_string's `rep movsb`
//! after its first byte of the line.
//!
//! Why the direct map: the pmem driver reads an fsdax (pfn) namespace
//! through `devm_memremap_pages()`, i.e. the kernel's linear map
//! (`page_offset_base` + physical address), and so do the DAX read paths
//! of ext4 and xfs (`dax_direct_access()` -> `pmem_dax_direct_access()`),
//! BTT and the info-block reads. A raw namespace is read through an
//! `ioremap_cache()` alias instead (`devm_memremap()`), which this model
//! does not watch yet.

use super::maps::{Hook, UserMap, UserMaps, PT_REGS_DI, PT_REGS_DX, PT_REGS_SI, VMF_ADDRESS};
use super::platform_log::Tail;
use super::{kernel, rewind};
use super::{Lines, PoisonError};
use crate::mce::{Consumer, Injection};
use crate::vm::gdb::{reg, Gdb, GdbError, Watch};
use crate::vm::qmp;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant, SystemTime};

const T: Duration = Duration::from_secs(10);

/// One load of poison the lab turned into a machine check.
#[derive(Debug, Clone)]
pub struct Consumption {
    pub cpu: u32,
    pub consumer: Consumer,
    /// Where the vCPU stopped (the load, or the instruction after it).
    pub rip: u64,
    /// The watched virtual address and the physical line it maps.
    pub va: u64,
    pub gpa: u64,
    pub command: String,
    /// How the vCPU was put back at the load (see [`super::rewind`]).
    pub rewound: Rewound,
    /// From the load to the resumed vCPU with the machine check pending.
    pub took: Duration,
    /// Of that, finding the load and putting the vCPU back.
    pub rewind_took: Duration,
}

/// How the watcher put a vCPU back at the load before it injected.
#[derive(Debug, Clone)]
pub enum Rewound {
    /// RIP at the load's first byte, its effects undone (but `note`).
    To {
        rip: u64,
        instruction: String,
        anchor: rewind::Anchor,
        note: Option<String>,
    },
    /// Left as QEMU stopped it (RIP after the load), and why.
    Not(String),
}

impl Consumption {
    pub fn describe(&self) -> String {
        let how = match &self.rewound {
            Rewound::To {
                rip,
                instruction,
                anchor,
                note,
            } => format!(
                " -> {rip:#x} `{instruction}` ({}){}",
                match anchor {
                    rewind::Anchor::Symbol => "decoded from its symbol".to_string(),
                    rewind::Anchor::Vote { agreeing, of } =>
                        format!("boundary by vote, {agreeing}/{of}"),
                },
                note.as_ref().map(|n| format!("; {n}")).unwrap_or_default()
            ),
            Rewound::Not(why) => format!(" (not rewound: {why})"),
        };
        format!(
            "{} load on CPU {} at RIP {:#x}{how} of line {:#x} (VA {:#x}{}): `{}` ({} us, rewind {} us)",
            self.consumer.name(),
            self.cpu,
            self.rip,
            self.gpa,
            self.va,
            if self.consumer == Consumer::Kernel && self.va < USER_TOP {
                ", a user address: copy-in"
            } else {
                ""
            },
            self.command,
            self.took.as_micros(),
            self.rewind_took.as_micros()
        )
    }
}

/// The end of the x86-64 user half (TASK_SIZE_MAX with 5-level paging is
/// below it too): a kernel load of an address below is a load through a
/// user address, which the kernel classifies as copy-in when its
/// instruction has a user-access fixup (arch/x86/kernel/cpu/mce/severity.c,
/// error_context() and is_copy_from_user()).
pub const USER_TOP: u64 = 1 << 56;

/// How far into a kernel function the watcher decodes from its start
/// (longer ones: by vote, see [`rewind::vote`]).
const SYMBOL_DECODE_LIMIT: u64 = 16 << 10;

/// The kernel's text symbols (System.map), to decode a stopped kernel
/// load from the start of its function. Built on first use: most cases
/// never stop in kernel code, and the table is 100,000 lines to parse.
#[derive(Debug, Clone)]
pub struct TextSymbols {
    table: Arc<TextTable>,
    /// running - System.map (KASLR).
    offset: u64,
}

#[derive(Debug)]
struct TextTable {
    /// The System.map text, until the table is built from it.
    source: Arc<String>,
    /// Sorted System.map addresses of text symbols below `_etext`, and
    /// `_etext` (shared: every case of a run decodes the same kernel's).
    built: OnceLock<(Vec<u64>, u64)>,
}

impl TextTable {
    fn get(&self) -> &(Vec<u64>, u64) {
        self.built.get_or_init(|| {
            let mut starts = Vec::new();
            let mut etext = 0;
            for (a, t, n) in entries(&self.source) {
                if n == "_etext" {
                    etext = a;
                }
                if matches!(t, "T" | "t" | "W" | "w") {
                    starts.push(a);
                }
            }
            starts.sort_unstable();
            starts.dedup();
            (starts, etext)
        })
    }
}

impl TextSymbols {
    pub fn parse(system_map: &str, offset: u64) -> TextSymbols {
        TextSymbols::lazy(Arc::new(system_map.to_string()), offset)
    }

    fn lazy(source: Arc<String>, offset: u64) -> TextSymbols {
        TextSymbols {
            table: Arc::new(TextTable {
                source,
                built: OnceLock::new(),
            }),
            offset,
        }
    }

    /// The same symbols in a kernel relocated by `offset`.
    fn relocated(&self, offset: u64) -> TextSymbols {
        TextSymbols {
            offset,
            ..self.clone()
        }
    }

    /// The text symbols' System.map addresses, sorted, and `_etext`.
    pub fn starts(&self) -> (&[u64], u64) {
        let (starts, etext) = self.table.get();
        (starts, *etext)
    }

    /// The running address of the text symbol that holds `rip`, if `rip`
    /// is in the kernel's own text (not a module's).
    pub fn enclosing(&self, rip: u64) -> Option<u64> {
        let (starts, etext) = self.starts();
        let at = rip.wrapping_sub(self.offset);
        if at >= etext {
            return None;
        }
        let i = starts.partition_point(|s| *s <= at).checked_sub(1)?;
        Some(starts[i].wrapping_add(self.offset))
    }
}

/// What the watcher has seen so far.
#[derive(Debug, Default)]
pub struct Seen {
    pub consumptions: Vec<Consumption>,
    /// Stops at a watched address whose translation was not a poisoned
    /// line (another address space, a line cleared since): resumed.
    pub passed: u64,
    /// Loads whose instruction faulted first (see [`PAGE_FAULT_ENTRY`]):
    /// resumed, to be caught when the instruction restarts.
    pub deferred: u64,
    /// User mappings of NVDIMM memory the kernel installed (or moved).
    pub user_maps: u64,
    /// Why the watcher stopped, if it did on an error.
    pub stopped: Option<String>,
}

enum Order {
    /// Read the platform log, re-arm, answer with the armed addresses.
    Sync(Sender<Result<usize, GdbError>>),
    /// Poison these guest-physical ranges (an `inject` step's machine
    /// check names a line that is bad from then on), and note user mappings
    /// the lab already knows of (`consume`'s reader maps before the model
    /// may have started).
    Poison(
        Vec<(u64, u64)>,
        Vec<UserMap>,
        Sender<Result<usize, GdbError>>,
    ),
    /// The CXL devices' poisoned lines are now exactly these.
    Cxl(Vec<u64>, Sender<Result<usize, GdbError>>),
    Quit,
}

pub struct Watcher {
    orders: Sender<Order>,
    seen: Arc<Mutex<Seen>>,
    thread: Option<JoinHandle<()>>,
}

/// Where the watcher finds the kernel's direct map and its mapping hooks.
#[derive(Debug)]
pub struct KernelSymbols {
    /// `page_offset_base`'s address in System.map and `_text` there and in
    /// the running kernel (/proc/kallsyms): their difference is the KASLR
    /// offset. (`page_offset_base` is data: /proc/kallsyms lists it only
    /// with CONFIG_KALLSYMS_ALL.)
    pub page_offset_base: u64,
    pub text_map: u64,
    pub text_running: u64,
    /// The running kernel's addresses of the functions that install or
    /// move user mappings (see [`Hook`]).
    pub hooks: Vec<(Hook, u64)>,
    /// The page-fault entry (`asm_exc_page_fault`), see [`State::on_stop`].
    pub page_fault_entry: u64,
    /// `copy_mc_enhanced_fast_string` (its `rep movsb` counts from RDX,
    /// see [`rewind::Stop::rep_count`]); a kernel for CPUs without ERMS
    /// may not have it.
    pub copy_mc_string: Option<u64>,
    /// Every text symbol, to decode a kernel load from its function's start.
    pub text: TextSymbols,
}

/// A kernel's System.map as the watcher needs it, read once per process:
/// every case of a run boots the same kernel, and the 100,000-line file
/// took a second to scan per case (one pass per name looked up).
struct SystemMap {
    /// The addresses of [`KernelSymbols::names`] it has.
    named: HashMap<&'static str, u64>,
    /// Its text symbols, unrelocated.
    text: TextSymbols,
}

impl SystemMap {
    /// The parsed map at `path` (parsed now if this process has not yet,
    /// or if the file changed since).
    fn of(path: &Path) -> Result<Arc<SystemMap>, PoisonError> {
        type Cache = Mutex<HashMap<PathBuf, (Option<(u64, SystemTime)>, Arc<SystemMap>)>>;
        static CACHE: OnceLock<Cache> = OnceLock::new();
        let stamp = std::fs::metadata(path)
            .and_then(|m| Ok((m.len(), m.modified()?)))
            .ok();
        let cache = CACHE.get_or_init(Cache::default);
        if let Some((s, map)) = cache.lock().unwrap().get(path) {
            if *s == stamp {
                return Ok(Arc::clone(map));
            }
        }
        let text = std::fs::read_to_string(path).map_err(|e| PoisonError::Symbols {
            from: path.to_path_buf(),
            why: format!(
                "{e} (the poison model reads kernel symbols there; rebuild the kernel with `cargo xtask kernel`)"
            ),
        })?;
        let wanted: HashSet<&'static str> = KernelSymbols::names().collect();
        let mut named = HashMap::new();
        // The name first, the address only of a wanted one: one cheap pass.
        for line in text.lines() {
            let name = line.rsplit(' ').next().unwrap_or_default();
            if let Some(w) = wanted.get(name) {
                if let Some((a, _, _)) = entries(line).next() {
                    named.entry(*w).or_insert(a);
                }
            }
        }
        let map = Arc::new(SystemMap {
            named,
            text: TextSymbols::lazy(Arc::new(text), 0),
        });
        cache
            .lock()
            .unwrap()
            .insert(path.to_path_buf(), (stamp, Arc::clone(&map)));
        Ok(map)
    }
}

impl KernelSymbols {
    /// From the System.map of the booted kernel and the guest's
    /// /proc/kallsyms line for `_text` (see [`Self::kallsyms_command`]);
    /// `None` for a kernel that is never relocated (no
    /// CONFIG_RANDOMIZE_BASE), which runs at System.map's addresses.
    /// Every other address is System.map's moved by the KASLR offset: the
    /// kernel image is relocated as a whole (arch/x86/boot/compressed/
    /// kaslr.c picks one base), so one symbol's offset is every core
    /// symbol's. Reading only `_text` matters under TCG: the guest formats
    /// all of /proc/kallsyms (some 100,000 lines) for a whole `grep`,
    /// 0.6 s of every case, where one line near its start costs little.
    pub fn new(system_map: &Path, kallsyms: Option<&str>) -> Result<KernelSymbols, PoisonError> {
        let map = SystemMap::of(system_map)?;
        let named = |name: &str| map.named.get(name).copied();
        let missing = |why: String| PoisonError::Symbols {
            from: system_map.to_path_buf(),
            why,
        };
        let text_map = named("_text").ok_or_else(|| missing("no symbol `_text`".into()))?;
        let text_running = match kallsyms {
            Some(k) => symbol(k, "_text").ok_or_else(|| PoisonError::Symbols {
                from: "/proc/kallsyms (the guest's)".into(),
                why: format!("no `_text` in {k:?}"),
            })?,
            None => text_map,
        };
        let offset = text_running.wrapping_sub(text_map);
        let running = |name: &str| named(name).map(|a| a.wrapping_add(offset));
        let page_fault_entry = running(PAGE_FAULT_ENTRY)
            .ok_or_else(|| missing(format!("no symbol `{PAGE_FAULT_ENTRY}`")))?;
        let mut hooks = Vec::new();
        // Every name of a hook the kernel has: a compiler's clone is
        // called instead of the function (see [`Hook::symbols`]), and a
        // double stop where one calls the other only learns a mapping twice.
        for h in Hook::ALL {
            let found: Vec<u64> = h.symbols().iter().filter_map(|s| running(s)).collect();
            if found.is_empty() {
                return Err(missing(format!(
                    "the kernel has no `{}`: the poison model cannot see user mappings",
                    h.symbols().join("` or `")
                )));
            }
            hooks.extend(found.into_iter().map(|a| (h, a)));
        }
        Ok(KernelSymbols {
            page_offset_base: named("page_offset_base")
                .ok_or_else(|| missing("no symbol `page_offset_base`".into()))?,
            text: map.text.relocated(offset),
            text_map,
            text_running,
            hooks,
            page_fault_entry,
            copy_mc_string: running(COPY_MC_STRING),
        })
    }

    /// Every System.map name [`KernelSymbols::new`] looks up.
    fn names() -> impl Iterator<Item = &'static str> {
        [
            "_text",
            "page_offset_base",
            PAGE_FAULT_ENTRY,
            COPY_MC_STRING,
        ]
        .into_iter()
        .chain(Hook::ALL.iter().flat_map(|h| h.symbols().iter().copied()))
    }

    /// The guest command that prints the running kernel's `_text` line of
    /// /proc/kallsyms; `-m1` stops reading there, near the file's start.
    pub fn kallsyms_command() -> [&'static str; 5] {
        ["grep", "-m1", "-E", " _text$", "/proc/kallsyms"]
    }

    fn runtime(&self, addr: u64) -> u64 {
        addr.wrapping_add(self.text_running.wrapping_sub(self.text_map))
    }
}

/// `name`'s address in System.map or /proc/kallsyms text (`ADDR TYPE NAME
/// [module]` lines).
pub fn symbol(text: &str, name: &str) -> Option<u64> {
    entries(text).find_map(|(a, _, n)| (n == name).then_some(a))
}

/// The `(address, type, name)` of every line of System.map or
/// /proc/kallsyms text.
fn entries(text: &str) -> impl Iterator<Item = (u64, &str, &str)> {
    text.lines().filter_map(|l| {
        let mut w = l.split_whitespace();
        let (a, t, n) = (w.next()?, w.next()?, w.next()?);
        Some((u64::from_str_radix(a, 16).ok()?, t, n))
    })
}

/// The x86 page-fault entry. A load whose instruction faults on its other
/// operand (the store of `rep movs` into a user page not mapped yet) is
/// reported at this entry: QEMU re-executed the instruction for the watch
/// point, the store raised #PF, and the vCPU stopped with the fault frame
/// pushed. The load has not retired, and on hardware the machine check
/// would come when the instruction is restarted after the fault, so the
/// watcher resumes and waits for that.
const PAGE_FAULT_ENTRY: &str = "asm_exc_page_fault";

const COPY_MC_STRING: &str = "copy_mc_enhanced_fast_string";

/// How the watcher goes past a hook's first instruction (see
/// [`State::at_hook`]), from its bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum HookEntry {
    /// `endbr64` (f3 0f 1e fa): a kernel built with CONFIG_X86_KERNEL_IBT,
    /// like the lab's 6.12.
    Endbr64,
    /// `push %rbp` (55): frame pointers without IBT, like the lab's 6.1.
    PushRbp,
    /// Anything else: step over the breakpoint.
    Step,
}

impl HookEntry {
    fn of(first: &[u8]) -> HookEntry {
        match first {
            [0xf3, 0x0f, 0x1e, 0xfa, ..] => HookEntry::Endbr64,
            [0x55, ..] => HookEntry::PushRbp,
            _ => HookEntry::Step,
        }
    }
}

/// `gpa: 0x100201040` (HMP `gva2gpa`); `None` for "Unmapped".
pub fn parse_gva2gpa(out: &str) -> Option<u64> {
    let v = out.trim().strip_prefix("gpa:")?.trim();
    u64::from_str_radix(v.trim_start_matches("0x"), 16).ok()
}

impl Watcher {
    /// Attach to the VM's gdbstub (QEMU stops the VM while we set up), find
    /// the direct map, set the hooks, arm `lines` and the platform log's
    /// changes, resume.
    pub fn start(
        socket: &Path,
        symbols: KernelSymbols,
        platform_log: &Path,
        lines: Lines,
        cpus: u32,
    ) -> Result<Watcher, PoisonError> {
        let mut gdb = Gdb::connect(socket, T)?;
        gdb.select_cpu(0, T)?;
        let direct_map = gdb.read_u64(symbols.runtime(symbols.page_offset_base), T)?;
        let mut hooks = BTreeMap::new();
        for (hook, addr) in &symbols.hooks {
            gdb.breakpoint(true, *addr, T)?;
            let first = gdb.read(*addr, 4, T)?;
            hooks.insert(*addr, (*hook, HookEntry::of(&first)));
        }
        let seen = Arc::new(Mutex::new(Seen::default()));
        let (orders, rx) = mpsc::channel();
        let mut state = State {
            gdb,
            tail: Tail::new(platform_log),
            lines,
            direct_map,
            hooks,
            page_fault_entry: symbols.page_fault_entry,
            copy_mc_string: symbols.copy_mc_string,
            text: symbols.text,
            user_maps: UserMaps::default(),
            armed: BTreeSet::new(),
            kernel: BTreeMap::new(),
            tlb: None,
            cpus,
            seen: Arc::clone(&seen),
            returns: Vec::new(),
        };
        state.sync()?;
        state.gdb.resume()?;
        let thread = thread::spawn(move || state.run(rx));
        Ok(Watcher {
            orders,
            seen,
            thread: Some(thread),
        })
    }

    fn ask(
        &self,
        order: impl FnOnce(Sender<Result<usize, GdbError>>) -> Order,
    ) -> Result<usize, PoisonError> {
        let stopped = || {
            let why = self.seen.lock().unwrap().stopped.clone();
            PoisonError::Stopped(
                why.unwrap_or_else(|| "QEMU closed the gdbstub (see console.log)".into()),
            )
        };
        let (tx, rx) = mpsc::channel();
        self.orders.send(order(tx)).map_err(|_| stopped())?;
        match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(r) => Ok(r?),
            Err(mpsc::RecvTimeoutError::Disconnected) => Err(stopped()),
            Err(mpsc::RecvTimeoutError::Timeout) => Err(PoisonError::NoAnswer),
        }
    }

    /// Take in the platform's changes and re-arm; returns how many
    /// addresses are watched.
    pub fn sync(&self) -> Result<usize, PoisonError> {
        self.ask(Order::Sync)
    }

    /// Poison guest-physical `(address, length)` ranges and arm them.
    pub fn poison(&self, ranges: Vec<(u64, u64)>) -> Result<usize, PoisonError> {
        self.ask(|tx| Order::Poison(ranges, Vec::new(), tx))
    }

    /// Poison `line` and watch it also at user address `va` (a 4K page the
    /// lab knows maps it).
    pub fn poison_mapped(&self, line: u64, va: u64) -> Result<usize, PoisonError> {
        let page = UserMap {
            va: va & !0xfff,
            pa: line & !0xfff,
            size: 4096,
        };
        self.ask(|tx| Order::Poison(vec![(line, super::LINE)], vec![page], tx))
    }

    /// The CXL devices' poisoned lines, as their lists now say.
    pub fn cxl_lines(&self, lines: Vec<u64>) -> Result<usize, PoisonError> {
        self.ask(|tx| Order::Cxl(lines, tx))
    }

    /// What happened since the last call (user mappings: all so far).
    pub fn take(&self) -> Seen {
        let mut s = self.seen.lock().unwrap();
        Seen {
            consumptions: std::mem::take(&mut s.consumptions),
            passed: std::mem::take(&mut s.passed),
            deferred: std::mem::take(&mut s.deferred),
            user_maps: s.user_maps,
            stopped: s.stopped.clone(),
        }
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        let _ = self.orders.send(Order::Quit);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Page tables read through the direct map (page tables are in RAM).
struct GdbTables<'a> {
    gdb: &'a mut Gdb,
    direct_map: u64,
}

impl kernel::Tables for GdbTables<'_> {
    type Error = GdbError;
    fn table(&mut self, pa: u64) -> Result<[u64; 512], GdbError> {
        let bytes = self.gdb.read(self.direct_map + pa, 4096, T)?;
        let mut t = [0u64; 512];
        for (e, b) in t.iter_mut().zip(bytes.chunks_exact(8)) {
            *e = u64::from_le_bytes(b.try_into().expect("8 bytes"));
        }
        Ok(t)
    }
}

struct State {
    gdb: Gdb,
    tail: Tail,
    lines: Lines,
    direct_map: u64,
    /// Hook address -> the hook, and how to go past its first
    /// instruction (see [`HookEntry`]).
    hooks: BTreeMap<u64, (Hook, HookEntry)>,
    page_fault_entry: u64,
    copy_mc_string: Option<u64>,
    text: TextSymbols,
    user_maps: UserMaps,
    /// Virtual addresses with a watch point.
    armed: BTreeSet<u64>,
    /// Kernel aliases found per line, and the kernel page tables read to
    /// find them; forgotten at each order from the runner (a step may have
    /// created or removed a namespace).
    kernel: BTreeMap<u64, Vec<u64>>,
    tlb: Option<Vec<kernel::Leaf>>,
    cpus: u32,
    seen: Arc<Mutex<Seen>>,
    /// mremap() calls of known mappings between their entry and return.
    returns: Vec<MremapCall>,
}

/// An mremap() whose old range holds a mapping the model knows, followed
/// from its entry to its return (a breakpoint at the return address).
struct MremapCall {
    /// The return address, and RSP when the vCPU is there (entry's + 8):
    /// which task's call returns.
    ret: u64,
    rsp: u64,
    old: u64,
    /// The length that moves (the smaller of old and new length).
    len: u64,
}

impl State {
    /// Serve until told to quit; an error is kept for the runner to report.
    fn run(mut self, orders: Receiver<Order>) {
        let served = self.serve(&orders);
        if let Err(e) = &served {
            self.seen.lock().unwrap().stopped = Some(e.to_string());
        }
        // A running VM drops what the stub receives and stops instead
        // (gdbstub.c, gdb_read_byte()): stop it first. After an error it
        // may be stopped already.
        if served.is_ok() {
            let _ = self.pause();
        }
        // Leave no breakpoint behind: the hooks fire on every mremap()
        // and every dax fault, and with nobody to
        // resume it the VM would stop at the next one (the lab still reads
        // dmesg after the steps). Detaching also resumes a VM an error
        // left stopped, so the step ends and fails with that error instead
        // of waiting for a guest that never resumes.
        if self.gdb.detach(T).is_err() {
            let _ = self.gdb.resume();
        }
    }

    fn serve(&mut self, orders: &Receiver<Order>) -> Result<(), GdbError> {
        loop {
            if let Some(stop) = self.gdb.wait_stop(Duration::from_millis(20))? {
                self.on_stop(stop.cpu.unwrap_or(0), stop.watch.map(|w| w.1))?;
                self.gdb.resume()?;
            }
            let order = match orders.try_recv() {
                Ok(o) => Some(o),
                Err(mpsc::TryRecvError::Empty) => None,
                Err(mpsc::TryRecvError::Disconnected) => return Ok(()),
            };
            let result = match order {
                Some(Order::Quit) => return Ok(()),
                Some(Order::Sync(reply)) => Some((reply, Vec::new(), Vec::new())),
                Some(Order::Poison(ranges, maps, reply)) => Some((reply, ranges, maps)),
                Some(Order::Cxl(lines, reply)) => {
                    let r = self.paused(|s| {
                        s.lines.set_cxl(&lines);
                        Ok(())
                    });
                    let _ = reply.send(r);
                    None
                }
                // An injection in the middle of a step: arm it now.
                None if self.tail.has_new() => {
                    self.paused(|_| Ok(()))?;
                    None
                }
                None => None,
            };
            if let Some((reply, ranges, maps)) = result {
                let r = self.paused(|s| {
                    for (a, l) in &ranges {
                        s.lines.add_range(*a, *l, super::Source::MachineCheck);
                    }
                    for m in maps {
                        s.user_maps.add(m);
                    }
                    Ok(())
                });
                let _ = reply.send(r);
            }
        }
    }

    /// Stop the VM, do `f`, re-arm, resume; the number of watched addresses.
    fn paused(
        &mut self,
        f: impl FnOnce(&mut Self) -> Result<(), GdbError>,
    ) -> Result<usize, GdbError> {
        self.pause()?;
        f(self)?;
        let n = self.sync()?;
        self.gdb.resume()?;
        Ok(n)
    }

    /// Stop the VM; a watch point or hook may have fired meanwhile: handle it.
    fn pause(&mut self) -> Result<(), GdbError> {
        self.gdb.interrupt()?;
        let deadline = Instant::now() + T;
        loop {
            if let Some(stop) = self.gdb.wait_stop(Duration::from_millis(200))? {
                return self.on_stop(stop.cpu.unwrap_or(0), stop.watch.map(|w| w.1));
            }
            if Instant::now() > deadline {
                return Err(GdbError::Timeout(T));
            }
        }
    }

    fn refresh(&mut self) -> Result<(), GdbError> {
        let changes = self
            .tail
            .read_new()
            .map_err(|e| GdbError::Io(std::io::Error::other(e)))?;
        for c in &changes {
            self.lines.apply(c);
        }
        Ok(())
    }

    /// Every address a poisoned line can be read at.
    /// The kernel-half leaves of CPU 0's page tables that map a poisoned
    /// line.
    fn walk_kernel_tables(&mut self) -> Result<Vec<kernel::Leaf>, GdbError> {
        self.gdb.monitor("cpu 0", T)?;
        let regs = self.gdb.monitor("info registers", T)?;
        let field = |name: &str| {
            qmp::register_field(&regs, name).ok_or_else(|| {
                GdbError::Malformed(format!("no {name} in `info registers`: {regs}"))
            })
        };
        let root = field("CR3")?;
        let levels = if field("CR4")? & kernel::CR4_LA57 != 0 {
            5
        } else {
            4
        };
        let lines: Vec<u64> = self.lines.iter().collect();
        let keep = |pa: u64, size: u64| lines.iter().any(|l| (pa..pa + size).contains(l));
        let mut tables = GdbTables {
            gdb: &mut self.gdb,
            direct_map: self.direct_map,
        };
        kernel::kernel_leaves(&mut tables, root, levels, &keep)
    }

    fn wanted(&mut self) -> Result<BTreeSet<u64>, GdbError> {
        let mut want = BTreeSet::new();
        for line in self.lines.iter().collect::<Vec<_>>() {
            want.extend(self.kernel_aliases(line)?);
            want.extend(self.user_maps.aliases(line));
        }
        Ok(want)
    }

    /// Translate `va` with `cpu`'s page tables.
    fn translate(&mut self, cpu: u32, va: u64) -> Result<Option<u64>, GdbError> {
        self.gdb.monitor(&format!("cpu {cpu}"), T)?;
        Ok(parse_gva2gpa(
            &self.gdb.monitor(&format!("gva2gpa {va:#x}"), T)?,
        ))
    }

    /// The kernel's aliases of `line` (see [`super::kernel`]), checked by
    /// translation and kept until the next order from the runner.
    fn kernel_aliases(&mut self, line: u64) -> Result<Vec<u64>, GdbError> {
        if let Some(a) = self.kernel.get(&line) {
            return Ok(a.clone());
        }
        let direct = self.direct_map + line;
        let mut found = Vec::new();
        if self.translate(0, direct)? == Some(line) {
            found.push(direct);
        } else {
            if self.tlb.is_none() {
                self.tlb = Some(self.walk_kernel_tables()?);
            }
            let aliases: Vec<u64> = self
                .tlb
                .iter()
                .flatten()
                .filter_map(|l| l.alias(line))
                .collect();
            for va in aliases {
                if self.translate(0, va)? == Some(line) {
                    found.push(va);
                }
            }
        }
        self.kernel.insert(line, found.clone());
        Ok(found)
    }

    /// Arm exactly the addresses of the poisoned lines (VM stopped).
    fn sync(&mut self) -> Result<usize, GdbError> {
        self.refresh()?;
        let want = self.wanted()?;
        for va in self.armed.difference(&want).copied().collect::<Vec<_>>() {
            self.gdb.watch(false, Watch::Read, (va, super::LINE), T)?;
            self.armed.remove(&va);
        }
        for va in want.difference(&self.armed).copied().collect::<Vec<_>>() {
            self.gdb.watch(true, Watch::Read, (va, super::LINE), T)?;
            self.armed.insert(va);
        }
        Ok(self.armed.len())
    }

    /// A vCPU stopped (the VM with it). At a hook: learn the mapping, step
    /// over the hook. At a watched load of a line that is poisoned in the
    /// stopped CPU's own translation: inject. Leaves the VM stopped.
    fn on_stop(&mut self, cpu: u32, watched: Option<u64>) -> Result<(), GdbError> {
        let began = Instant::now();
        self.gdb.select_cpu(cpu, T)?;
        let rip = self.gdb.register(reg::RIP, T)?;
        if let Some((hook, entry)) = self.hooks.get(&rip).copied() {
            return self.at_hook(cpu, hook, entry, rip);
        }
        if self.returns.iter().any(|c| c.ret == rip) {
            return self.at_mremap_return(cpu, rip);
        }
        let Some(va) = watched else {
            return Ok(());
        };
        if rip == self.page_fault_entry {
            self.seen.lock().unwrap().deferred += 1;
            return Ok(());
        }
        let cs = self.gdb.register(reg::CS, T)?;
        let gpa = self.translate(cpu, va)?;
        self.refresh()?;
        let Some(line) = gpa.and_then(|g| self.lines.line_of(g)) else {
            self.seen.lock().unwrap().passed += 1;
            // A line cleared since it was armed: stop watching it now.
            self.sync()?;
            return Ok(());
        };
        let consumer = if cs & 3 == 3 {
            Consumer::User
        } else {
            Consumer::Kernel
        };
        let rewind_began = Instant::now();
        let rewound = self.rewind(rip, va, consumer == Consumer::Kernel)?;
        let rewind_took = rewind_began.elapsed();
        let command = Injection::consumed(consumer, line, cpu, self.cpus).hmp_command();
        let answer = self.gdb.monitor(&command, T)?;
        if !answer.trim().is_empty() {
            return Err(GdbError::Refused {
                packet: command,
                answer,
            });
        }
        self.seen.lock().unwrap().consumptions.push(Consumption {
            cpu,
            consumer,
            rip,
            va,
            gpa: line,
            command,
            rewound,
            took: began.elapsed(),
            rewind_took,
        });
        Ok(())
    }

    /// Put the vCPU back at the load, as hardware leaves it when the load
    /// raises #MC before it retires (see [`super::rewind`]): what was done,
    /// or why nothing was.
    fn rewind(&mut self, rip: u64, line_va: u64, kernel: bool) -> Result<Rewound, GdbError> {
        let (gpr, _, rflags) = self.gdb.registers(T)?;
        let regs = rewind::Regs { gpr, rip, rflags };
        // The code before RIP: from the enclosing kernel symbol (exact), or
        // a window to vote over; and the instruction at RIP.
        let symbol = kernel
            .then(|| self.text.enclosing(rip))
            .flatten()
            .filter(|s| rip - s <= SYMBOL_DECODE_LIMIT);
        let from = symbol.unwrap_or(rip.saturating_sub(rewind::VOTE_WINDOW));
        let Some((code_va, code)) = self.code(from, rip) else {
            return Ok(Rewound::Not(format!(
                "the code before RIP {rip:#x} cannot be read"
            )));
        };
        let at_rip = |code: &[u8]| {
            let off = (rip - code_va) as usize;
            (off < code.len()).then(|| {
                iced_x86::Decoder::with_ip(64, &code[off..], rip, iced_x86::DecoderOptions::NONE)
                    .decode()
            })
        };
        let (before, at, anchor) = if symbol == Some(code_va) {
            let (b, a) = rewind::decode_from(&code, code_va, rip);
            (b, a, rewind::Anchor::Symbol)
        } else {
            match rewind::vote(&code, code_va, rip) {
                Some((b, anchor)) => (Some(b), at_rip(&code), anchor),
                None => (
                    None,
                    at_rip(&code),
                    rewind::Anchor::Vote { agreeing: 0, of: 0 },
                ),
            }
        };
        let rep_count = match (self.copy_mc_string, &before) {
            (Some(f), Some(b)) if (f..f + 0x20).contains(&b.ip()) => Some(gpr[reg::RDX as usize]),
            _ => None,
        };
        let gdb = &mut self.gdb;
        let mut read = |a: u64, n: usize| gdb.read(a, n, T).ok();
        let planned = rewind::plan(rewind::Stop {
            regs,
            line_va,
            before,
            at,
            rep_count,
            mem: &mut read,
        });
        let plan = match planned {
            Ok(p) => p,
            Err(why) => return Ok(Rewound::Not(why.to_string())),
        };
        for (n, v) in plan.regs.changed(&regs) {
            self.gdb.set_register(n, v, T)?;
        }
        if plan.regs.rip != rip {
            self.gdb.set_register(reg::RIP, plan.regs.rip, T)?;
        }
        for (a, bytes) in &plan.writes {
            self.gdb.write(*a, bytes, T)?;
        }
        Ok(Rewound::To {
            rip: plan.regs.rip,
            instruction: plan.instruction,
            anchor,
            note: plan.note,
        })
    }

    /// Guest code from `from` to just past `rip` (the longest
    /// instruction), at the stopped vCPU's addresses; what of it can be
    /// read (the window may start on an unmapped page, the instruction at
    /// RIP may end on one).
    fn code(&mut self, from: u64, rip: u64) -> Option<(u64, Vec<u8>)> {
        let page = rip & !0xfff;
        let starts = [from, from.max(page)];
        let ends = [rip + rewind::MAX_INSTRUCTION as u64, rip];
        for start in starts {
            for end in ends {
                if let Ok(code) = self.gdb.read(start, (end - start) as usize, T) {
                    return Some((start, code));
                }
            }
        }
        None
    }

    /// A vCPU at the return site of an mremap() the model follows (see
    /// [`MremapCall`]): if it is that call's return (its stack), the known
    /// mappings it moved have their new address; the breakpoint goes when
    /// no followed call returns there any more. Another task passing the
    /// same site (6.1 returns through do_syscall_64(), shared by every
    /// system call) is stepped over.
    fn at_mremap_return(&mut self, cpu: u32, rip: u64) -> Result<(), GdbError> {
        let rsp = self.gdb.register(reg::RSP, T)?;
        let Some(i) = self
            .returns
            .iter()
            .position(|c| c.ret == rip && c.rsp == rsp)
        else {
            return self.step_over(cpu, rip);
        };
        let call = self.returns.remove(i);
        let new = self.gdb.register(reg::RAX, T)?;
        // -4095..-1 are errors (include/linux/err.h, IS_ERR_VALUE); the old
        // address itself means resized in place, nothing moved.
        let failed = new >= (-4095i64) as u64;
        if !failed && new != call.old && !self.user_maps.moved(call.old, new, call.len).is_empty() {
            self.learned()?;
        }
        if !self.returns.iter().any(|c| c.ret == rip) {
            self.gdb.breakpoint(false, rip, T)?;
        }
        Ok(())
    }

    /// The kernel is about to install a user mapping (or mremap() one):
    /// note it (and watch its poisoned lines), then let the CPU go on past
    /// the breakpoint.
    fn at_hook(
        &mut self,
        cpu: u32,
        hook: Hook,
        entry: HookEntry,
        rip: u64,
    ) -> Result<(), GdbError> {
        let arg = |g: &mut Gdb, r: u32| g.register(r, T);
        let new = match hook.size() {
            Some(size) => {
                let (address, pfn_t) = if hook.address_in_vmf() {
                    let vmf = arg(&mut self.gdb, reg::RDI)?;
                    let address = self.gdb.read_u64(vmf + VMF_ADDRESS, T)?;
                    (address, arg(&mut self.gdb, reg::RSI)?)
                } else {
                    (arg(&mut self.gdb, reg::RSI)?, arg(&mut self.gdb, reg::RDX)?)
                };
                let m = UserMap::installed(size, address, pfn_t);
                self.user_maps.add(m)
            }
            // mremap(addr, old_len, new_len, ...): nothing to learn unless
            // the old range holds a mapping the model knows; then where it
            // went is the call's return value.
            None => {
                let regs = arg(&mut self.gdb, reg::RDI)?;
                let old = self.gdb.read_u64(regs + PT_REGS_DI, T)?;
                let old_len = self.gdb.read_u64(regs + PT_REGS_SI, T)?;
                let new_len = self.gdb.read_u64(regs + PT_REGS_DX, T)?;
                // What moves is the part that stays: a shrink drops the tail.
                let len = old_len.min(new_len);
                if self.user_maps.overlaps(old, len) {
                    let rsp = arg(&mut self.gdb, reg::RSP)?;
                    let ret = self.gdb.read_u64(rsp, T)?;
                    if !self.returns.iter().any(|c| c.ret == ret) {
                        self.gdb.breakpoint(true, ret, T)?;
                    }
                    self.returns.push(MremapCall {
                        ret,
                        rsp: rsp + 8,
                        old,
                        len,
                    });
                }
                false
            }
        };
        if new {
            self.learned()?;
        }
        // Past the hook's first instruction without stepping over the
        // breakpoint: that removes and re-inserts it, and QEMU 7.2 flushes
        // all translated code at each (cpu.c breakpoint_invalidate()):
        // 20-30 ms of every dax fault, a minute for mlock() of 8 MiB of 4K
        // device-dax.
        match entry {
            // Does nothing here (TCG has no CET: no branch tracking).
            HookEntry::Endbr64 => self.gdb.set_register(reg::RIP, rip + 4, T),
            // What `push %rbp` does: RBP stored below RSP, RSP lowered.
            HookEntry::PushRbp => {
                let (gpr, _, _) = self.gdb.registers(T)?;
                let (rbp, rsp) = (gpr[reg::RBP as usize], gpr[reg::RSP as usize]);
                let top = rsp.wrapping_sub(8);
                self.gdb.write(top, &rbp.to_le_bytes(), T)?;
                self.gdb.set_register(reg::RSP, top, T)?;
                self.gdb.set_register(reg::RIP, rip + 1, T)
            }
            HookEntry::Step => self.step_over(cpu, rip),
        }
    }

    /// A user mapping was learned: count it, and watch its poisoned lines.
    fn learned(&mut self) -> Result<(), GdbError> {
        self.seen.lock().unwrap().user_maps = self.user_maps.len() as u64;
        self.sync().map(|_| ())
    }

    /// Run `cpu` over the breakpoint at `rip`: out, one step, back in.
    fn step_over(&mut self, cpu: u32, rip: u64) -> Result<(), GdbError> {
        self.gdb.breakpoint(false, rip, T)?;
        self.gdb.step(cpu, T)?;
        self.gdb.breakpoint(true, rip, T)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hook_entry_is_known_by_its_first_bytes() {
        assert_eq!(HookEntry::of(&[0xf3, 0x0f, 0x1e, 0xfa]), HookEntry::Endbr64);
        assert_eq!(HookEntry::of(&[0x55, 0x48, 0x89, 0xe5]), HookEntry::PushRbp);
        // `call __fentry__`, or a nop: stepped over.
        assert_eq!(HookEntry::of(&[0xe8, 0, 0, 0]), HookEntry::Step);
        assert_eq!(HookEntry::of(&[]), HookEntry::Step);
    }

    #[test]
    fn gva2gpa_answers() {
        assert_eq!(parse_gva2gpa("gpa: 0x100201040\r\n"), Some(0x1_0020_1040));
        assert_eq!(parse_gva2gpa("Unmapped\r\n"), None);
    }

    /// A System.map without the huge-page hooks (the test adds either name).
    const MAP: &str = "ffffffff81000000 T _text\nffffffff81000100 t fault_in_readable\nffffffff81000200 T __get_user_nocheck_4\n\
        ffffffff811475e0 T vmf_insert_mixed\nffffffff811475f0 T vmf_insert_mixed_mkwrite\n\
        ffffffff81190000 T __x64_sys_mremap\nffffffff81601230 T asm_exc_page_fault\n\
        ffffffff81e00000 T _etext\nffffffff82a0c2e8 D page_offset_base\nffffffff82a0c2f0 D vmalloc_base\n";

    #[test]
    fn symbols_come_from_system_map_with_the_kaslr_offset() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("System.map");
        std::fs::write(
            &p,
            format!("{MAP}ffffffff8118cdf0 T vmf_insert_pfn_pmd\nffffffff8118ce00 T vmf_insert_pfn_pud\n"),
        )
        .unwrap();
        let kallsyms = "ffffffff8a000000 T _text\n";
        let s = KernelSymbols::new(&p, Some(kallsyms)).unwrap();
        assert_eq!(s.runtime(s.page_offset_base), 0xffff_ffff_8ba0_c2e8);
        assert_eq!(s.hooks[2], (Hook::Pmd, 0xffff_ffff_8a18_cdf0));
        assert_eq!(s.page_fault_entry, 0xffff_ffff_8a60_1230);
        // A kernel load is decoded from its function's running start; a
        // module's (past _etext) has none.
        assert_eq!(
            s.text.enclosing(0xffff_ffff_8a00_0184),
            Some(0xffff_ffff_8a00_0100)
        );
        assert_eq!(
            s.text.enclosing(0xffff_ffff_8a00_020c),
            Some(0xffff_ffff_8a00_0200)
        );
        assert_eq!(s.text.enclosing(0xffff_ffff_c000_1000), None);
        let none = dir.path().join("none");
        assert!(KernelSymbols::new(&none, Some(kallsyms))
            .unwrap_err()
            .to_string()
            .contains("cargo xtask kernel"));
        assert!(KernelSymbols::new(&p, Some("ffffffff8a000000 T _etext\n"))
            .unwrap_err()
            .to_string()
            .contains("no `_text`"));
        // A kernel without KASLR: System.map's own addresses, no offset.
        let s = KernelSymbols::new(&p, None).unwrap();
        assert_eq!(s.text_running, 0xffff_ffff_8100_0000);
        assert_eq!(s.hooks[2], (Hook::Pmd, 0xffff_ffff_8118_cdf0));
        // 6.1: the huge-page hooks are the `_prot` functions.
        std::fs::write(
            &p,
            format!("{MAP}ffffffff8118cdf0 T vmf_insert_pfn_pmd_prot\nffffffff8118ce00 T vmf_insert_pfn_pud_prot\n"),
        )
        .unwrap();
        let s = KernelSymbols::new(&p, Some(kallsyms)).unwrap();
        assert_eq!(s.hooks[2], (Hook::Pmd, 0xffff_ffff_8a18_cdf0));
    }
}
