//! Probe steps for the network bypass review (`tests/tests/bypass_net_*.rs`).
//! Every step name starts with `bp-`; each prints one JSON line.
//!
//! Namespaces and plumbing:
//!   bp-netns   (unshare(CLONE_NEWNET), lo up: the rest runs in a fresh netns) |
//!   bp-cgroupns   (unshare(CLONE_NEWCGROUP)) | bp-ip ARGS... --   (run `ip ARGS`) |
//!   bp-listen ADDR PORT   (TCP listener accepting in the background; prints the port) |
//!   bp-udp-sink ADDR PORT + bp-udp-count PORT   (count datagrams received) |
//!   bp-capture + bp-captured   (AF_PACKET capture of outgoing IP packets carrying
//!   "corral-bp"; prints their IP destinations)
//! Sends and connects (ADDR may be any IPv4/IPv6 literal):
//!   bp-uring-connect inline|async|sqpoll ADDR PORT | bp-uring-sendmsg inline|async|sqpoll ADDR PORT |
//!   bp-uring-socket-connect ADDR PORT   (IORING_OP_SOCKET, then IORING_OP_CONNECT) |
//!   bp-tfo ADDR PORT   (sendto MSG_FASTOPEN) | bp-sendmmsg ADDR PORT ADDR PORT |
//!   bp-udp-connect-sendto CADDR CPORT TADDR TPORT | bp-v6sock-v4addr ADDR PORT |
//!   bp-connect6 ADDR IFNAME PORT   (with a scope id) | bp-connect-proto PROTO ADDR PORT |
//!   bp-sendto-proto PROTO ADDR PORT | bp-bound-connect BINDADDR ADDR PORT |
//!   bp-connect-host NAME PORT | bp-raw-udp ADDR PORT | bp-raw-connect ADDR |
//!   bp-packet-udp ADDR PORT   (AF_PACKET on lo) | bp-ping ADDR | bp-ping-connect ADDR |
//!   bp-lsrr HOP ADDR PORT | bp-retopts HOP ADDR PORT | bp-srh HOP ADDR PORT |
//!   bp-vsock-socket |
//!   bp-mptcp-pair ADDR PORT   (MPTCP listener on 0.0.0.0:PORT and a client to ADDR:PORT;
//!   prints the remote ends of the established TCP sockets, subflows included)
//! Descriptors, kept in named slots:
//!   bp-hold tcp|udp|tcp6|udp6 NAME | bp-recvfd UNIXPATH NAME   (SCM_RIGHTS) |
//!   bp-getfd PID FD NAME   (pidfd_getfd) | bp-fd-connect NAME ADDR PORT | bp-fd-sendto NAME ADDR PORT
//! Listening:
//!   bp-listen-accept ADDR   (bind ADDR:0, listen, print the port, accept one, write to it) |
//!   bp-listen-auto   (listen() without bind)
//! Leaving the identity:
//!   bp-cgroup | bp-escape   (write own pid to the parent's cgroup.procs) |
//!   bp-clone-into-parent ADDR PORT   (clone3(CLONE_INTO_CGROUP) into the parent's cgroup;
//!   the child connects)
//!
//! One module a topic; each has its steps and answers `step` for them.

mod cgroup;
mod fds;
mod listen;
mod mptcp;
mod plumbing;
mod raw;
mod send;
mod uring;

use std::{
    io,
    net::{IpAddr, SocketAddr},
    os::fd::{FromRawFd as _, OwnedFd, RawFd},
};

pub fn is_step(op: &str) -> bool {
    op.starts_with("bp-")
}

const MARK: &[u8] = b"corral-bp";

fn cvt(rc: i64) -> io::Result<i64> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

