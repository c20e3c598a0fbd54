//! Sockets that build their own packets or bypass the sock_addr hooks:
//! raw IP, AF_PACKET, ICMP echo ("ping") and vsock sockets, and source
//! routes (IPv4 LSRR options, IPv6 segment routing headers).

use std::{
    io,
    net::{IpAddr, SocketAddr},
    os::fd::AsRawFd as _,
};

use super::*;
use crate::emit;

fn ones_complement(data: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    for c in data.chunks(2) {
        let w = if c.len() == 2 {
            u16::from_be_bytes([c[0], c[1]])
        } else {
            u16::from_be_bytes([c[0], 0])
        };
        sum += w as u32;
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// A UDP header (checksum 0: none, valid for IPv4) and the payload.
fn udp_datagram(dport: u16, payload: &[u8]) -> Vec<u8> {
    let mut d = Vec::new();
    d.extend_from_slice(&40000u16.to_be_bytes());
    d.extend_from_slice(&dport.to_be_bytes());
    d.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    d.extend_from_slice(&[0, 0]);
    d.extend_from_slice(payload);
    d
}

fn raw_udp(a: &SocketAddr) -> io::Result<()> {
    let s = sock(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_UDP)?;
    let d = udp_datagram(a.port(), b"corral-bp-raw");
    sendto_fd(s.as_raw_fd(), &d, 0, &SocketAddr::new(a.ip(), 0))
}

/// A whole IPv4+UDP packet handed to lo through AF_PACKET (SOCK_DGRAM: the
/// kernel adds the link header).
fn packet_udp(a: &SocketAddr) -> io::Result<()> {
    let IpAddr::V4(dst) = a.ip() else {
        return Err(io::Error::from_raw_os_error(libc::EAFNOSUPPORT));
    };
    let s = sock(
        libc::AF_PACKET,
        libc::SOCK_DGRAM,
        (libc::ETH_P_IP as u16).to_be() as i32,
    )?;
    let udp = udp_datagram(a.port(), b"corral-bp-packet");
    let mut ip = vec![0x45, 0];
    ip.extend_from_slice(&((20 + udp.len()) as u16).to_be_bytes());
    ip.extend_from_slice(&[0, 1, 0x40, 0, 64, libc::IPPROTO_UDP as u8, 0, 0]);
    ip.extend_from_slice(&[127, 0, 0, 1]);
    ip.extend_from_slice(&dst.octets());
    let c = ones_complement(&ip);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    ip.extend_from_slice(&udp);
    // SAFETY: all zeroes is a valid sockaddr_ll.
    let mut ll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    ll.sll_family = libc::AF_PACKET as u16;
    ll.sll_protocol = (libc::ETH_P_IP as u16).to_be();
    // SAFETY: NUL-terminated name.
    ll.sll_ifindex = unsafe { libc::if_nametoindex(c"lo".as_ptr()) } as i32;
    ll.sll_halen = 6;
    // SAFETY: ip and ll are valid for their lengths.
    cvt(unsafe {
        libc::sendto(
            s.as_raw_fd(),
            ip.as_ptr().cast(),
            ip.len(),
            0,
            (&ll as *const libc::sockaddr_ll).cast(),
            size_of::<libc::sockaddr_ll>() as libc::socklen_t,
        )
    } as i64)
    .map(drop)
}

fn echo_request() -> Vec<u8> {
    let mut e = vec![8, 0, 0, 0, 0, 0, 0, 1];
    e.extend_from_slice(b"corral-bp-ping");
    e
}

/// IPv4 options: NOP, then a loose source route whose first hop is `hop`
/// (the kernel puts the destination in the last slot).
fn lsrr_opt(hop: &str) -> Vec<u8> {
    let IpAddr::V4(h) = ip(hop) else {
        panic!("LSRR hop must be IPv4")
    };
    let mut o = vec![1, 0x83, 7, 4];
    o.extend_from_slice(&h.octets());
    o
}

fn lsrr(hop: &str, a: &SocketAddr) -> io::Result<()> {
    let s = sock(libc::AF_INET, libc::SOCK_DGRAM, 0)?;
    let o = lsrr_opt(hop);
    // SAFETY: o is valid for its length.
    cvt(unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_OPTIONS,
            o.as_ptr().cast(),
            o.len() as libc::socklen_t,
        )
    } as i64)?;
    sendto_fd(s.as_raw_fd(), b"corral-bp-lsrr", 0, a)
}

