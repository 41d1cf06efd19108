//! Device-dax operations: map, touch, consume, poison, and the SIGBUS
//! plumbing they need.
//!
//! Consuming poison is done in a forked child: the child reads the line in a
//! tight loop, and its SIGBUS handler writes the siginfo to a pipe and
//! `_exit`s. Returning from a SIGBUS handler would re-execute the faulting
//! load (an endless loop on real poison) and Rust has no safe `siglongjmp`;
//! a child that dies after reporting is simple and always safe. The child
//! shares the MAP_SHARED mapping, so the kernel's unmap on memory failure is
//! seen by the agent too.
//!
//! The agent process itself also has a SIGBUS handler, for the
//! action-optional signals memory_failure() sends to "early kill" tasks: it
//! records them for the `signals` op and returns (an AO signal does not
//! re-fault).

use crate::error::{io, last_os, AgentError};
use pmem_lab_proto::SignalInfo;
use std::collections::HashMap;
use std::fs::OpenOptions;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

struct Mapping {
    addr: usize,
    len: usize,
}

static MAPS: Mutex<Option<HashMap<String, Mapping>>> = Mutex::new(None);

/// Write end of the pipe the SIGBUS handler reports into (-1: none).
static SIG_PIPE_W: AtomicI32 = AtomicI32::new(-1);
static SIG_PIPE_R: AtomicI32 = AtomicI32::new(-1);

/// Size of one record in the signal pipe: signo, code, addr, lsb, tid.
const RECORD: usize = 5 * 8;

/// The siginfo fields of a SIGBUS, read the way the kernel lays them out on
/// x86-64 (`_sigfault`: si_addr at byte 16, si_addr_lsb right after it);
/// the libc crate has no accessor for si_addr_lsb.
unsafe fn record_of(sig: libc::c_int, info: *const libc::siginfo_t) -> [u64; 5] {
    let raw = info as *const u8;
    let code = *(raw.add(8) as *const i32);
    let addr = *(raw.add(16) as *const u64);
    let lsb = *(raw.add(24) as *const i16);
    let tid = libc::syscall(libc::SYS_gettid) as u64;
    [sig as u64, code as u64, addr, lsb as u16 as u64, tid]
}

fn write_record(fd: i32, rec: &[u64; 5]) {
    // SAFETY: write(2) is async-signal-safe; the buffer is ours.
    unsafe { libc::write(fd, rec.as_ptr() as *const libc::c_void, RECORD) };
}

/// The agent's handler: record and return (AO signals, see module doc).
/// Anything else (a plain bus error from a bug) must not loop forever: the
/// default action is restored and the signal re-raised, so the agent dies,
/// init panics and the lab reports it.
extern "C" fn on_sigbus(sig: libc::c_int, info: *mut libc::siginfo_t, _: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo to an SA_SIGINFO handler.
    let rec = unsafe { record_of(sig, info) };
    write_record(SIG_PIPE_W.load(Ordering::Relaxed), &rec);
    if rec[1] as i32 != SignalInfo::BUS_MCEERR_AO {
        // SAFETY: async-signal-safe calls only.
        unsafe {
            libc::signal(libc::SIGBUS, libc::SIG_DFL);
            libc::raise(libc::SIGBUS);
        }
    }
}

/// The consuming child's handler: report, then exit at once.
extern "C" fn on_sigbus_child(sig: libc::c_int, info: *mut libc::siginfo_t, _: *mut libc::c_void) {
    // SAFETY: as above; _exit is async-signal-safe.
    unsafe {
        let rec = record_of(sig, info);
        write_record(SIG_PIPE_W.load(Ordering::Relaxed), &rec);
        libc::_exit(0);
    }
}

fn set_handler(handler: extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void)) {
    // SAFETY: installing a handler with a zeroed, then filled, sigaction.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = handler as usize;
        sa.sa_flags = libc::SA_SIGINFO | libc::SA_RESTART;
        libc::sigemptyset(&mut sa.sa_mask);
        libc::sigaction(libc::SIGBUS, &sa, std::ptr::null_mut());
    }
}

