//! Descriptors kept in named slots: sockets made here, received over
//! SCM_RIGHTS or taken with pidfd_getfd, then connected or sent with.

use std::{
    collections::HashMap,
    io,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd, RawFd},
    sync::Mutex,
};

use super::*;
use crate::emit;

static SLOTS: Mutex<Option<HashMap<String, RawFd>>> = Mutex::new(None);

fn slot_put(name: &str, fd: OwnedFd) {
    use std::os::fd::IntoRawFd as _;
    SLOTS
        .lock()
        .expect("slots")
        .get_or_insert_with(HashMap::new)
        .insert(name.to_string(), fd.into_raw_fd());
}

fn slot(name: &str) -> RawFd {
    *SLOTS
        .lock()
        .expect("slots")
        .as_ref()
        .and_then(|m| m.get(name))
        .unwrap_or_else(|| panic!("no slot {name}"))
}

fn recv_fd(path: &str) -> io::Result<OwnedFd> {
    let s = std::os::unix::net::UnixStream::connect(path)?;
    let mut byte = [0u8; 1];
    let mut iov = libc::iovec {
        iov_base: byte.as_mut_ptr().cast(),
        iov_len: 1,
    };
    let mut cbuf = [0u64; 8];
    // SAFETY: all zeroes is a valid msghdr.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cbuf.as_mut_ptr().cast();
    msg.msg_controllen = size_of_val(&cbuf);
    // SAFETY: msg and its buffers live across the call.
    cvt(unsafe { libc::recvmsg(s.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC) } as i64)?;
    // SAFETY: the kernel filled the control buffer.
    unsafe {
        let c = libc::CMSG_FIRSTHDR(&msg);
        if c.is_null() || (*c).cmsg_level != libc::SOL_SOCKET || (*c).cmsg_type != libc::SCM_RIGHTS
        {
            return Err(io::Error::from_raw_os_error(libc::EBADMSG));
        }
        let fd = std::ptr::read_unaligned(libc::CMSG_DATA(c) as *const i32);
        Ok(OwnedFd::from_raw_fd(fd))
    }
}

fn getfd(pid: i32, fd: i32) -> io::Result<OwnedFd> {
    // SAFETY: plain syscalls; the fds are owned right away.
    let pfd = cvt(unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) })?;
    // SAFETY: as above.
    let pfd = unsafe { OwnedFd::from_raw_fd(pfd as RawFd) };
    // SAFETY: as above.
    let got = cvt(unsafe { libc::syscall(libc::SYS_pidfd_getfd, pfd.as_raw_fd(), fd, 0) })?;
    // SAFETY: as above.
    Ok(unsafe { OwnedFd::from_raw_fd(got as RawFd) })
}

/// Runs the step at `args[i]` if it is one of this module's; gives the
/// index of the next step.
pub(super) fn step(args: &[String], i: usize) -> Option<usize> {
    let a = |k: usize| args[i + k].as_str();
    Some(match a(0) {
        "bp-hold" => {
            let (dom, ty) = match a(1) {
                "tcp" => (libc::AF_INET, libc::SOCK_STREAM),
                "udp" => (libc::AF_INET, libc::SOCK_DGRAM),
                "tcp6" => (libc::AF_INET6, libc::SOCK_STREAM),
                "udp6" => (libc::AF_INET6, libc::SOCK_DGRAM),
                other => panic!("bp-hold {other}"),
            };
            let r = sock(dom, ty, 0).map(|s| slot_put(a(2), s));
            emit("bp-hold", r);
            i + 3
        }
        "bp-recvfd" => {
            emit("bp-recvfd", recv_fd(a(1)).map(|fd| slot_put(a(2), fd)));
            i + 3
        }
        "bp-getfd" => {
            let r = getfd(a(1).parse().expect("pid"), a(2).parse().expect("fd"))
                .map(|fd| slot_put(a(3), fd));
            emit("bp-getfd", r);
            i + 4
        }
        "bp-fd-connect" => {
            emit("bp-fd-connect", connect_fd(slot(a(1)), &sa(a(2), a(3)), 0));
            i + 4
        }
        "bp-fd-sendto" => {
            emit(
                "bp-fd-sendto",
                sendto_fd(slot(a(1)), b"corral-bp-fd", 0, &sa(a(2), a(3))),
            );
            i + 4
        }
        _ => return None,
    })
}