/// The same source route, given per message (`IP_RETOPTS` control message).
fn retopts(hop: &str, a: &SocketAddr) -> io::Result<()> {
    let s = sock(libc::AF_INET, libc::SOCK_DGRAM, 0)?;
    let o = lsrr_opt(hop);
    let (mut ss, len) = raw_sa(a, 0);
    let mut payload = *b"corral-bp-retopts";
    let mut iov = libc::iovec {
        iov_base: payload.as_mut_ptr().cast(),
        iov_len: payload.len(),
    };
    // SAFETY: CMSG_SPACE is a pure computation.
    let space = unsafe { libc::CMSG_SPACE(o.len() as u32) } as usize;
    let mut cbuf = vec![0u64; space.div_ceil(8)];
    // SAFETY: all zeroes is a valid msghdr.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_name = (&mut ss as *mut libc::sockaddr_storage).cast();
    msg.msg_namelen = len;
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cbuf.as_mut_ptr().cast();
    msg.msg_controllen = space;
    // SAFETY: the control buffer holds one header of this size.
    unsafe {
        let c = libc::CMSG_FIRSTHDR(&msg);
        (*c).cmsg_level = libc::IPPROTO_IP;
        (*c).cmsg_type = libc::IP_RETOPTS;
        (*c).cmsg_len = libc::CMSG_LEN(o.len() as u32) as usize;
        std::ptr::copy_nonoverlapping(o.as_ptr(), libc::CMSG_DATA(c), o.len());
    }
    // SAFETY: msg and all it points to live across the call.
    cvt(unsafe { libc::sendmsg(s.as_raw_fd(), &msg, 0) } as i64).map(drop)
}

/// An IPv6 segment routing header (type 4) on the socket: segments
/// [destination, hop], segments_left 1, so the first hop is `hop`.
fn srh(hop: &str, a: &SocketAddr) -> io::Result<()> {
    let IpAddr::V6(h) = ip(hop) else {
        panic!("SRH hop must be IPv6")
    };
    let IpAddr::V6(d) = a.ip() else {
        panic!("SRH destination must be IPv6")
    };
    let s = sock(libc::AF_INET6, libc::SOCK_DGRAM, 0)?;
    // nexthdr, hdrlen (8-byte units after the first 8), type 4,
    // segments_left 1, last_entry 1, flags, tag.
    let mut o = vec![0u8, 4, 4, 1, 1, 0, 0, 0];
    o.extend_from_slice(&d.octets());
    o.extend_from_slice(&h.octets());
    // SAFETY: o is valid for its length.
    cvt(unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::IPPROTO_IPV6,
            libc::IPV6_RTHDR,
            o.as_ptr().cast(),
            o.len() as libc::socklen_t,
        )
    } as i64)?;
    sendto_fd(s.as_raw_fd(), b"corral-bp-srh", 0, a)
}

/// Runs the step at `args[i]` if it is one of this module's; gives the
/// index of the next step.
pub(super) fn step(args: &[String], i: usize) -> Option<usize> {
    let a = |k: usize| args[i + k].as_str();
    Some(match a(0) {
        "bp-raw-udp" => {
            emit("bp-raw-udp", raw_udp(&sa(a(1), a(2))));
            i + 3
        }
        "bp-raw-connect" => {
            let t = SocketAddr::new(ip(a(1)), 0);
            let r = sock(family(&t), libc::SOCK_RAW, libc::IPPROTO_UDP)
                .and_then(|s| connect_fd(s.as_raw_fd(), &t, 0));
            emit("bp-raw-connect", r);
            i + 2
        }
        "bp-packet-udp" => {
            emit("bp-packet-udp", packet_udp(&sa(a(1), a(2))));
            i + 3
        }
        "bp-ping" => {
            let t = SocketAddr::new(ip(a(1)), 0);
            let r = sock(libc::AF_INET, libc::SOCK_DGRAM, libc::IPPROTO_ICMP)
                .and_then(|s| sendto_fd(s.as_raw_fd(), &echo_request(), 0, &t));
            emit("bp-ping", r);
            i + 2
        }
        "bp-ping-connect" => {
            let t = SocketAddr::new(ip(a(1)), 0);
            let r = sock(libc::AF_INET, libc::SOCK_DGRAM, libc::IPPROTO_ICMP)
                .and_then(|s| connect_fd(s.as_raw_fd(), &t, 0));
            emit("bp-ping-connect", r);
            i + 2
        }
        "bp-lsrr" => {
            emit("bp-lsrr", lsrr(a(1), &sa(a(2), a(3))));
            i + 4
        }
        "bp-retopts" => {
            emit("bp-retopts", retopts(a(1), &sa(a(2), a(3))));
            i + 4
        }
        "bp-srh" => {
            emit("bp-srh", srh(a(1), &sa(a(2), a(3))));
            i + 4
        }
        "bp-vsock-socket" => {
            emit(
                "bp-vsock-socket",
                sock(libc::AF_VSOCK, libc::SOCK_STREAM, 0).map(drop),
            );
            i + 1
        }
        _ => return None,
    })
}