/// Called once at agent start.
pub fn init() -> Result<(), AgentError> {
    let mut fds = [0i32; 2];
    // SAFETY: pipe2 fills the array.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC | libc::O_NONBLOCK) } != 0 {
        return Err(last_os("pipe2"));
    }
    SIG_PIPE_R.store(fds[0], Ordering::Relaxed);
    SIG_PIPE_W.store(fds[1], Ordering::Relaxed);
    set_handler(on_sigbus);
    Ok(())
}

fn read_records(fd: i32) -> Vec<SignalInfo> {
    let mut out = Vec::new();
    let mut rec = [0u64; 5];
    // SAFETY: reading whole records into our buffer from a non-blocking fd.
    while unsafe { libc::read(fd, rec.as_mut_ptr() as *mut libc::c_void, RECORD) }
        == RECORD as isize
    {
        out.push(SignalInfo {
            signo: rec[0] as i32,
            code: rec[1] as i32,
            addr: rec[2],
            addr_lsb: rec[3] as u16,
            tid: rec[4] as i32,
        });
    }
    out
}

/// Signals the agent received, waiting up to `wait` for the first.
pub fn signals(wait: Duration) -> Vec<SignalInfo> {
    let deadline = Instant::now() + wait;
    loop {
        let got = read_records(SIG_PIPE_R.load(Ordering::Relaxed));
        if !got.is_empty() || Instant::now() >= deadline {
            return got;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub fn map(name: &str, path: &str, offset: u64, length: u64) -> Result<u64, AgentError> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(io(format!("open {path}")))?;
    // SAFETY: a fresh shared mapping of the device; the fd may close after.
    let addr = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            length as usize,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            file.as_raw_fd(),
            offset as libc::off_t,
        )
    };
    if addr == libc::MAP_FAILED {
        return Err(AgentError::Refused(format!(
            "mmap {path} offset {offset:#x} length {length:#x}: {}",
            std::io::Error::last_os_error()
        )));
    }
    let mut maps = MAPS.lock().unwrap();
    let maps = maps.get_or_insert_with(HashMap::new);
    if let Some(old) = maps.insert(
        name.to_string(),
        Mapping {
            addr: addr as usize,
            len: length as usize,
        },
    ) {
        // SAFETY: unmapping the mapping we replaced under this name.
        unsafe { libc::munmap(old.addr as *mut libc::c_void, old.len) };
    }
    Ok(addr as u64)
}

pub fn unmap(name: &str) -> Result<(), AgentError> {
    let m = MAPS
        .lock()
        .unwrap()
        .get_or_insert_with(HashMap::new)
        .remove(name)
        .ok_or_else(|| AgentError::Refused(format!("no mapping named {name}")))?;
    // SAFETY: unmapping a mapping we made.
    unsafe { libc::munmap(m.addr as *mut libc::c_void, m.len) };
    Ok(())
}

/// The address of `[offset, offset + len)` in mapping `name`.
fn locate(name: &str, offset: u64, len: u64) -> Result<usize, AgentError> {
    let maps = MAPS.lock().unwrap();
    let m = maps
        .as_ref()
        .and_then(|m| m.get(name))
        .ok_or_else(|| AgentError::Refused(format!("no mapping named {name}")))?;
    if offset.checked_add(len).is_none_or(|end| end > m.len as u64) {
        return Err(AgentError::Refused(format!(
            "{offset:#x}+{len:#x} is outside mapping {name} ({:#x} bytes)",
            m.len
        )));
    }
    Ok(m.addr + offset as usize)
}

