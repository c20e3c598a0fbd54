//! io_uring bypasses: connect, sendmsg and socket+connect submitted
//! inline, through an io-wq worker (IOSQE_ASYNC) or the SQPOLL thread (the
//! ring itself: `probe_steps/uring.rs`).

use std::{
    io,
    net::SocketAddr,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
};

use super::*;
use crate::{
    emit,
    uring::{Ring, Sqe},
};

const IOSQE_ASYNC: u8 = 1 << 4;

const IORING_OP_SENDMSG: u8 = 9;

const IORING_OP_CONNECT: u8 = 16;

const IORING_OP_SOCKET: u8 = 45;

fn uring_mode(m: &str) -> (bool, u8) {
    match m {
        "inline" => (false, 0),
        "async" => (false, IOSQE_ASYNC),
        "sqpoll" => (true, 0),
        other => panic!("io_uring mode {other}: inline|async|sqpoll"),
    }
}

fn uring_connect(mode: &str, a: &SocketAddr) -> io::Result<()> {
    let (sqpoll, flags) = uring_mode(mode);
    let s = sock(family(a), libc::SOCK_STREAM, 0)?;
    let (ss, len) = raw_sa(a, 0);
    let mut r = Ring::new(sqpoll)?;
    r.run(Sqe {
        opcode: IORING_OP_CONNECT,
        flags,
        fd: s.as_raw_fd(),
        addr: &ss as *const _ as u64,
        off: len as u64,
        ..Sqe::default()
    })
    .map(drop)
}

fn uring_sendmsg(mode: &str, a: &SocketAddr) -> io::Result<()> {
    let (sqpoll, flags) = uring_mode(mode);
    let s = sock(family(a), libc::SOCK_DGRAM, 0)?;
    let (mut ss, len) = raw_sa(a, 0);
    let mut payload = *b"corral-bp-uring";
    let mut iov = libc::iovec {
        iov_base: payload.as_mut_ptr().cast(),
        iov_len: payload.len(),
    };
    // SAFETY: all zeroes is a valid msghdr.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_name = (&mut ss as *mut libc::sockaddr_storage).cast();
    msg.msg_namelen = len;
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    let mut r = Ring::new(sqpoll)?;
    r.run(Sqe {
        opcode: IORING_OP_SENDMSG,
        flags,
        fd: s.as_raw_fd(),
        addr: &msg as *const _ as u64,
        len: 1,
        ..Sqe::default()
    })
    .map(drop)
}

/// The socket itself made by io_uring (IORING_OP_SOCKET), then connected.
fn uring_socket_connect(a: &SocketAddr) -> io::Result<()> {
    let mut r = Ring::new(false)?;
    let fd = r.run(Sqe {
        opcode: IORING_OP_SOCKET,
        fd: family(a),
        off: libc::SOCK_STREAM as u64,
        len: 0,
        ..Sqe::default()
    })?;
    // SAFETY: the CQE's result is a fresh fd.
    let s = unsafe { OwnedFd::from_raw_fd(fd) };
    let (ss, len) = raw_sa(a, 0);
    r.run(Sqe {
        opcode: IORING_OP_CONNECT,
        fd: s.as_raw_fd(),
        addr: &ss as *const _ as u64,
        off: len as u64,
        ..Sqe::default()
    })
    .map(drop)
}

/// Runs the step at `args[i]` if it is one of this module's; gives the
/// index of the next step.
pub(super) fn step(args: &[String], i: usize) -> Option<usize> {
    let a = |k: usize| args[i + k].as_str();
    Some(match a(0) {
        "bp-uring-connect" => {
            emit_with(
                "bp-uring-connect",
                uring_connect(a(1), &sa(a(2), a(3))),
                &format!(r#""mode":"{}""#, a(1)),
            );
            i + 4
        }
        "bp-uring-sendmsg" => {
            emit_with(
                "bp-uring-sendmsg",
                uring_sendmsg(a(1), &sa(a(2), a(3))),
                &format!(r#""mode":"{}""#, a(1)),
            );
            i + 4
        }
        "bp-uring-socket-connect" => {
            emit(
                "bp-uring-socket-connect",
                uring_socket_connect(&sa(a(1), a(2))),
            );
            i + 3
        }
        _ => return None,
    })
}
