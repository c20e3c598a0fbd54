//! The decoded, enriched event: the stable JSON schema of `corral tail
//! --json` and `GET /v1/events` (documented in the README). Adding fields is
//! allowed; renaming or removing one needs a new `schema` number.

use std::{
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use agent_common::{
    event::{EventHeader, Kind, NetEvent, Reason, UnixEvent, Verdict},
    file::{
        ACCESS_EXEC, ACCESS_READ, ACCESS_WRITE, FileEvent, FileOpEvent, LAYER_LANDLOCK, LAYER_LSM,
        ProtectEvent,
    },
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
    /// `net`, `unix`, `file`, `protect`, `syscall`, `lost`, `lease`, `anomaly`.
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
}

/// A lease live when an event happened.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseRef {
    pub id: String,
    pub scopes: Vec<String>,
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
pub struct UnixInfo {
    /// `connect` or `sendmsg`.
    pub op: String,
    /// The socket path, or `@name` for an abstract address (bytes that are
    /// not printable ASCII, NULs included, as `\xNN`).
    pub path: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FileInfo {
    /// The path: absolute as the kernel resolved it (`lsm`), or as the
    /// process passed it, made absolute from its working directory when
    /// possible (`landlock`).
    pub path: String,
    /// What was asked: `read`, `write`, `read,write`, `exec`.
    pub access: String,
    /// Who refused: `lsm` (Corral's BPF LSM program) or `landlock`
    /// (`corral run` applied the rules with Landlock; seen by the observer).
    pub layer: String,
    /// The errno the process got: `EACCES` or `EPERM`.
    pub errno: String,
    /// Set when the path did not fit the event (`path` is its start), or
    /// the kernel could not resolve it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    /// For a refused change to a directory entry or a mount (BPF LSM):
    /// `create`, `mkdir`, `symlink`, `unlink`, `rmdir`, `truncate`,
    /// `link-source`, `link-target`, `rename-source`, `rename-target`,
    /// `mount`, `move-mount`, `umount`. Absent for opens and execs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub op: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProtectInfo {
    /// `bpf`, `signal`, `ptrace` or `clone-into-cgroup`.
    pub op: String,
    /// The target process (signal, ptrace).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_pid: Option<u32>,
    /// The target's identity id; 0 for an untagged process.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_identity_id: Option<u32>,
    /// The target is the Corral daemon.
    pub target_is_daemon: bool,
    /// The signal number (signal), the bpf command (bpf), or the ptrace
    /// access mode bits (ptrace).
    pub arg: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SyscallInfo {
    /// x86_64 syscall number.
    pub nr: u32,
    /// Its name (`#N` for a number not in Corral's table).
    pub name: String,
    /// `kernel` (the seccomp filter itself), `notify` (the launcher answered
    /// the notification, or nobody did: closed), `kill` (`assigned =
    /// "kill"`) or `observed` (a process without the filter; audit).
    pub layer: String,
    /// The errno the caller got (`EPERM`, `ENOSYS`); absent when the call ran.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub errno: Option<String>,
    /// What the arguments say, when they are values worth showing
    /// (`socket`: `AF_PACKET SOCK_RAW`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
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
    Unix(UnixEvent),
    File(Box<FileEvent>),
    Syscall(agent_common::syscall::SyscallEvent),
    FileOp(Box<FileOpEvent>),
    Protect(ProtectEvent),
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
            Kind::Unix => {
                let want = size_of::<UnixEvent>();
                if b.len() < want {
                    return Err(DecodeError::Size {
                        kind,
                        len: b.len(),
                        want,
                    });
                }
                RawBody::Unix(read(b))
            }
            Kind::File => {
                let want = size_of::<FileEvent>();
                if b.len() < want {
                    return Err(DecodeError::Size {
                        kind,
                        len: b.len(),
                        want,
                    });
                }
                RawBody::File(Box::new(read(b)))
            }
            Kind::Syscall => {
                let want = size_of::<agent_common::syscall::SyscallEvent>();
                if b.len() < want {
                    return Err(DecodeError::Size {
                        kind,
                        len: b.len(),
                        want,
                    });
                }
                RawBody::Syscall(read(b))
            }
            Kind::FileOp => {
                let want = size_of::<FileOpEvent>();
                if b.len() < want {
                    return Err(DecodeError::Size {
                        kind,
                        len: b.len(),
                        want,
                    });
                }
                RawBody::FileOp(Box::new(read(b)))
            }
            Kind::Protect => {
                let want = size_of::<ProtectEvent>();
                if b.len() < want {
                    return Err(DecodeError::Size {
                        kind,
                        len: b.len(),
                        want,
                    });
                }
                RawBody::Protect(read(b))
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

fn op_str(op: u32) -> &'static str {
    match NetOp::try_from(op) {
        Ok(NetOp::Connect) => "connect",
        Ok(NetOp::Sendmsg) => "sendmsg",
        Ok(NetOp::Bind) => "bind",
        Err(_) => "unknown",
    }
}

/// The policy spelling of a kernel unix address: `/path` or `@name`.
pub fn unix_path_str(path: &[u8], len: u32) -> String {
    let b = &path[..(len as usize).min(path.len())];
    let (prefix, b) = match b.split_first() {
        Some((0, rest)) => ("@", rest),
        _ => ("", b),
    };
    let mut s = String::from(prefix);
    for &c in b {
        if c.is_ascii_graphic() || c == b' ' {
            s.push(c as char);
        } else {
            s.push_str(&format!("\\x{c:02x}"));
        }
    }
    s
}

pub fn unix_info(u: &UnixEvent) -> UnixInfo {
    UnixInfo {
        op: op_str(u.op).to_string(),
        path: unix_path_str(&u.path, u.path_len),
    }
}

/// `ACCESS_*` bits as `read,write,exec`.
pub fn access_str(access: u32) -> String {
    let names = [
        (ACCESS_READ, "read"),
        (ACCESS_WRITE, "write"),
        (ACCESS_EXEC, "exec"),
    ];
    let v: Vec<&str> = names
        .iter()
        .filter(|(b, _)| access & b != 0)
        .map(|(_, n)| *n)
        .collect();
    if v.is_empty() {
        "none".into()
    } else {
        v.join(",")
    }
}

/// The kernel's path bytes (not NUL-terminated; `len` meaningful bytes),
/// with bytes that are not printable ASCII as `\xNN`.
pub fn file_path_str(path: &[u8], len: u32) -> String {
    let b = &path[..(len as usize).min(path.len())];
    let b = b.split(|&c| c == 0).next().unwrap_or(b);
    let mut s = String::new();
    for &c in b {
        if c.is_ascii_graphic() || c == b' ' {
            s.push(c as char);
        } else {
            s.push_str(&format!("\\x{c:02x}"));
        }
    }
    s
}

/// `FileEvent` to its JSON form; `path` is the path as decided by the
/// caller (the daemon makes relative Landlock paths absolute).
pub fn file_info(e: &FileEvent, path: String) -> FileInfo {
    let note = file_note(e.reason, e.path_len);
    FileInfo {
        path,
        access: access_str(e.access),
        layer: match e.layer {
            LAYER_LSM => "lsm".into(),
            LAYER_LANDLOCK => "landlock".into(),
            l => format!("unknown-{l}"),
        },
        errno: match e.errno {
            1 => "EPERM".into(),
            13 => "EACCES".into(),
            n => format!("errno {n}"),
        },
        note,
        op: None,
    }
}

/// Why a file event's path is what it is (`FILE_REASON_*` beyond the rule).
fn file_note(reason: u32, path_len: u32) -> Option<String> {
    use agent_common::file::{
        FILE_PATH_LEN, FILE_REASON_PATH_TOO_LONG, FILE_REASON_PROTECTED, FILE_REASON_RULES_BELOW,
        FILE_REASON_UNRESOLVED,
    };
    match reason {
        FILE_REASON_PATH_TOO_LONG => Some("path longer than the kernel buffer (denied)".into()),
        FILE_REASON_UNRESOLVED => Some("the kernel could not resolve the path (denied)".into()),
        FILE_REASON_PROTECTED => Some(
            "Corral self-protection: no writes in cgroupfs, no access to bpffs, no mounts".into(),
        ),
        FILE_REASON_RULES_BELOW => {
            Some("a directory with file rules beneath it cannot be moved".into())
        }
        _ if path_len as usize >= FILE_PATH_LEN => {
            Some(format!("path cut at {FILE_PATH_LEN} bytes"))
        }
        _ => None,
    }
}

/// A refused link, rename or mount (BPF LSM) in its JSON form.
pub fn file_op_info(e: &FileOpEvent) -> FileInfo {
    use agent_common::file::{
        FILE_OP_CREATE, FILE_OP_LINK_SOURCE, FILE_OP_LINK_TARGET, FILE_OP_MKDIR, FILE_OP_MOUNT,
        FILE_OP_MOVE_MOUNT, FILE_OP_RENAME_SOURCE, FILE_OP_RENAME_TARGET, FILE_OP_RMDIR,
        FILE_OP_SYMLINK, FILE_OP_TRUNCATE, FILE_OP_UMOUNT, FILE_OP_UNLINK,
    };
    let op = match e.op {
        FILE_OP_LINK_SOURCE => "link-source",
        FILE_OP_LINK_TARGET => "link-target",
        FILE_OP_RENAME_SOURCE => "rename-source",
        FILE_OP_RENAME_TARGET => "rename-target",
        FILE_OP_MOUNT => "mount",
        FILE_OP_MOVE_MOUNT => "move-mount",
        FILE_OP_CREATE => "create",
        FILE_OP_MKDIR => "mkdir",
        FILE_OP_SYMLINK => "symlink",
        FILE_OP_UNLINK => "unlink",
        FILE_OP_RMDIR => "rmdir",
        FILE_OP_TRUNCATE => "truncate",
        FILE_OP_UMOUNT => "umount",
        _ => "unknown",
    };
    FileInfo {
        path: file_path_str(&e.path, e.path_len),
        access: access_str(e.access),
        layer: "lsm".into(),
        errno: if e.hdr.verdict == agent_common::event::VERDICT_DENY {
            "EPERM".into()
        } else {
            "none".into()
        },
        note: file_note(e.reason, e.path_len),
        op: Some(op.into()),
    }
}

pub fn protect_info(e: &ProtectEvent) -> ProtectInfo {
    use agent_common::file::{
        PROTECT_BPF, PROTECT_CLONE_INTO_CGROUP, PROTECT_PTRACE, PROTECT_SIGNAL,
    };
    let op = match e.op {
        PROTECT_BPF => "bpf",
        PROTECT_SIGNAL => "signal",
        PROTECT_PTRACE => "ptrace",
        PROTECT_CLONE_INTO_CGROUP => "clone-into-cgroup",
        _ => "unknown",
    };
    let targeted = e.op == PROTECT_SIGNAL || e.op == PROTECT_PTRACE;
    ProtectInfo {
        op: op.into(),
        target_pid: targeted.then_some(e.target_tgid),
        target_identity_id: targeted.then_some(e.target_identity),
        target_is_daemon: e.target_is_daemon != 0,
        arg: e.arg,
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

/// The human one-line form of `corral tail`.
impl fmt::Display for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(l) = &self.lost {
            return write!(f, "{} LOST {} events ({})", self.time, l.count, l.source);
        }
        let o = |s: &Option<String>| s.clone().unwrap_or_else(|| "-".into());
        if let Some(d) = self.lease.as_ref().or(self.anomaly.as_ref()) {
            write!(
                f,
                "{} {} {} {}",
                self.time,
                self.kind.to_uppercase(),
                o(&self.identity),
                d["action"].as_str().unwrap_or("?")
            )?;
            if let Some(id) = d["lease"].as_str() {
                write!(f, " lease={id}")?;
            }
            for k in [
                "reason",
                "path",
                "denials",
                "threshold_to_frozen_us",
                "leases",
            ] {
                if !d[k].is_null() {
                    write!(f, " {k}={}", d[k])?;
                }
            }
            return Ok(());
        }
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
        if let Some(u) = &self.unix {
            write!(f, "{} unix:{}", u.op, u.path)?;
        }
        if let Some(x) = &self.syscall {
            write!(f, "{} (#{}) {}", x.name, x.nr, x.layer)?;
            if let Some(e) = &x.errno {
                write!(f, " {e}")?;
            }
            if let Some(d) = &x.detail {
                write!(f, " [{d}]")?;
            }
        }
        if let Some(x) = &self.file {
            if let Some(op) = &x.op {
                write!(f, "{op} ")?;
            }
            write!(f, "{} {} ({} {})", x.access, x.path, x.layer, x.errno)?;
        }
        if let Some(x) = &self.protect {
            write!(f, "{}", x.op)?;
            if x.target_is_daemon {
                write!(f, " of the corral daemon")?;
            }
            if let Some(t) = x.target_pid {
                write!(f, " pid={t}")?;
            }
            write!(f, " arg={}", x.arg)?;
        }
        match (&self.rule, &self.reason) {
            (Some(r), _) => write!(f, " by {r}")?,
            (None, Some(r)) => write!(f, " ({r})")?,
            _ => {}
        }
        if let Some(ls) = self.leases.as_ref().filter(|l| !l.is_empty()) {
            let shown: Vec<String> = ls
                .iter()
                .map(|l| format!("{}({})", l.id, l.scopes.join(",")))
                .collect();
            write!(f, " leases={}", shown.join(","))?;
        }
        Ok(())
    }
}

/// `SyscallEvent` to its JSON form.
pub fn syscall_info(e: &agent_common::syscall::SyscallEvent) -> SyscallInfo {
    use agent_common::syscall::{self as sc, Layer};
    let name =
        crate::policy::syscalls::name_of(e.nr).map_or_else(|| format!("#{}", e.nr), str::to_string);
    let layer = match Layer::try_from(e.layer) {
        Ok(Layer::Kernel) => "kernel",
        Ok(Layer::Notify) => "notify",
        Ok(Layer::Kill) => "kill",
        Ok(Layer::Observed) => "observed",
        Err(_) => "unknown",
    };
    let errno = match e.errno {
        0 => None,
        1 => Some("EPERM".to_string()),
        38 => Some("ENOSYS".to_string()),
        n => Some(format!("errno {n}")),
    };
    let detail = (e.nr == sc::NR_SOCKET).then(|| {
        let family = match e.args[0] as u32 {
            sc::AF_UNIX => "AF_UNIX".to_string(),
            sc::AF_INET => "AF_INET".to_string(),
            sc::AF_INET6 => "AF_INET6".to_string(),
            sc::AF_NETLINK => format!("AF_NETLINK protocol {}", e.args[2] as u32),
            sc::AF_PACKET => "AF_PACKET".to_string(),
            sc::AF_VSOCK => "AF_VSOCK".to_string(),
            f => format!("family {f}"),
        };
        let ty = match e.args[1] as u32 & sc::SOCK_TYPE_MASK {
            1 => "SOCK_STREAM".to_string(),
            2 => "SOCK_DGRAM".to_string(),
            3 => "SOCK_RAW".to_string(),
            5 => "SOCK_SEQPACKET".to_string(),
            t => format!("type {t}"),
        };
        let needs = match sc::socket_pseudo(e.args[0] as u32, e.args[1] as u32, e.args[2] as u32) {
            0 => String::new(),
            p => format!(
                " (needs `{}`)",
                crate::policy::syscalls::name_of(p).unwrap_or("?")
            ),
        };
        format!("{family} {ty}{needs}")
    });
    SyscallInfo {
        nr: e.nr,
        name,
        layer: layer.to_string(),
        errno,
        detail,
    }
}