fn pin(cpu: Option<u32>) -> Result<(), AgentError> {
    let Some(cpu) = cpu else { return Ok(()) };
    // SAFETY: a zeroed cpu_set_t filled with one CPU.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu as usize, &mut set);
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            return Err(AgentError::Refused(format!(
                "pin to CPU {cpu}: {}",
                std::io::Error::last_os_error()
            )));
        }
    }
    Ok(())
}

fn minor_faults() -> u64 {
    // SAFETY: getrusage fills the struct.
    unsafe {
        let mut ru: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_THREAD, &mut ru);
        ru.ru_minflt as u64
    }
}

/// Fault every 4 KiB page of the range in, as a read would, without
/// reading it; (pages, minor faults taken). MADV_POPULATE_READ (5.14)
/// takes the same read faults through GUP (mm/madvise.c,
/// madvise_populate()), which count in ru_minflt like a load's
/// (mm/memory.c, mm_account_fault()), but loads no data: a window that
/// holds a poisoned line is faulted in without consuming it, where a load
/// of every page would take the machine check as it does on hardware.
pub fn touch(
    name: &str,
    offset: u64,
    length: u64,
    cpu: Option<u32>,
) -> Result<(u64, u64), AgentError> {
    pin(cpu)?;
    let base = locate(name, offset, length)?;
    let pages = length.div_ceil(4096);
    let before = minor_faults();
    // The range starts on a page: madvise wants it aligned.
    let start = base & !4095;
    let len = (base + length as usize - start).div_ceil(4096) * 4096;
    // SAFETY: inside our mapping (checked by locate); populating changes
    // no memory.
    if unsafe { libc::madvise(start as *mut libc::c_void, len, MADV_POPULATE_READ) } != 0 {
        return Err(AgentError::Refused(format!(
            "madvise(MADV_POPULATE_READ) of {len:#x} bytes at {start:#x}: {} (the kernel needs 5.14 or later)",
            std::io::Error::last_os_error()
        )));
    }
    Ok((pages, minor_faults() - before))
}

/// include/uapi/asm-generic/mman-common.h.
const MADV_POPULATE_READ: libc::c_int = 22;

/// What a consuming or poisoning child does once running.
#[derive(Clone, Copy)]
pub enum ChildAction {
    /// Load this address once.
    Read(usize),
    /// madvise(MADV_HWPOISON) the page at this address.
    Poison(usize),
}

/// Run `action` in a child pinned to `cpu`. `started` is called once the
/// child runs (for `Read`, once it is reading). Returns the SIGBUS the child
/// reported, or `None` if it ran `timeout` without one.
pub fn in_child(
    action: ChildAction,
    cpu: Option<u32>,
    timeout: Duration,
    started: impl FnOnce(),
) -> Result<(Option<SignalInfo>, Duration), AgentError> {
    let mut report = [0i32; 2];
    let mut ready = [0i32; 2];
    // SAFETY: pipe2 fills the arrays.
    unsafe {
        if libc::pipe2(report.as_mut_ptr(), libc::O_CLOEXEC) != 0
            || libc::pipe2(ready.as_mut_ptr(), libc::O_CLOEXEC) != 0
        {
            return Err(last_os("pipe2"));
        }
    }
    let start = Instant::now();
    // SAFETY: the child only makes async-signal-safe calls and plain memory
    // reads, then _exits: nothing of the parent's threads is needed.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(last_os("fork"));
    }
    if pid == 0 {
        child(action, cpu, report[1], ready[1]);
    }
    // SAFETY: closing our copies of the child's ends; fds are ours.
    unsafe {
        libc::close(report[1]);
        libc::close(ready[1]);
    }
    let mut byte = 0u8;
    // SAFETY: blocking read of one byte; returns 0 if the child died first.
    let got = unsafe { libc::read(ready[0], &mut byte as *mut u8 as *mut libc::c_void, 1) };
    if got == 1 {
        started();
    }
    // Sleep until the child writes its report or exits (both make the
    // report pipe readable) or the time is up. No polling: on a 1-vCPU
    // guest every wakeup of ours is kernel time on the CPU the machine check
    // must find in user mode.
    let left = timeout.saturating_sub(start.elapsed());
    let mut pfd = libc::pollfd {
        fd: report[0],
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: poll on our pipe.
    let ready_now =
        unsafe { libc::poll(&mut pfd, 1, left.as_millis().min(i32::MAX as u128) as i32) };
    let mut status = 0;
    // SAFETY: killing (if still running) and reaping our own child.
    unsafe {
        if ready_now <= 0 {
            libc::kill(pid, libc::SIGKILL);
        }
        libc::waitpid(pid, &mut status, 0);
    }
    // SAFETY: make the read end non-blocking before draining it.
    unsafe { libc::fcntl(report[0], libc::F_SETFL, libc::O_NONBLOCK) };
    let signal = read_records(report[0]).into_iter().next();
    // SAFETY: closing our pipe ends.
    unsafe {
        libc::close(report[0]);
        libc::close(ready[0]);
    }
    if signal.is_none() && libc::WIFSIGNALED(status) && libc::WTERMSIG(status) != libc::SIGKILL {
        return Err(AgentError::Refused(format!(
            "the child died of signal {} without a report",
            libc::WTERMSIG(status)
        )));
    }
    Ok((signal, start.elapsed()))
}

