//! Device-dax steps on the host side: named mappings in the guest agent,
//! touching, and consuming poison through the lab's poison model.

use crate::address::{Base, Location, Target};
use crate::case::step::{LineSpec, MapSpec, Mapped};
use crate::guest::error::{Absent, GuestError};
use crate::guest::setup::Layout;
use crate::guest::Guest;
use crate::vm::poison::watcher::Watcher;
use pmem_lab_proto::{Op, Reply, SignalInfo};
use std::collections::BTreeMap;
use std::time::Duration;

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
    pub fn get(&self, name: &str) -> Result<&MapState, GuestError> {
        self.0
            .get(name)
            .ok_or_else(|| GuestError::Missing(Absent::Mapping, format!("no mapping `{name}`")))
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
) -> Result<(), GuestError> {
    let (path, namespace) = match &spec.what {
        Mapped::Namespace(ns) => {
            let dev = layout
                .namespaces
                .get(ns)
                .and_then(|n| n.chardev.clone())
                .ok_or_else(|| {
                    GuestError::Missing(
                        Absent::DaxDevice,
                        format!("namespace `{ns}` has no dax device"),
                    )
                })?;
            (format!("/dev/{dev}"), Some(ns.clone()))
        }
        Mapped::File(path) => (path.clone(), None),
    };
    let base = guest.map_dax(&spec.name, &path, spec.offset, spec.length)?;
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

pub fn unmap(guest: &mut Guest, maps: &mut Maps, name: &str) -> Result<(), GuestError> {
    guest.unmap(name)?;
    maps.0.remove(name);
    Ok(())
}

/// What a consume did, for the step log.
#[derive(Debug)]
pub struct Consumed {
    pub signal: Option<SignalInfo>,
    pub note: String,
}

/// Poison the line at `offset` of mapping `name` in the lab's poison model
/// (watched at the agent's own address of it and every other), then have
/// the agent load it once from a child pinned to `cpu`; the model stops
/// that vCPU at the load and raises the data-load machine check there.
/// Returns the signal the child got.
pub fn consume(
    guest: &mut Guest,
    layout: &Layout,
    maps: &Maps,
    line: &LineSpec,
    watcher: &Watcher,
    timeout: Duration,
) -> Result<Consumed, GuestError> {
    let LineSpec {
        map: name,
        offset,
        cpu,
    } = line;
    let (offset, cpu) = (*offset, *cpu);
    let m = maps.get(name)?;
    let namespace = m.namespace.clone().ok_or_else(|| {
        GuestError::Missing(
            Absent::Mapping,
            format!("mapping `{name}` maps a file: consume needs a device-dax mapping"),
        )
    })?;
    let at = Location {
        target: Target::Namespace(namespace),
        offset: m.offset + offset,
        base: Base::Data,
    };
    let resolved = layout.geometry.resolve(&at)?;
    watcher.poison_mapped(resolved.gpa, m.base + offset)?;
    let reply = guest.vm().request(
        Op::Consume {
            name: name.into(),
            offset,
            cpu: Some(cpu),
            timeout_ms: timeout.as_millis() as u64,
        },
        timeout + Duration::from_secs(10),
    )?;
    match reply {
        Reply::Consumed {
            signal,
            duration_ms,
        } => Ok(Consumed {
            note: format!(
                "line at GPA {:#x} (mapping `{name}` + {offset:#x}) poisoned; the reader on CPU {cpu} ran {duration_ms} ms",
                resolved.gpa
            ),
            signal,
        }),
        other => Err(super::unexpected(other).into()),
    }
}
