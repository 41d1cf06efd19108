//! A small client of the GDB remote serial protocol, for QEMU's gdbstub.
//!
//! Why not gdb itself: the lab needs a handful of packets (watch points,
//! breakpoints, a few registers, memory reads, monitor commands), answered
//! in well under a millisecond each, from a thread that also takes orders
//! from the runner and must tell a stop from a reply. Driving gdb would add
//! a process per VM (its bare start is 0.09 s warm, 0.22 s cold on this
//! machine, before any symbols), its MI or CLI text on top of this
//! protocol, and a dependency the guest-side tools do not need.
//!
//! Protocol: "Remote Serial Protocol" in gdb's manual (packets `$...#cs`,
//! acks, stop replies `T`, `Z`/`z`, `p`, `m`, `qRcmd`); QEMU's side is
//! gdbstub/gdbstub.c. QEMU numbers threads from 1 = vCPU 0 and stops every
//! vCPU whenever it reports a stop.

use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

#[derive(Debug, thiserror::Error)]
pub enum GdbError {
    #[error("gdbstub: {0}")]
    Io(#[from] io::Error),
    #[error("gdbstub: no answer within {0:?}")]
    Timeout(Duration),
    #[error("gdbstub: QEMU closed the connection (did the VM exit?)")]
    Closed,
    #[error("gdbstub: `{packet}` answered `{answer}`")]
    Refused { packet: String, answer: String },
    #[error("gdbstub: malformed answer `{0}`")]
    Malformed(String),
}

/// The kinds of watch point (`Z2`..`Z4`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Watch {
    Write = 2,
    Read = 3,
    Access = 4,
}

/// Why the target stopped, from a stop reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stop {
    pub signal: u8,
    /// vCPU index (QEMU's thread id minus one), when the reply names it.
    pub cpu: Option<u32>,
    /// The watch point that fired: its kind and the address it watched.
    pub watch: Option<(Watch, u64)>,
}

/// `$payload#checksum`.
pub fn frame(payload: &str) -> Vec<u8> {
    let sum = payload.bytes().fold(0u8, |a, b| a.wrapping_add(b));
    format!("${payload}#{sum:02x}").into_bytes()
}

/// Undo the protocol's escaping (`}` then byte ^ 0x20) and run-length
/// encoding (`x*n`: n - 29 more copies of x).
pub fn unescape(raw: &[u8]) -> Result<Vec<u8>, GdbError> {
    let mut out = Vec::with_capacity(raw.len());
    let mut it = raw.iter().copied();
    while let Some(b) = it.next() {
        match b {
            b'}' => out.push(it.next().ok_or_else(|| malformed(raw))? ^ 0x20),
            b'*' => {
                let last = *out.last().ok_or_else(|| malformed(raw))?;
                let n = it.next().ok_or_else(|| malformed(raw))?;
                let copies = n.checked_sub(29).ok_or_else(|| malformed(raw))?;
                out.extend(std::iter::repeat_n(last, copies as usize));
            }
            _ => out.push(b),
        }
    }
    Ok(out)
}

fn malformed(raw: &[u8]) -> GdbError {
    GdbError::Malformed(String::from_utf8_lossy(raw).into_owned())
}

pub fn hex_decode(s: &str) -> Result<Vec<u8>, GdbError> {
    if !s.len().is_multiple_of(2) {
        return Err(GdbError::Malformed(s.into()));
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).map_err(|_| GdbError::Malformed(s.into())))
        .collect()
}

