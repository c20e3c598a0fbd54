//! MPTCP: a listener and a client in this process, and the remote ends of
//! the established TCP sockets (subflows included) after the path managers
//! had their moment.

use std::{
    io,
    net::{IpAddr, SocketAddr},
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd, RawFd},
    time::Duration,
};

use super::*;

/// An MPTCP listener on 0.0.0.0:PORT and a client connecting to `a` (both
/// in this process); after a moment, the remote ends of every established
/// TCP socket (MPTCP subflows are TCP sockets) from /proc/net/tcp.
fn mptcp_pair(a: &SocketAddr) -> io::Result<Vec<String>> {
    let l = sock(libc::AF_INET, libc::SOCK_STREAM, libc::IPPROTO_MPTCP)?;
    let any = SocketAddr::new(IpAddr::from([0, 0, 0, 0]), a.port());
    let (ss, len) = raw_sa(&any, 0);
    let sp = (&ss as *const libc::sockaddr_storage).cast();
    // SAFETY: ss valid for len; plain syscalls on our socket.
    cvt(unsafe { libc::bind(l.as_raw_fd(), sp, len) } as i64)?;
    // SAFETY: as above.
    cvt(unsafe { libc::listen(l.as_raw_fd(), 4) } as i64)?;
    let c = sock(libc::AF_INET, libc::SOCK_STREAM, libc::IPPROTO_MPTCP)?;
    connect_fd(c.as_raw_fd(), a, 0)?;
    let null = std::ptr::null_mut();
    // SAFETY: plain syscall on our listener.
    let s = cvt(unsafe { libc::accept(l.as_raw_fd(), null, null.cast()) } as i64)?;
    // SAFETY: a fresh fd.
    let s = unsafe { OwnedFd::from_raw_fd(s as RawFd) };
    // Time for the path managers to announce and join.
    std::thread::sleep(Duration::from_millis(1500));
    let (buf, n) = (MARK.as_ptr().cast(), MARK.len());
    // SAFETY: buf valid for n bytes.
    cvt(unsafe { libc::send(c.as_raw_fd(), buf, n, 0) } as i64)?;
    std::thread::sleep(Duration::from_millis(300));
    let peers = established_tcp_peers();
    drop((s, c, l));
    Ok(peers)
}

fn established_tcp_peers() -> Vec<String> {
    let t = std::fs::read_to_string("/proc/net/tcp").unwrap_or_default();
    t.lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let (rem, st) = (f.get(2)?, f.get(3)?);
            if *st != "01" {
                return None;
            }
            let (ip, port) = rem.split_once(':')?;
            let ip = u32::from_str_radix(ip, 16).ok()?.to_le_bytes();
            let port = u16::from_str_radix(port, 16).ok()?;
            Some(SocketAddr::new(IpAddr::from(ip), port).to_string())
        })
        .collect()
}

/// Runs the step at `args[i]` if it is one of this module's; gives the
/// index of the next step.
pub(super) fn step(args: &[String], i: usize) -> Option<usize> {
    let a = |k: usize| args[i + k].as_str();
    Some(match a(0) {
        "bp-mptcp-pair" => {
            let r = mptcp_pair(&sa(a(1), a(2)));
            let peers: Vec<String> = r
                .as_ref()
                .map_or(Vec::new(), |p| p.iter().map(|x| json_str(x)).collect());
            emit_with(
                "bp-mptcp-pair",
                r.map(drop),
                &format!(r#""tcp_peers":[{}]"#, peers.join(",")),
            );
            i + 3
        }
        _ => return None,
    })
}