fn child(action: ChildAction, cpu: Option<u32>, report: i32, ready: i32) -> ! {
    SIG_PIPE_W.store(report, Ordering::Relaxed);
    set_handler(on_sigbus_child);
    if pin(cpu).is_err() {
        // SAFETY: leaving the child.
        unsafe { libc::_exit(2) };
    }
    let tell_ready = || {
        let b = 1u8;
        // SAFETY: one byte to the parent.
        unsafe { libc::write(ready, &b as *const u8 as *const libc::c_void, 1) };
    };
    match action {
        ChildAction::Read(addr) => {
            tell_ready();
            // SAFETY: inside the mapping (checked by the caller). A SIGBUS
            // ends the child through its handler.
            unsafe { std::ptr::read_volatile(addr as *const u64) };
            // No signal: report nothing and leave.
            unsafe { libc::_exit(0) };
        }
        ChildAction::Poison(addr) => {
            tell_ready();
            let page = addr & !4095;
            // SAFETY: madvise on our mapping; a SIGBUS ends the child.
            unsafe { libc::madvise(page as *mut libc::c_void, 4096, libc::MADV_HWPOISON) };
            // No signal: report nothing and leave.
            unsafe { libc::_exit(0) };
        }
    }
}

pub fn child_action_read(name: &str, offset: u64) -> Result<ChildAction, AgentError> {
    Ok(ChildAction::Read(locate(name, offset, 8)?))
}

pub fn child_action_poison(name: &str, offset: u64) -> Result<ChildAction, AgentError> {
    Ok(ChildAction::Poison(locate(name, offset, 1)?))
}

/// prctl(PR_MCE_KILL) for the calling thread.
pub fn mce_kill(policy: &str) -> Result<(), AgentError> {
    let (op, arg) = match policy {
        "early" => (libc::PR_MCE_KILL_SET, libc::PR_MCE_KILL_EARLY),
        "late" => (libc::PR_MCE_KILL_SET, libc::PR_MCE_KILL_LATE),
        "default" => (libc::PR_MCE_KILL_CLEAR, 0),
        other => {
            return Err(AgentError::Refused(format!(
                "unknown PR_MCE_KILL policy {other}: early, late or default"
            )))
        }
    };
    // SAFETY: plain prctl.
    let r = unsafe { libc::prctl(libc::PR_MCE_KILL, op, arg, 0, 0) };
    if r != 0 {
        return Err(AgentError::Refused(format!(
            "prctl(PR_MCE_KILL): {}",
            std::io::Error::last_os_error()
        )));
    }
    Ok(())
}
