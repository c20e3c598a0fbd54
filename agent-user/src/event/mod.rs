//! The decoded, enriched event: the stable JSON schema of `corral tail
//! --json` and `GET /v1/events` (documented in the README). Adding fields is
//! allowed; renaming or removing one needs a new `schema` number.

mod decode;
mod display;
mod file;
mod kind;
mod net;
mod syscall;

use agent_common::{
    event::{Reason, Verdict},
    identity::Mode,
};
use serde::{Deserialize, Serialize};

pub use self::{
    decode::{Raw, RawBody},
    file::{
        FileInfo, ProtectInfo, access_str, file_info, file_op_info, file_path_str, protect_info,
    },
    kind::{EventKind, EventReason, EventVerdict, UnknownKind},
    net::{NetInfo, UnixInfo, net_info, unix_info},
    syscall::{SyscallInfo, syscall_info},
};

pub const SCHEMA: u32 = 1;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Event {
    pub schema: u32,
    /// RFC 3339 wall-clock time of the kernel event.
    pub time: String,
    pub kind: EventKind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity_id: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verdict: Option<EventVerdict>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
    /// `deny-rule`, `no-rule` (default deny) or `unsupported` (socket type no rule covers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<EventReason>,
    /// The deciding rule as written, with file:line:col; absent for `no-rule`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tgid: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ppid: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comm: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exe: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cgroup: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cgroup_id: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub net: Option<NetInfo>,
    /// For `unix`: the AF_UNIX operation and address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unix: Option<UnixInfo>,
    /// For `file`: the refused open or exec.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<FileInfo>,
    /// For `syscall`: the call, and which layer refused (or saw) it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub syscall: Option<SyscallInfo>,
    /// For `protect`: self-protection refused a tagged process `bpf()`, a
    /// signal or ptrace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protect: Option<ProtectInfo>,
    /// For `lost`: how many events were lost, and where.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lost: Option<LostInfo>,
    /// On judged events: the leases live for the identity at the event's
    /// kernel time (empty when none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leases: Option<Vec<LeaseRef>>,
    /// For `lease`: what happened to a lease (`action`, `lease`, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease: Option<serde_json::Value>,
    /// For `anomaly`: the threshold crossed and the response taken.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub anomaly: Option<serde_json::Value>,
    /// For `policy`: a reload (trigger, generation, result, errors).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<serde_json::Value>,
    /// For `operator`: an action on the control API (route, caller, result).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operator: Option<serde_json::Value>,
    /// For `audit`: the audit log cannot be written (`write-failing`, with
    /// the error) or is written again (`write-recovered`, with how many
    /// records are missing).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audit: Option<serde_json::Value>,
}

/// A lease live when an event happened.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseRef {
    pub id: String,
    pub scopes: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LostInfo {
    pub count: u64,
    /// `kernel` (ring buffer full) or `subscriber` (this reader fell behind).
    pub source: String,
}

pub fn comm_str(c: &[u8]) -> String {
    let end = c.iter().position(|&b| b == 0).unwrap_or(c.len());
    String::from_utf8_lossy(&c[..end]).into_owned()
}

/// The wire verdict as the event's; `None` for a code this build does not
/// know.
pub fn verdict_of(v: u32) -> Option<EventVerdict> {
    match Verdict::try_from(v) {
        Ok(Verdict::Deny) => Some(EventVerdict::Deny),
        Ok(Verdict::Audit) => Some(EventVerdict::Audit),
        Ok(Verdict::Kill) => Some(EventVerdict::Kill),
        Err(_) => None,
    }
}

pub fn mode_str(v: u32) -> &'static str {
    match Mode::try_from(v) {
        Ok(Mode::Enforce) => "enforce",
        Ok(Mode::Audit) => "audit",
        Err(_) => "unknown",
    }
}