fn sock(domain: i32, ty: i32, proto: i32) -> io::Result<OwnedFd> {
    // SAFETY: plain syscall; the fd is owned right away.
    let fd = cvt(unsafe { libc::socket(domain, ty | libc::SOCK_CLOEXEC, proto) } as i64)?;
    // SAFETY: a fresh fd nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

fn ip(a: &str) -> IpAddr {
    a.parse().expect("ip literal")
}

fn sa(a: &str, p: &str) -> SocketAddr {
    SocketAddr::new(ip(a), p.parse().expect("port"))
}

/// A `sockaddr_storage` for `a` (with `scope` for IPv6) and its length.
fn raw_sa(a: &SocketAddr, scope: u32) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: all zeroes is a valid sockaddr_storage.
    let mut ss: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    match a {
        SocketAddr::V4(v4) => {
            // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in.
            let sin = unsafe { &mut *(&mut ss as *mut _ as *mut libc::sockaddr_in) };
            sin.sin_family = libc::AF_INET as libc::sa_family_t;
            sin.sin_port = v4.port().to_be();
            sin.sin_addr.s_addr = u32::from_ne_bytes(v4.ip().octets());
            (ss, size_of::<libc::sockaddr_in>() as libc::socklen_t)
        }
        SocketAddr::V6(v6) => {
            // SAFETY: as above, for sockaddr_in6.
            let sin6 = unsafe { &mut *(&mut ss as *mut _ as *mut libc::sockaddr_in6) };
            sin6.sin6_family = libc::AF_INET6 as libc::sa_family_t;
            sin6.sin6_port = v6.port().to_be();
            sin6.sin6_addr.s6_addr = v6.ip().octets();
            sin6.sin6_scope_id = scope;
            (ss, size_of::<libc::sockaddr_in6>() as libc::socklen_t)
        }
    }
}

fn family(a: &SocketAddr) -> i32 {
    if a.is_ipv4() {
        libc::AF_INET
    } else {
        libc::AF_INET6
    }
}

fn connect_fd(fd: RawFd, a: &SocketAddr, scope: u32) -> io::Result<()> {
    let (ss, len) = raw_sa(a, scope);
    // SAFETY: ss is valid for len bytes.
    cvt(unsafe { libc::connect(fd, (&ss as *const libc::sockaddr_storage).cast(), len) } as i64)
        .map(drop)
}

fn sendto_fd(fd: RawFd, buf: &[u8], flags: i32, a: &SocketAddr) -> io::Result<()> {
    let (ss, len) = raw_sa(a, 0);
    // SAFETY: buf and ss are valid for their lengths.
    cvt(unsafe {
        libc::sendto(
            fd,
            buf.as_ptr().cast(),
            buf.len(),
            flags,
            (&ss as *const libc::sockaddr_storage).cast(),
            len,
        )
    } as i64)
    .map(drop)
}

fn json_str(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "'"))
}

/// Like `emit`, with extra JSON fields (`"k":v,...`, already encoded).
fn emit_with(op: &str, r: io::Result<()>, extra: &str) {
    let sep = if extra.is_empty() { "" } else { "," };
    let line = match r {
        Ok(()) => format!(r#"{{"op":"{op}","ok":true,"errno":0{sep}{extra}}}"#),
        Err(e) => format!(
            r#"{{"op":"{op}","ok":false,"errno":{},"error":{}{sep}{extra}}}"#,
            e.raw_os_error().unwrap_or(-1),
            json_str(&e.to_string())
        ),
    };
    println!("{line}");
    use std::io::Write as _;
    let _ = std::io::stdout().flush();
}

pub fn step(args: &[String], i: usize) -> usize {
    plumbing::step(args, i)
        .or_else(|| uring::step(args, i))
        .or_else(|| send::step(args, i))
        .or_else(|| raw::step(args, i))
        .or_else(|| fds::step(args, i))
        .or_else(|| listen::step(args, i))
        .or_else(|| cgroup::step(args, i))
        .or_else(|| mptcp::step(args, i))
        .unwrap_or_else(|| panic!("unknown bypass step {}", args[i]))
}