pub fn hex_encode(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A register or memory value: target-endian (little) bytes in hex.
pub fn le_value(hex: &str) -> Result<u64, GdbError> {
    let bytes = hex_decode(hex)?;
    if bytes.is_empty() || bytes.len() > 8 {
        return Err(GdbError::Malformed(hex.into()));
    }
    Ok(bytes
        .iter()
        .rev()
        .fold(0u64, |v, b| (v << 8) | u64::from(*b)))
}

/// Parse a stop reply: `S05`, or `T05thread:01;rwatch:ffff888000001000;`.
/// `None` for anything else (an `O` console packet, an exit `W`).
pub fn parse_stop(reply: &str) -> Option<Stop> {
    let kind = reply.as_bytes().first()?;
    if !matches!(kind, b'S' | b'T') || reply.len() < 3 {
        return None;
    }
    let signal = u8::from_str_radix(reply.get(1..3)?, 16).ok()?;
    let mut stop = Stop {
        signal,
        cpu: None,
        watch: None,
    };
    for pair in reply[3..].split(';').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once(':')?;
        let watch = match key {
            "watch" => Some(Watch::Write),
            "rwatch" => Some(Watch::Read),
            "awatch" => Some(Watch::Access),
            _ => None,
        };
        if let Some(w) = watch {
            stop.watch = Some((w, u64::from_str_radix(value, 16).ok()?));
        } else if key == "thread" {
            // `pP.T` with the multiprocess extension, else `T`.
            let t = value.rsplit('.').next()?;
            let t = u32::from_str_radix(t.trim_start_matches('p'), 16).ok()?;
            stop.cpu = t.checked_sub(1);
        }
    }
    Some(stop)
}

/// x86-64 register numbers in gdb's layout: the general registers, RIP,
/// EFLAGS and the selectors, which every QEMU numbers the same (control
/// registers: see [`crate::vm::qmp::register_field`]).
/// Bytes per `m` packet of a long [`Gdb::read`].
pub const READ_CHUNK: usize = 1024;

pub mod reg {
    pub const RAX: u32 = 0;
    pub const RCX: u32 = 2;
    pub const RDX: u32 = 3;
    pub const RSI: u32 = 4;
    pub const RDI: u32 = 5;
    pub const RBP: u32 = 6;
    pub const RSP: u32 = 7;
    pub const R8: u32 = 8;
    pub const RIP: u32 = 16;
    pub const EFLAGS: u32 = 17;
    pub const CS: u32 = 18;
}

/// A connection to QEMU's gdbstub.
pub struct Gdb {
    stream: UnixStream,
    buf: Vec<u8>,
    /// QStartNoAckMode accepted: no `+` after each packet.
    no_ack: bool,
}

impl Gdb {
    /// Connect; QEMU stops the VM when a debugger attaches, so the caller
    /// continues it ([`Gdb::resume`]) once it has set what it needs.
    pub fn connect(path: &Path, timeout: Duration) -> Result<Gdb, GdbError> {
        let stream = UnixStream::connect(path)?;
        let mut g = Gdb {
            stream,
            buf: Vec::new(),
            no_ack: false,
        };
        // QEMU stops the VM on attach and reports that stop as well as
        // answering `?` (measured: `T02` then `T05`). Every stop reply
        // comes before the answer to the next packet, so reading up to
        // that answer drains them all, with no wait for silence (a 100 ms
        // wait here was a fifth of every case's watcher start).
        g.send("?")?;
        g.send("QStartNoAckMode")?;
        let answer = loop {
            let p = g.read_packet(timeout)?;
            let stop_or_output = matches!(p.as_bytes().first(), Some(b'T' | b'S'))
                || (p.starts_with('O') && p != "OK");
            if !stop_or_output {
                break p;
            }
        };
        g.no_ack = answer == "OK";
        // QEMU answers `p` (one register) only to a client that has read the
        // target description (gdbstub.c: gdb_has_xml).
        let xml = g.xfer("target.xml", timeout)?;
        if !xml.contains("i386:x86-64") {
            return Err(GdbError::Malformed(xml));
        }
        Ok(g)
    }