/// The wire reason as the event's; `None` for a code this build does not
/// know.
pub fn reason_of(v: u32) -> Option<EventReason> {
    match Reason::try_from(v) {
        Ok(Reason::DenyRule) => Some(EventReason::DenyRule),
        Ok(Reason::NoRule) => Some(EventReason::NoRule),
        Ok(Reason::Unsupported) => Some(EventReason::Unsupported),
        Ok(Reason::Protected) => Some(EventReason::SelfProtection),
        Ok(Reason::FailClosed) => Some(EventReason::FailClosed),
        Err(_) => None,
    }
}

impl Event {
    /// An event of `kind` with only its header's time set.
    fn bare(kind: EventKind, time: String) -> Event {
        Event {
            schema: SCHEMA,
            time,
            kind,
            identity: None,
            identity_id: None,
            verdict: None,
            mode: None,
            reason: None,
            rule: None,
            pid: None,
            tgid: None,
            ppid: None,
            comm: None,
            exe: None,
            cgroup: None,
            cgroup_id: None,
            net: None,
            unix: None,
            file: None,
            syscall: None,
            protect: None,
            lost: None,
            leases: None,
            lease: None,
            anomaly: None,
            policy: None,
            operator: None,
            audit: None,
        }
    }

    pub fn lost(time: String, count: u64, source: &str) -> Event {
        Event {
            lost: Some(LostInfo {
                count,
                source: source.into(),
            }),
            ..Event::bare(EventKind::Lost, time)
        }
    }

    /// An event of the daemon's own (`lease`, `anomaly`, `policy`, ...),
    /// fields to fill.
    pub fn notice(kind: EventKind, time: String) -> Event {
        Event::bare(kind, time)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Schema 1 on the wire, as daemons before the typed kinds and verdicts
    /// wrote it: each line reads into `Event` and writes back byte for byte.
    const GOLDEN: [&str; 4] = [
        r#"{"schema":1,"time":"2026-12-06T01:02:03.000000004Z","kind":"net","identity":"billing-agent","identity_id":3,"verdict":"deny","mode":"enforce","reason":"no-rule","pid":4242,"tgid":4242,"ppid":1,"comm":"curl","exe":"/usr/bin/curl","cgroup":"/corral/billing-agent","cgroup_id":7781,"net":{"op":"connect","family":"inet","protocol":"tcp","addr":"10.1.2.3","port":443,"type":"stream"},"leases":[]}"#,
        r#"{"schema":1,"time":"2026-12-06T01:02:03.000000004Z","kind":"syscall","identity":"ops-agent","identity_id":4,"verdict":"kill","mode":"enforce","reason":"deny-rule","rule":"deny ptrace (ops-agent.toml:12:5)","pid":9,"tgid":9,"comm":"gdb","leases":[{"id":"l-1","scopes":["metrics"]}]}"#,
        r#"{"schema":1,"time":"2026-12-06T01:02:03.000000004Z","kind":"lease","identity":"billing-agent","lease":{"action":"issue","lease":"l-2"}}"#,
        r#"{"schema":1,"time":"2026-12-06T01:02:03.000000004Z","kind":"lost","lost":{"count":12,"source":"kernel"}}"#,
    ];

    #[test]
    fn schema_1_lines_round_trip_byte_for_byte() {
        for line in GOLDEN {
            let ev: Event = serde_json::from_str(line).expect(line);
            assert_eq!(serde_json::to_string(&ev).unwrap(), line);
        }
        let net: Event = serde_json::from_str(GOLDEN[0]).unwrap();
        assert_eq!(
            (net.kind, net.verdict),
            (EventKind::Net, Some(EventVerdict::Deny))
        );
        let lost = Event::lost("2026-12-06T01:02:03.000000004Z".into(), 12, "kernel");
        assert_eq!(serde_json::to_string(&lost).unwrap(), GOLDEN[3]);
    }

    #[test]
    fn an_unknown_kind_or_verdict_is_refused_not_guessed() {
        let bad_kind = GOLDEN[3].replace("\"lost\",\"lost\"", "\"nett\",\"lost\"");
        assert!(serde_json::from_str::<Event>(&bad_kind).is_err());
        let bad_verdict = GOLDEN[0].replace("\"deny\"", "\"maybe\"");
        assert!(serde_json::from_str::<Event>(&bad_verdict).is_err());
    }
}
