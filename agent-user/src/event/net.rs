//! `net` and `unix` events in their JSON form.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use agent_common::{
    event::{NetEvent, UnixEvent},
    net::{AF_INET, AF_INET6, NetOp},
};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NetInfo {
    /// `connect`, `sendmsg`, `bind` or `create` (`socket()` itself).
    pub op: String,
    /// `inet` or `inet6`.
    pub family: String,
    /// `tcp`, `udp`, `mptcp`, `icmp`, ... or the IP protocol number.
    pub protocol: String,
    pub addr: String,
    pub port: u16,
    /// The socket's type: `stream`, `dgram`, `raw`, `seqpacket`, ... (absent
    /// in events of older daemons).
    #[serde(default, rename = "type", skip_serializing_if = "String::is_empty")]
    pub sock_type: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UnixInfo {
    /// `connect` or `sendmsg`.
    pub op: String,
    /// The socket path, or `@name` for an abstract address (bytes that are
    /// not printable ASCII, NULs included, as `\xNN`).
    pub path: String,
}

pub fn net_info(n: &NetEvent) -> NetInfo {
    let op = op_str(n.op);
    let (family, addr) = match n.family {
        AF_INET => {
            let a = [n.addr[0], n.addr[1], n.addr[2], n.addr[3]];
            ("inet".to_string(), IpAddr::V4(Ipv4Addr::from(a)))
        }
        AF_INET6 => ("inet6".to_string(), IpAddr::V6(Ipv6Addr::from(n.addr))),
        // `socket()` of another family, refused by BPF LSM (no address).
        f => (family_name(f), IpAddr::V4(Ipv4Addr::UNSPECIFIED)),
    };
    let protocol = match n.protocol {
        1 => "icmp".to_string(),
        6 => "tcp".to_string(),
        17 => "udp".to_string(),
        58 => "icmpv6".to_string(),
        115 => "l2tp".to_string(),
        132 => "sctp".to_string(),
        136 => "udplite".to_string(),
        255 => "raw".to_string(),
        256 => "smc".to_string(),
        262 => "mptcp".to_string(),
        p => p.to_string(),
    };
    let sock_type = match n.sock_type {
        0 => String::new(),
        1 => "stream".to_string(),
        2 => "dgram".to_string(),
        3 => "raw".to_string(),
        4 => "rdm".to_string(),
        5 => "seqpacket".to_string(),
        6 => "dccp".to_string(),
        t => t.to_string(),
    };
    NetInfo {
        op: op.to_string(),
        family,
        protocol,
        addr: addr.to_string(),
        port: n.port as u16,
        sock_type,
    }
}

fn family_name(f: u32) -> String {
    match f {
        1 => "unix".into(),
        16 => "netlink".into(),
        17 => "packet".into(),
        21 => "rds".into(),
        30 => "tipc".into(),
        33 => "rxrpc".into(),
        38 => "alg".into(),
        40 => "vsock".into(),
        44 => "xdp".into(),
        f => format!("family {f}"),
    }
}

fn op_str(op: u32) -> &'static str {
    match NetOp::try_from(op) {
        Ok(NetOp::Connect) => "connect",
        Ok(NetOp::Sendmsg) => "sendmsg",
        Ok(NetOp::Bind) => "bind",
        Ok(NetOp::Create) => "create",
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