    /// A whole target-description file (`qXfer:features:read`, in pieces).
    fn xfer(&mut self, annex: &str, timeout: Duration) -> Result<String, GdbError> {
        let mut out = String::new();
        loop {
            let packet = format!("qXfer:features:read:{annex}:{:x},7f0", out.len());
            let answer = self.request(&packet, timeout)?;
            let (more, text) = match answer.split_at_checked(1) {
                Some(("m", t)) => (true, t),
                Some(("l", t)) => (false, t),
                _ => return Err(GdbError::Refused { packet, answer }),
            };
            out.push_str(text);
            if !more || text.is_empty() {
                return Ok(out);
            }
        }
    }

    fn send(&mut self, payload: &str) -> Result<(), GdbError> {
        self.stream.write_all(&frame(payload))?;
        Ok(())
    }

    /// Read one packet (its payload, unescaped), acking it unless acks are
    /// off. Stray `+`/`-` are skipped.
    pub fn read_packet(&mut self, timeout: Duration) -> Result<String, GdbError> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(start) = self.buf.iter().position(|b| *b == b'$') {
                if let Some(hash) = self.buf[start..].iter().position(|b| *b == b'#') {
                    let end = start + hash;
                    if self.buf.len() >= end + 3 {
                        let raw = self.buf[start + 1..end].to_vec();
                        self.buf.drain(..end + 3);
                        if !self.no_ack {
                            self.stream.write_all(b"+")?;
                        }
                        return Ok(String::from_utf8_lossy(&unescape(&raw)?).into_owned());
                    }
                }
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(GdbError::Timeout(timeout));
            }
            self.stream.set_read_timeout(Some(deadline - now))?;
            let mut chunk = [0u8; 4096];
            match self.stream.read(&mut chunk) {
                Ok(0) => return Err(GdbError::Closed),
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    return Err(GdbError::Timeout(timeout))
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Send a packet and return its answer (console `O` packets skipped).
    pub fn request(&mut self, payload: &str, timeout: Duration) -> Result<String, GdbError> {
        self.send(payload)?;
        loop {
            let answer = self.read_packet(timeout)?;
            if answer.starts_with('O') && answer != "OK" {
                continue;
            }
            return Ok(answer);
        }
    }

    fn expect_ok(&mut self, payload: &str, timeout: Duration) -> Result<(), GdbError> {
        match self.request(payload, timeout)? {
            a if a == "OK" => Ok(()),
            answer => Err(GdbError::Refused {
                packet: payload.into(),
                answer,
            }),
        }
    }

    /// Insert (`on`) or remove a watch point on `len` bytes at virtual
    /// address `addr` (all vCPUs: QEMU sets it on each).
    pub fn watch(
        &mut self,
        on: bool,
        kind: Watch,
        (addr, len): (u64, u64),
        timeout: Duration,
    ) -> Result<(), GdbError> {
        let op = if on { 'Z' } else { 'z' };
        self.expect_ok(&format!("{op}{},{addr:x},{len:x}", kind as u8), timeout)
    }

    /// Insert (`on`) or remove a breakpoint at `addr` (under TCG QEMU checks
    /// it when it translates code: the guest's memory is not written).
    pub fn breakpoint(&mut self, on: bool, addr: u64, timeout: Duration) -> Result<(), GdbError> {
        let op = if on { 'Z' } else { 'z' };
        self.expect_ok(&format!("{op}0,{addr:x},1"), timeout)
    }

    /// Execute one instruction on `cpu` (QEMU steps it with interrupts and
    /// timers off and stops the VM again), e.g. to get past a breakpoint
    /// taken out for the step.
    pub fn step(&mut self, cpu: u32, timeout: Duration) -> Result<Stop, GdbError> {
        self.expect_ok(&format!("Hc{:x}", cpu + 1), timeout)?;
        self.send("s")?;
        self.wait_stop(timeout)?.ok_or(GdbError::Timeout(timeout))
    }

    /// Select the vCPU that register and memory reads refer to.
    pub fn select_cpu(&mut self, cpu: u32, timeout: Duration) -> Result<(), GdbError> {
        self.expect_ok(&format!("Hg{:x}", cpu + 1), timeout)
    }

    /// One register of the selected vCPU (see [`reg`]).
    pub fn register(&mut self, number: u32, timeout: Duration) -> Result<u64, GdbError> {
        let answer = self.request(&format!("p{number:x}"), timeout)?;
        if answer.starts_with('E') {
            return Err(GdbError::Refused {
                packet: format!("p{number:x}"),
                answer,
            });
        }
        le_value(&answer)
    }

    /// The selected vCPU's general registers (gdb's amd64 order: rax rbx
    /// rcx rdx rsi rdi rbp rsp r8..r15), RIP and EFLAGS, in one `g`.
    pub fn registers(&mut self, timeout: Duration) -> Result<([u64; 16], u64, u64), GdbError> {
        let answer = self.request("g", timeout)?;
        // 17 8-byte registers, then 4-byte EFLAGS.
        if answer.starts_with('E') || answer.len() < 2 * (17 * 8 + 4) {
            return Err(GdbError::Refused {
                packet: "g".into(),
                answer,
            });
        }
        let value = |from: usize, bytes: usize| le_value(&answer[2 * from..2 * (from + bytes)]);
        let mut gpr = [0u64; 16];
        for (i, r) in gpr.iter_mut().enumerate() {
            *r = value(8 * i, 8)?;
        }
        Ok((gpr, value(16 * 8, 8)?, value(17 * 8, 4)?))
    }

    /// Set a 64-bit register of the selected vCPU.
    pub fn set_register(
        &mut self,
        number: u32,
        value: u64,
        timeout: Duration,
    ) -> Result<(), GdbError> {
        self.expect_ok(
            &format!("P{number:x}={}", hex_encode(&value.to_le_bytes())),
            timeout,
        )
    }

    /// Read memory at a virtual address of the selected vCPU, any length:
    /// QEMU answers at most 2 KiB per `m` (4 KiB of hex), so longer reads
    /// go in pieces of [`READ_CHUNK`].
    pub fn read(&mut self, addr: u64, len: usize, timeout: Duration) -> Result<Vec<u8>, GdbError> {
        let mut out = Vec::with_capacity(len);
        while out.len() < len {
            let at = addr + out.len() as u64;
            let n = (len - out.len()).min(READ_CHUNK);
            let packet = format!("m{at:x},{n:x}");
            let answer = self.request(&packet, timeout)?;
            if answer.starts_with('E') || answer.len() != 2 * n {
                return Err(GdbError::Refused { packet, answer });
            }
            out.extend(hex_decode(&answer)?);
        }
        Ok(out)
    }

    /// Write memory at a virtual address of the selected vCPU.
    pub fn write(&mut self, addr: u64, bytes: &[u8], timeout: Duration) -> Result<(), GdbError> {
        self.expect_ok(
            &format!("M{addr:x},{:x}:{}", bytes.len(), hex_encode(bytes)),
            timeout,
        )
    }

    /// A 64-bit little-endian value at a virtual address of the selected vCPU.
    pub fn read_u64(&mut self, addr: u64, timeout: Duration) -> Result<u64, GdbError> {
        let bytes = self.read(addr, 8, timeout)?;
        Ok(u64::from_le_bytes(
            bytes.try_into().expect("read checks the length"),
        ))
    }

    /// A QEMU monitor (HMP) command through the stub (`monitor ...` in
    /// gdb): its output, collected from the `O` packets before `OK`.
    pub fn monitor(&mut self, command: &str, timeout: Duration) -> Result<String, GdbError> {
        let packet = format!("qRcmd,{}", hex_encode(command.as_bytes()));
        self.send(&packet)?;
        let mut out = String::new();
        loop {
            let answer = self.read_packet(timeout)?;
            if answer == "OK" {
                return Ok(out);
            }
            if let Some(text) = answer.strip_prefix('O') {
                out.push_str(&String::from_utf8_lossy(&hex_decode(text)?));
                continue;
            }
            if answer.starts_with('E') || answer.is_empty() {
                return Err(GdbError::Refused { packet, answer });
            }
            // Some stubs send the whole output as one hex packet.
            out.push_str(&String::from_utf8_lossy(&hex_decode(&answer)?));
        }
    }

    /// Let every vCPU run (`c`); the stop reply comes later, read it with
    /// [`Gdb::wait_stop`].
    pub fn resume(&mut self) -> Result<(), GdbError> {
        self.send("c")
    }

    /// Detach (`D`): QEMU removes every breakpoint and watch point of the
    /// stub and lets the VM run (gdbstub.c, handle_detach), whatever state
    /// it was in. Stop replies that were already on their way are skipped.
    pub fn detach(&mut self, timeout: Duration) -> Result<(), GdbError> {
        self.send("D")?;
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.read_packet(left)? {
                a if a == "OK" => return Ok(()),
                a if parse_stop(&a).is_some() || a.starts_with('O') => continue,
                answer => {
                    return Err(GdbError::Refused {
                        packet: "D".into(),
                        answer,
                    })
                }
            }
        }
    }

