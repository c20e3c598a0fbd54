//! Other ways to connect and send with ordinary sockets: TCP Fast Open,
//! sendmmsg, connected UDP, odd address families and spellings, scope ids,
//! other protocols, bound sockets and host names.

use std::{
    ffi::CString,
    io,
    net::{SocketAddr, ToSocketAddrs as _},
    os::fd::AsRawFd as _,
};

use super::*;
use crate::emit;

fn sendmmsg(a: &SocketAddr, b: &SocketAddr) -> (io::Result<()>, i64) {
    let s = match sock(family(a), libc::SOCK_DGRAM, 0) {
        Ok(s) => s,
        Err(e) => return (Err(e), 0),
    };
    let (mut sa_a, la) = raw_sa(a, 0);
    let (mut sa_b, lb) = raw_sa(b, 0);
    let mut pa = *b"corral-bp-mmsg-1";
    let mut pb = *b"corral-bp-mmsg-2";
    let mut iov = [
        libc::iovec {
            iov_base: pa.as_mut_ptr().cast(),
            iov_len: pa.len(),
        },
        libc::iovec {
            iov_base: pb.as_mut_ptr().cast(),
            iov_len: pb.len(),
        },
    ];
    // SAFETY: all zeroes is a valid mmsghdr.
    let mut m: [libc::mmsghdr; 2] = unsafe { std::mem::zeroed() };
    m[0].msg_hdr.msg_name = (&mut sa_a as *mut libc::sockaddr_storage).cast();
    m[0].msg_hdr.msg_namelen = la;
    m[0].msg_hdr.msg_iov = &mut iov[0];
    m[0].msg_hdr.msg_iovlen = 1;
    m[1].msg_hdr.msg_name = (&mut sa_b as *mut libc::sockaddr_storage).cast();
    m[1].msg_hdr.msg_namelen = lb;
    m[1].msg_hdr.msg_iov = &mut iov[1];
    m[1].msg_hdr.msg_iovlen = 1;
    // SAFETY: m and everything it points to live across the call.
    match cvt(unsafe { libc::sendmmsg(s.as_raw_fd(), m.as_mut_ptr(), 2, 0) } as i64) {
        Ok(n) => (Ok(()), n),
        Err(e) => (Err(e), 0),
    }
}

fn step_bp_udp_connect_sendto(args: &[String], i: usize) -> usize {
    let a = |k: usize| args[i + k].as_str();
    let c = sa(a(1), a(2));
    let t = sa(a(3), a(4));
    match sock(family(&c), libc::SOCK_DGRAM, 0) {
        Ok(s) => {
            emit("bp-udp-connect", connect_fd(s.as_raw_fd(), &c, 0));
            // SAFETY: buf valid for its length.
            let sent =
                cvt(
                    unsafe { libc::send(s.as_raw_fd(), b"corral-bp-c".as_ptr().cast(), 11, 0) }
                        as i64,
                );
            emit("bp-udp-send", sent.map(drop));
            emit(
                "bp-udp-sendto-other",
                sendto_fd(s.as_raw_fd(), b"corral-bp-o", 0, &t),
            );
        }
        Err(e) => emit("bp-udp-connect", Err(e)),
    }
    i + 5
}

fn step_bp_v6sock_v4addr(args: &[String], i: usize) -> usize {
    let a = |k: usize| args[i + k].as_str();
    // An IPv6 UDP socket given an AF_INET destination.
    let t = sa(a(1), a(2));
    let r = sock(libc::AF_INET6, libc::SOCK_DGRAM, 0)
        .and_then(|s| sendto_fd(s.as_raw_fd(), b"corral-bp-v6v4", 0, &t));
    emit("bp-v6sock-v4addr", r);
    i + 3
}

