//! Device-dax steps on the host side: named mappings in the guest agent,
//! touching, and consuming poison while the lab injects the machine check.

use crate::address::{Base, Location, Target};
use crate::case::step::{LineSpec, MapSpec, Mapped};
use crate::guest::Guest;
use crate::inject::MEMORY_FAILURE;
use crate::mce::{Injection, Kind};
use crate::qmp;
use crate::setup::Layout;
use crate::vm::{Event, Vm};
use pmem_lab_proto::{GuestMessage, Op, Reply, SignalInfo};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// A live mapping in the agent.
#[derive(Debug, Clone)]
pub struct MapState {
    /// The devdax namespace mapped; `None` for a file.
    pub namespace: Option<String>,
    /// Offset of the mapping in the dax device (= the namespace's data) or
    /// the file.
    pub offset: u64,
    pub length: u64,
    /// Its address in the agent (and in its forked children).
    pub base: u64,
}

#[derive(Debug, Default)]
pub struct Maps(BTreeMap<String, MapState>);

impl Maps {
    pub fn get(&self, name: &str) -> Result<&MapState, String> {
        self.0
            .get(name)
            .ok_or_else(|| format!("no mapping `{name}`"))
    }

    /// The mapping holding a virtual address (to express si_addr as an offset).
    pub fn containing(&self, addr: u64) -> Option<&MapState> {
        self.0
            .values()
            .find(|m| m.base <= addr && addr < m.base + m.length)
    }
}

pub fn map(
    guest: &mut Guest,
    layout: &Layout,
    maps: &mut Maps,
    spec: &MapSpec,
) -> Result<(), String> {
    let (path, namespace) = match &spec.what {
        Mapped::Namespace(ns) => {
            let dev = layout
                .namespaces
                .get(ns)
                .and_then(|n| n.chardev.clone())
                .ok_or_else(|| format!("namespace `{ns}` has no dax device"))?;
            (format!("/dev/{dev}"), Some(ns.clone()))
        }
        Mapped::File(path) => (path.clone(), None),
    };
    let base = guest
        .map_dax(&spec.name, &path, spec.offset, spec.length)
        .map_err(|e| e.to_string())?;
    maps.0.insert(
        spec.name.clone(),
        MapState {
            namespace,
            offset: spec.offset,
            length: spec.length,
            base,
        },
    );
    Ok(())
}

pub fn unmap(guest: &mut Guest, maps: &mut Maps, name: &str) -> Result<(), String> {
    guest.unmap(name).map_err(|e| e.to_string())?;
    maps.0.remove(name);
    Ok(())
}

/// What a consume did, for the step log.
#[derive(Debug)]
pub struct Consumed {
    pub signal: Option<SignalInfo>,
    pub note: String,
}

/// Have the agent read `offset` of mapping `name` on `cpu`; once it says it
/// is reading, inject a data-load machine check (SRAR) at that line on that
/// CPU; collect the signal the reader got.
pub fn consume(
    guest: &mut Guest,
    layout: &Layout,
    maps: &Maps,
    line: &LineSpec,
    cpus: u32,
    timeout: Duration,
) -> Result<Consumed, String> {
    let LineSpec {
        map: name,
        offset,
        cpu,
    } = line;
    let (offset, cpu) = (*offset, *cpu);
    let m = maps.get(name)?;
    let namespace = m.namespace.clone().ok_or_else(|| {
        format!("mapping `{name}` maps a file: consume needs a device-dax mapping")
    })?;
    let at = Location {
        target: Target::Namespace(namespace),
        offset: m.offset + offset,
        base: Base::Data,
    };
    let resolved = layout.geometry.resolve(&at)?;
    let injection = Injection::new(Kind::Load, resolved.gpa, cpu, cpus);
    let command = injection.hmp_command();
    let vm = guest.machine();
    let id = vm
        .send(Op::Consume {
            name: name.into(),
            offset,
            cpu: Some(cpu),
            timeout_ms: timeout.as_millis() as u64,
        })
        .map_err(|e| e.to_string())?;
    let deadline = Instant::now() + timeout;
    let first = vm
        .wait_for("the reader to start", deadline, |e| match e {
            Event::Agent(GuestMessage::Status { id: i, state, pc })
                if *i == id && *state == pmem_lab_proto::Progress::Reading =>
            {
                Some(Ok(pc.unwrap_or(0)))
            }
            Event::Agent(GuestMessage::Response { id: i, reply }) if *i == id => {
                Some(Err(reply.clone()))
            }
            _ => None,
        })
        .map_err(|e| e.to_string())?;
    let pc = first.map_err(|reply| format!("the reader ended before reading: {reply:?}"))?;
    let seen = vm.qmp_event_count(MEMORY_FAILURE);
    let injected_at = Instant::now();
    let attempts = inject_on_the_loop(vm, cpu, pc, &command, deadline)?;
    let reply = vm
        .wait_reply(id, deadline.saturating_duration_since(Instant::now()))
        .map_err(|e| format!("the reader's report: {e}"))?;
    vm.wait_qmp_event(MEMORY_FAILURE, seen, Duration::from_secs(10))
        .map_err(|e| e.to_string())?;
    match reply {
        Reply::Consumed { signal, .. } => Ok(Consumed {
            note: format!(
                "`{command}` at GPA {:#x} (mapping `{name}` + {offset:#x}), reader caught on its loop \
                 at attempt {attempts}, signal after {} ms",
                resolved.gpa,
                injected_at.elapsed().as_millis()
            ),
            signal,
        }),
        Reply::Error { message } => Err(message),
        other => Err(format!("unexpected reply {other:?}")),
    }
}

/// The reader's loop is this many bytes from its start at most.
const LOOP_SPAN: u64 = 128;

/// Inject a data-load machine check only while `cpu` executes the reader's
/// loop in user mode. A #MC that finds the CPU in the kernel (a timer tick,
/// the agent's own virtio write that announced "reading") is "In kernel and
/// no restart IP": a guest panic. So: stop the VM, look at the CPU's RIP and
/// CPL, inject while stopped if it is on the loop (the #MC is taken on that
/// instruction when the VM resumes), else resume and look again a few
/// milliseconds later. Returns the number of attempts.
fn inject_on_the_loop(
    vm: &mut Vm,
    cpu: u32,
    pc: u64,
    command: &str,
    deadline: Instant,
) -> Result<u32, String> {
    let t = Duration::from_secs(10);
    let mut attempts = 0;
    loop {
        attempts += 1;
        vm.qmp("stop", None, t).map_err(|e| e.to_string())?;
        let regs = vm
            .hmp_on("info registers", Some(cpu), t)
            .map_err(|e| e.to_string())?;
        let at = qmp::rip_and_cpl(&regs);
        let on_loop = at.is_some_and(|(rip, cpl)| cpl == 3 && (pc..pc + LOOP_SPAN).contains(&rip));
        if on_loop {
            let answer = vm.hmp(command, t).map_err(|e| e.to_string())?;
            vm.qmp("cont", None, t).map_err(|e| e.to_string())?;
            if !answer.trim().is_empty() {
                return Err(format!("QEMU did not take `{command}`: {}", answer.trim()));
            }
            return Ok(attempts);
        }
        vm.qmp("cont", None, t).map_err(|e| e.to_string())?;
        if Instant::now() > deadline {
            return Err(format!(
                "CPU {cpu} was never seen on the reader's loop ({pc:#x}) in {attempts} looks; last RIP/CPL {at:x?}"
            ));
        }
        std::thread::sleep(Duration::from_millis(3 + u64::from(attempts % 7)));
    }
}