    /// Ask a running target to stop (the protocol's interrupt byte).
    pub fn interrupt(&mut self) -> Result<(), GdbError> {
        self.stream.write_all(&[0x03])?;
        Ok(())
    }

    /// Wait up to `timeout` for a stop reply; `Ok(None)` when none came.
    pub fn wait_stop(&mut self, timeout: Duration) -> Result<Option<Stop>, GdbError> {
        loop {
            match self.read_packet(timeout) {
                Ok(p) => {
                    if let Some(stop) = parse_stop(&p) {
                        return Ok(Some(stop));
                    }
                    if p.starts_with('W') || p.starts_with('X') {
                        return Err(GdbError::Closed);
                    }
                }
                Err(GdbError::Timeout(_)) => return Ok(None),
                Err(e) => return Err(e),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_carry_the_modulo_256_sum() {
        assert_eq!(frame("?"), b"$?#3f");
        assert_eq!(frame("c"), b"$c#63");
        assert_eq!(frame("QStartNoAckMode"), b"$QStartNoAckMode#b0");
    }

    #[test]
    fn escapes_and_run_lengths_are_undone() {
        assert_eq!(unescape(b"a}\x03b").unwrap(), b"a#b");
        // `0* ` = "0" then ' ' (32) - 29 = 3 more.
        assert_eq!(unescape(b"0* ").unwrap(), b"0000");
        assert!(unescape(b"*").is_err());
        assert!(unescape(b"}").is_err());
    }

    #[test]
    fn stop_replies_name_the_cpu_and_the_watch_point() {
        assert_eq!(
            parse_stop("T05thread:02;rwatch:ff11000100201040;"),
            Some(Stop {
                signal: 5,
                cpu: Some(1),
                watch: Some((Watch::Read, 0xff11_0001_0020_1040)),
            })
        );
        assert_eq!(
            parse_stop("T02thread:p1.01;"),
            Some(Stop {
                signal: 2,
                cpu: Some(0),
                watch: None
            })
        );
        assert_eq!(
            parse_stop("S05"),
            Some(Stop {
                signal: 5,
                cpu: None,
                watch: None
            })
        );
        assert_eq!(parse_stop("OK"), None);
        assert_eq!(parse_stop("W00"), None);
        assert_eq!(parse_stop("T05thread:zz;"), None);
    }

    #[test]
    fn register_values_are_little_endian() {
        assert_eq!(le_value("3412000000000000").unwrap(), 0x1234);
        assert_eq!(le_value("33000000").unwrap(), 0x33);
        assert!(le_value("").is_err());
        assert!(le_value("123").is_err());
        assert!(le_value("000000000000000000").is_err());
    }

    #[test]
    fn hex_round_trips() {
        let cmd = "gva2gpa 0x7f0000201040";
        assert_eq!(
            hex_decode(&hex_encode(cmd.as_bytes())).unwrap(),
            cmd.as_bytes()
        );
    }
}
