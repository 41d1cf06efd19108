//! QMP, QEMU's JSON monitor protocol: the framing and message types.
//!
//! A small typed layer over serde_json rather than a crate: the lab needs
//! three things (commands with replies matched by id, asynchronous events
//! such as MEMORY_FAILURE kept in order, and HMP commands through
//! `human-monitor-command`), while the QAPI crates generate bindings for the
//! whole schema and bring an async runtime. The socket itself is driven by
//! [`crate::vm::Vm`], whose event loop also watches the console and the agent.

use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::time::Duration;

/// One message from QEMU.
#[derive(Debug, Clone, PartialEq)]
pub enum Message {
    Return {
        id: Option<u64>,
        value: Value,
    },
    Error {
        id: Option<u64>,
        class: String,
        desc: String,
    },
    Event {
        name: String,
        data: Value,
        raw: Value,
    },
    Greeting,
}

/// Why QMP's handshake (or a message) is not what QEMU speaks.
#[derive(Debug, thiserror::Error)]
pub enum QmpError {
    #[error("QMP {what}: {source}")]
    Io {
        what: &'static str,
        source: std::io::Error,
    },
    /// A line that is not JSON, or JSON that is no QMP message.
    #[error("QMP {what}: not a QMP message: {line}")]
    Malformed { what: &'static str, line: String },
    #[error("QMP: expected {what}, got {got}")]
    Unexpected { what: &'static str, got: String },
}

impl Message {
    pub fn parse(v: Value) -> Result<Message, QmpError> {
        let id = v.get("id").and_then(Value::as_u64);
        if let Some(ret) = v.get("return") {
            return Ok(Message::Return {
                id,
                value: ret.clone(),
            });
        }
        if let Some(err) = v.get("error") {
            let field = |k: &str| err.get(k).and_then(Value::as_str).unwrap_or("").to_string();
            return Ok(Message::Error {
                id,
                class: field("class"),
                desc: field("desc"),
            });
        }
        if let Some(name) = v.get("event").and_then(Value::as_str) {
            let data = v.get("data").cloned().unwrap_or(Value::Null);
            return Ok(Message::Event {
                name: name.to_string(),
                data,
                raw: v.clone(),
            });
        }
        if v.get("QMP").is_some() {
            return Ok(Message::Greeting);
        }
        Err(QmpError::Malformed {
            what: "message",
            line: v.to_string(),
        })
    }
}

/// A command line, newline-terminated.
pub fn command(execute: &str, arguments: Option<Value>, id: u64) -> String {
    let mut cmd = json!({ "execute": execute, "id": id });
    if let Some(args) = arguments {
        cmd["arguments"] = args;
    }
    let mut line = cmd.to_string();
    line.push('\n');
    line
}

/// An HMP command through QMP, optionally as seen from one vCPU (HMP
/// commands such as `info registers` act on the monitor's current CPU).
pub fn hmp(command_line: &str, cpu: Option<u32>, id: u64) -> String {
    let mut args = json!({ "command-line": command_line });
    if let Some(cpu) = cpu {
        args["cpu-index"] = json!(cpu);
    }
    command("human-monitor-command", Some(args), id)
}

/// The instruction pointer and privilege level in `info registers` output
/// (`RIP=... RFL=... [...] CPL=3 ...`).
pub fn rip_and_cpl(info_registers: &str) -> Option<(u64, u8)> {
    let rip = register_field(info_registers, "RIP")?;
    let cpl = register_field(info_registers, "CPL")?;
    Some((rip, u8::try_from(cpl).ok()?))
}

/// One `NAME=hex` field of `info registers` output (`CR3=0000000004253000`).
/// The HMP text, not gdb's register numbers: QEMU 7.2's target description
/// lists segment bases its gdbstub does not number, so control registers
/// cannot be found there by name.
pub fn register_field(info_registers: &str, name: &str) -> Option<u64> {
    let key = format!("{name}=");
    let at = info_registers
        .match_indices(&key)
        .find(|(i, _)| *i == 0 || !info_registers.as_bytes()[i - 1].is_ascii_alphanumeric())?
        .0
        + key.len();
    let rest = &info_registers[at..];
    let end = rest
        .find(|c: char| !c.is_ascii_hexdigit())
        .unwrap_or(rest.len());
    u64::from_str_radix(&rest[..end], 16).ok()
}

/// Read the greeting and leave capabilities negotiation mode. Returns the
/// reader positioned after the handshake, for the event thread.
pub fn handshake(
    stream: &mut UnixStream,
    timeout: Duration,
) -> Result<BufReader<UnixStream>, QmpError> {
    let io = |what| move |source| QmpError::Io { what, source };
    stream
        .set_read_timeout(Some(timeout))
        .map_err(io("socket"))?;
    let mut reader = BufReader::new(stream.try_clone().map_err(io("socket"))?);
    let mut read = |what: &'static str| -> Result<Message, QmpError> {
        let mut line = String::new();
        reader.read_line(&mut line).map_err(io(what))?;
        let v: Value = serde_json::from_str(&line).map_err(|_| QmpError::Malformed {
            what,
            line: line.clone(),
        })?;
        Message::parse(v)
    };
    match read("greeting")? {
        Message::Greeting => {}
        other => {
            return Err(QmpError::Unexpected {
                what: "the greeting",
                got: format!("{other:?}"),
            })
        }
    }
    stream
        .write_all(command("qmp_capabilities", None, 0).as_bytes())
        .map_err(io("qmp_capabilities"))?;
    match read("capabilities")? {
        Message::Return { .. } => {}
        other => {
            return Err(QmpError::Unexpected {
                what: "qmp_capabilities' return",
                got: format!("{other:?}"),
            })
        }
    }
    stream.set_read_timeout(None).map_err(io("socket"))?;
    reader
        .get_ref()
        .set_read_timeout(None)
        .map_err(io("socket"))?;
    Ok(reader)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_replies_errors_and_events() {
        let r = Message::parse(json!({"return": {}, "id": 3})).unwrap();
        assert_eq!(
            r,
            Message::Return {
                id: Some(3),
                value: json!({})
            }
        );
        let e =
            Message::parse(json!({"error": {"class": "GenericError", "desc": "nope"}, "id": 4}))
                .unwrap();
        assert_eq!(
            e,
            Message::Error {
                id: Some(4),
                class: "GenericError".into(),
                desc: "nope".into()
            }
        );
        let ev = json!({"event": "MEMORY_FAILURE", "data": {"recipient": "guest", "action": "inject",
            "flags": {"action-required": false, "recursive": false}}, "timestamp": {"seconds": 1, "microseconds": 2}});
        match Message::parse(ev).unwrap() {
            Message::Event { name, data, .. } => {
                assert_eq!(name, "MEMORY_FAILURE");
                assert_eq!(data["action"], "inject");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            Message::parse(json!({"QMP": {"version": {}}})).unwrap(),
            Message::Greeting
        );
        assert!(Message::parse(json!({"what": 1})).is_err());
    }

    #[test]
    fn commands_carry_ids_and_hmp_goes_through_qmp() {
        assert_eq!(
            command("query-status", None, 7),
            "{\"execute\":\"query-status\",\"id\":7}\n"
        );
        let line = hmp("mce -b 0 9 0x1 0x5 0x100000000 0x86", None, 8);
        let v: Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["execute"], "human-monitor-command");
        assert_eq!(
            v["arguments"]["command-line"],
            "mce -b 0 9 0x1 0x5 0x100000000 0x86"
        );
        assert_eq!(v["id"], 8);
        let v: Value = serde_json::from_str(&hmp("info registers", Some(1), 9)).unwrap();
        assert_eq!(v["arguments"]["cpu-index"], 1);
    }

    #[test]
    fn reads_rip_and_cpl_from_info_registers() {
        let text = "RAX=0000000000000000 RBX=0000000000000001\n\
                    RIP=000055e3a1c0b2f0 RFL=00000246 [---Z-P-] CPL=3 II=0 A20=1 SMM=0 HLT=0\n\
                    ES =0000 0000000000000000 00000000 00000000\n";
        assert_eq!(rip_and_cpl(text), Some((0x55e3_a1c0_b2f0, 3)));
        assert_eq!(
            rip_and_cpl("RIP=ffffffff8140d0c5 RFL=00000002 [-------] CPL=0 II=0"),
            Some((0xffff_ffff_8140_d0c5, 0))
        );
        assert_eq!(rip_and_cpl("nothing"), None);
    }

    #[test]
    fn control_registers_by_name_not_by_suffix() {
        let text = "CR0=80050033 CR2=00007f9c1e2e6000 CR3=000000000423f000 CR4=00751ef0
                    DR0=0000000000000000 EFER=0000000000000d01
";
        assert_eq!(register_field(text, "CR3"), Some(0x423_f000));
        assert_eq!(register_field(text, "CR4"), Some(0x75_1ef0));
        assert_eq!(register_field(text, "ER"), None);
        assert_eq!(register_field(text, "EFER"), Some(0xd01));
    }
}