fn step_bp_connect6(args: &[String], i: usize) -> usize {
    let a = |k: usize| args[i + k].as_str();
    let t = sa(a(1), a(3));
    let name = CString::new(a(2)).expect("ifname");
    // SAFETY: NUL-terminated name.
    let scope = unsafe { libc::if_nametoindex(name.as_ptr()) };
    let r = sock(libc::AF_INET6, libc::SOCK_STREAM, 0)
        .and_then(|s| connect_fd(s.as_raw_fd(), &t, scope));
    emit_with("bp-connect6", r, &format!(r#""scope":{scope}"#));
    i + 4
}

fn step_bp_connect_proto(args: &[String], i: usize) -> usize {
    let a = |k: usize| args[i + k].as_str();
    let proto: i32 = a(1).parse().expect("protocol");
    let t = sa(a(2), a(3));
    let r =
        sock(family(&t), libc::SOCK_STREAM, proto).and_then(|s| connect_fd(s.as_raw_fd(), &t, 0));
    emit("bp-connect-proto", r);
    i + 4
}

fn step_bp_sendto_proto(args: &[String], i: usize) -> usize {
    let a = |k: usize| args[i + k].as_str();
    let proto: i32 = a(1).parse().expect("protocol");
    let t = sa(a(2), a(3));
    let r = sock(family(&t), libc::SOCK_DGRAM, proto)
        .and_then(|s| sendto_fd(s.as_raw_fd(), b"corral-bp-proto", 0, &t));
    emit("bp-sendto-proto", r);
    i + 4
}

fn step_bp_bound_connect(args: &[String], i: usize) -> usize {
    let a = |k: usize| args[i + k].as_str();
    let b = SocketAddr::new(ip(a(1)), 0);
    let t = sa(a(2), a(3));
    let r = sock(family(&t), libc::SOCK_STREAM, 0).and_then(|s| {
        let (ss, len) = raw_sa(&b, 0);
        // SAFETY: ss valid for len.
        cvt(unsafe {
            libc::bind(
                s.as_raw_fd(),
                (&ss as *const libc::sockaddr_storage).cast(),
                len,
            )
        } as i64)?;
        connect_fd(s.as_raw_fd(), &t, 0)
    });
    emit("bp-bound-connect", r);
    i + 4
}

fn step_bp_connect_host(args: &[String], i: usize) -> usize {
    let a = |k: usize| args[i + k].as_str();
    let port: u16 = a(2).parse().expect("port");
    let results: Vec<String> = match (a(1), port).to_socket_addrs() {
        Ok(addrs) => addrs
            .map(|t| {
                let r = sock(family(&t), libc::SOCK_STREAM, 0)
                    .and_then(|s| connect_fd(s.as_raw_fd(), &t, 0));
                let e = r.err().and_then(|e| e.raw_os_error()).unwrap_or(0);
                format!(r#"{{"addr":"{}","errno":{e}}}"#, t.ip())
            })
            .collect(),
        Err(e) => vec![format!(
            r#"{{"resolve_error":{}}}"#,
            json_str(&e.to_string())
        )],
    };
    println!(
        r#"{{"op":"bp-connect-host","results":[{}]}}"#,
        results.join(",")
    );
    i + 3
}

/// Runs the step at `args[i]` if it is one of this module's; gives the
/// index of the next step.
pub(super) fn step(args: &[String], i: usize) -> Option<usize> {
    let a = |k: usize| args[i + k].as_str();
    Some(match a(0) {
        "bp-tfo" => {
            let t = sa(a(1), a(2));
            let r = sock(family(&t), libc::SOCK_STREAM, 0)
                .and_then(|s| sendto_fd(s.as_raw_fd(), b"corral-bp-tfo", libc::MSG_FASTOPEN, &t));
            emit("bp-tfo", r);
            i + 3
        }
        "bp-sendmmsg" => {
            let (r, n) = sendmmsg(&sa(a(1), a(2)), &sa(a(3), a(4)));
            emit_with("bp-sendmmsg", r, &format!(r#""sent":{n}"#));
            i + 5
        }
        "bp-udp-connect-sendto" => step_bp_udp_connect_sendto(args, i),
        "bp-v6sock-v4addr" => step_bp_v6sock_v4addr(args, i),
        "bp-connect6" => step_bp_connect6(args, i),
        "bp-connect-proto" => step_bp_connect_proto(args, i),
        "bp-sendto-proto" => step_bp_sendto_proto(args, i),
        "bp-bound-connect" => step_bp_bound_connect(args, i),
        "bp-connect-host" => step_bp_connect_host(args, i),
        _ => return None,
    })
}
