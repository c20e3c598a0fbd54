//! The decoded, enriched event: the stable JSON schema of `corral tail
//! --json` and `GET /v1/events` (documented in the README). Adding fields is
//! allowed; renaming or removing one needs a new `schema` number.

use std::{
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use agent_common::{
    event::{EventHeader, Kind, NetEvent, Reason, Verdict},
    identity::Mode,
    net::{AF_INET, NetOp},
};
use serde::{Deserialize, Serialize};

pub const SCHEMA: u32 = 1;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Event {
    pub schema: u32,
    /// RFC 3339 wall-clock time of the kernel event.
    pub time: String,
    /// `net`, `lost`, later `file`, `syscall`, `lease`, `anomaly`.
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
    /// For `lost`: how many events were lost, and where.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lost: Option<LostInfo>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NetInfo {
    /// `connect`, `sendmsg` or `bind`.
    pub op: String,
    /// `inet` or `inet6`.
    pub family: String,
    /// `tcp`, `udp` or the IP protocol number.
    pub protocol: String,
    pub addr: String,
    pub port: u16,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LostInfo {
    pub count: u64,
    /// `kernel` (ring buffer full) or `subscriber` (this reader fell behind).
    pub source: String,
}

/// Facts from the kernel record, before the daemon enriches it.
#[derive(Debug, Clone)]
pub struct Raw {
    pub hdr: EventHeader,
    pub body: RawBody,
}

#[derive(Debug, Clone)]
pub enum RawBody {
    Net(NetEvent),
}

#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("event of {0} bytes is shorter than its header")]
    Short(usize),
    #[error("unknown event kind {0}")]
    Kind(u32),
    #[error("event kind {kind:?} with {len} bytes, expected {want}")]
    Size { kind: Kind, len: usize, want: usize },
}

fn read<T: Copy>(b: &[u8]) -> T {
    debug_assert!(b.len() >= size_of::<T>());
    // SAFETY: length checked by callers; T is a repr(C) integer-only wire
    // type, valid for any bit pattern; read_unaligned handles alignment.
    unsafe { std::ptr::read_unaligned(b.as_ptr().cast::<T>()) }
}

impl Raw {
    pub fn decode(b: &[u8]) -> Result<Raw, DecodeError> {
        if b.len() < size_of::<EventHeader>() {
            return Err(DecodeError::Short(b.len()));
        }
        let hdr: EventHeader = read(b);
        let kind = Kind::try_from(hdr.kind).map_err(|e| DecodeError::Kind(e.0))?;
        let body = match kind {
            Kind::Net => {
                let want = size_of::<NetEvent>();
                if b.len() < want {
                    return Err(DecodeError::Size {
                        kind,
                        len: b.len(),
                        want,
                    });
                }
                RawBody::Net(read(b))
            }
        };
        Ok(Raw { hdr, body })
    }
}

pub fn comm_str(c: &[u8]) -> String {
    let end = c.iter().position(|&b| b == 0).unwrap_or(c.len());
    String::from_utf8_lossy(&c[..end]).into_owned()
}

pub fn verdict_str(v: u32) -> &'static str {
    match Verdict::try_from(v) {
        Ok(Verdict::Deny) => "deny",
        Ok(Verdict::Audit) => "audit",
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
        Err(_) => "unknown",
    }
}

pub fn net_info(n: &NetEvent) -> NetInfo {
    let op = match NetOp::try_from(n.op) {
        Ok(NetOp::Connect) => "connect",
        Ok(NetOp::Sendmsg) => "sendmsg",
        Ok(NetOp::Bind) => "bind",
        Err(_) => "unknown",
    };
    let (family, addr) = if n.family == AF_INET {
        let a = [n.addr[0], n.addr[1], n.addr[2], n.addr[3]];
        ("inet", IpAddr::V4(Ipv4Addr::from(a)))
    } else {
        ("inet6", IpAddr::V6(Ipv6Addr::from(n.addr)))
    };
    let protocol = match n.protocol {
        6 => "tcp".to_string(),
        17 => "udp".to_string(),
        262 => "mptcp".to_string(),
        p => p.to_string(),
    };
    NetInfo {
        op: op.to_string(),
        family: family.to_string(),
        protocol,
        addr: addr.to_string(),
        port: n.port as u16,
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
            lost: Some(LostInfo {
                count,
                source: source.into(),
            }),
        }
    }
}

/// The human one-line form of `corral tail`.
impl fmt::Display for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(l) = &self.lost {
            return write!(f, "{} LOST {} events ({})", self.time, l.count, l.source);
        }
        let o = |s: &Option<String>| s.clone().unwrap_or_else(|| "-".into());
        write!(
            f,
            "{} {} {} {} pid={} comm={} ",
            self.time,
            o(&self.verdict).to_uppercase(),
            self.kind,
            o(&self.identity),
            self.tgid.map_or("-".into(), |p| p.to_string()),
            o(&self.comm),
        )?;
        if let Some(n) = &self.net {
            let addr = if n.family == "inet6" {
                format!("[{}]", n.addr)
            } else {
                n.addr.clone()
            };
            write!(f, "{} {}://{}:{}", n.op, n.protocol, addr, n.port)?;
        }
        match (&self.rule, &self.reason) {
            (Some(r), _) => write!(f, " by {r}"),
            (None, Some(r)) => write!(f, " ({r})"),
            _ => Ok(()),
        }
    }
}
