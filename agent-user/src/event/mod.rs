//! The decoded, enriched event: the stable JSON schema of `corral tail
//! --json` and `GET /v1/events` (documented in the README). Adding fields is
//! allowed; renaming or removing one needs a new `schema` number.

mod decode;
mod display;
mod file;
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
    net::{NetInfo, UnixInfo, net_info, unix_info},
    syscall::{SyscallInfo, syscall_info},
};

pub const SCHEMA: u32 = 1;

/// Every `kind` the stream carries besides `hello` and `lost` (which every
/// subscriber gets): what `GET /v1/events?kind=` and `corral tail --kind`
/// accept, so a misspelt kind is an error, not a silent empty stream.
pub const KINDS: [&str; 10] = [
    "net", "unix", "file", "protect", "syscall", "lease", "anomaly", "policy", "operator", "audit",
];

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Event {
    pub schema: u32,
    /// RFC 3339 wall-clock time of the kernel event.
    pub time: String,
    /// `net`, `unix`, `file`, `protect`, `syscall`, `lost`, `lease`,
    /// `anomaly`, `policy`, `operator`, `audit`.
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity_id: Option<u32>,
    /// `deny` (refused, EPERM) or `audit` (allowed, would have been refused).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verdict: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
    /// `deny-rule`, `no-rule` (default deny) or `unsupported` (socket type no rule covers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
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

pub fn verdict_str(v: u32) -> &'static str {
    match Verdict::try_from(v) {
        Ok(Verdict::Deny) => "deny",
        Ok(Verdict::Audit) => "audit",
        Ok(Verdict::Kill) => "kill",
        Err(_) => "unknown",
    }
}

pub fn mode_str(v: u32) -> &'static str {
    match Mode::try_from(v) {
        Ok(Mode::Enforce) => "enforce",
        Ok(Mode::Audit) => "audit",
        Err(_) => "unknown",
    }
}

pub fn reason_str(v: u32) -> &'static str {
    match Reason::try_from(v) {
        Ok(Reason::DenyRule) => "deny-rule",
        Ok(Reason::NoRule) => "no-rule",
        Ok(Reason::Unsupported) => "unsupported",
        Ok(Reason::Protected) => "self-protection",
        Ok(Reason::FailClosed) => "fail-closed",
        Err(_) => "unknown",
    }
}

impl Event {
    pub fn lost(time: String, count: u64, source: &str) -> Event {
        Event {
            schema: SCHEMA,
            time,
            kind: "lost".into(),
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
            lost: Some(LostInfo {
                count,
                source: source.into(),
            }),
            leases: None,
            lease: None,
            anomaly: None,
            policy: None,
            operator: None,
            audit: None,
        }
    }

    /// An event of the daemon's own (`lease`, `anomaly`), fields to fill.
    pub fn notice(kind: &str, time: String) -> Event {
        let mut e = Event::lost(time, 0, "");
        e.kind = kind.into();
        e.lost = None;
        e
    }
}
