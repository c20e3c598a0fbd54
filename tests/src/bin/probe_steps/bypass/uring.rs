//! io_uring, by hand (no crate): connect, sendmsg and socket+connect
//! submitted inline, through an io-wq worker (IOSQE_ASYNC) or the SQPOLL
//! thread.

use std::{
    io,
    net::SocketAddr,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd, RawFd},
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

use super::*;
use crate::emit;

#[repr(C)]
#[derive(Default)]
struct SqOffsets {
    head: u32,
    tail: u32,
    ring_mask: u32,
    ring_entries: u32,
    flags: u32,
    dropped: u32,
    array: u32,
    resv1: u32,
    user_addr: u64,
}

#[repr(C)]
#[derive(Default)]
struct CqOffsets {
    head: u32,
    tail: u32,
    ring_mask: u32,
    ring_entries: u32,
    overflow: u32,
    cqes: u32,
    flags: u32,
    resv1: u32,
    user_addr: u64,
}

#[repr(C)]
#[derive(Default)]
struct UringParams {
    sq_entries: u32,
    cq_entries: u32,
    flags: u32,
    sq_thread_cpu: u32,
    sq_thread_idle: u32,
    features: u32,
    wq_fd: u32,
    resv: [u32; 3],
    sq_off: SqOffsets,
    cq_off: CqOffsets,
}

const IORING_SETUP_SQPOLL: u32 = 1 << 1;

const IORING_ENTER_GETEVENTS: u32 = 1;

const IORING_ENTER_SQ_WAKEUP: u32 = 2;

const IOSQE_ASYNC: u8 = 1 << 4;

const IORING_OP_SENDMSG: u8 = 9;

const IORING_OP_CONNECT: u8 = 16;

const IORING_OP_SOCKET: u8 = 45;

/// One submission queue entry, the fields these steps use.
#[derive(Default, Clone, Copy)]
struct Sqe {
    opcode: u8,
    flags: u8,
    fd: i32,
    off: u64,
    addr: u64,
    len: u32,
    op_flags: u32,
}

struct Ring {
    fd: RawFd,
    sq: *mut u8,
    cq: *mut u8,
    sqes: *mut u8,
    p: UringParams,
    sqpoll: bool,
}

fn map(fd: RawFd, len: usize, off: i64) -> io::Result<*mut u8> {
    // SAFETY: a fresh shared mapping of the ring fd.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED | libc::MAP_POPULATE,
            fd,
            off,
        )
    };
    if p == libc::MAP_FAILED {
        return Err(io::Error::last_os_error());
    }
    Ok(p.cast())
}

impl Ring {
    fn new(sqpoll: bool) -> io::Result<Ring> {
        let mut p = UringParams::default();
        if sqpoll {
            p.flags = IORING_SETUP_SQPOLL;
            p.sq_thread_idle = 2000;
        }
        // SAFETY: params outlive the call.
        let fd = cvt(unsafe { libc::syscall(libc::SYS_io_uring_setup, 4u32, &mut p as *mut _) })?
            as RawFd;
        let sq_len = p.sq_off.array as usize + p.sq_entries as usize * 4;
        let cq_len = p.cq_off.cqes as usize + p.cq_entries as usize * 16;
        let sq = map(fd, sq_len, 0)?;
        let cq = map(fd, cq_len, 0x800_0000)?;
        let sqes = map(fd, 64 * p.sq_entries as usize, 0x1000_0000)?;
        Ok(Ring {
            fd,
            sq,
            cq,
            sqes,
            p,
            sqpoll,
        })
    }

    /// Submits one entry and waits for its completion; gives `res`.
    fn run(&mut self, e: Sqe) -> io::Result<i32> {
        // SAFETY: offsets come from the kernel for these mappings; the
        // entry is written before the tail is published.
        unsafe {
            let mask = *(self.sq.add(self.p.sq_off.ring_mask as usize) as *const u32);
            let tail_p = self.sq.add(self.p.sq_off.tail as usize) as *const AtomicU32;
            let tail = (*tail_p).load(Ordering::Acquire);
            let idx = (tail & mask) as usize;
            let s = self.sqes.add(64 * idx);
            std::ptr::write_bytes(s, 0, 64);
            *s = e.opcode;
            *s.add(1) = e.flags;
            *(s.add(4) as *mut i32) = e.fd;
            *(s.add(8) as *mut u64) = e.off;
            *(s.add(16) as *mut u64) = e.addr;
            *(s.add(24) as *mut u32) = e.len;
            *(s.add(28) as *mut u32) = e.op_flags;
            *(s.add(32) as *mut u64) = 0xc0ffee;
            *(self.sq.add(self.p.sq_off.array as usize) as *mut u32).add(idx) = idx as u32;
            (*tail_p).store(tail.wrapping_add(1), Ordering::Release);
            let (submit, flags) = if self.sqpoll {
                (0u32, IORING_ENTER_GETEVENTS | IORING_ENTER_SQ_WAKEUP)
            } else {
                (1u32, IORING_ENTER_GETEVENTS)
            };
            cvt(libc::syscall(
                libc::SYS_io_uring_enter,
                self.fd,
                submit,
                1u32,
                flags,
                std::ptr::null::<u8>(),
                0usize,
            ))?;
            let cmask = *(self.cq.add(self.p.cq_off.ring_mask as usize) as *const u32);
            let head_p = self.cq.add(self.p.cq_off.head as usize) as *const AtomicU32;
            let ctail_p = self.cq.add(self.p.cq_off.tail as usize) as *const AtomicU32;
            let end = Instant::now() + Duration::from_secs(5);
            let head = (*head_p).load(Ordering::Acquire);
            while (*ctail_p).load(Ordering::Acquire) == head {
                if Instant::now() > end {
                    return Err(io::Error::from_raw_os_error(libc::ETIMEDOUT));
                }
                std::thread::sleep(Duration::from_millis(1));
            }
            let cqe = self
                .cq
                .add(self.p.cq_off.cqes as usize + 16 * (head & cmask) as usize);
            let res = *(cqe.add(8) as *const i32);
            (*head_p).store(head.wrapping_add(1), Ordering::Release);
            if res < 0 {
                return Err(io::Error::from_raw_os_error(-res));
            }
            Ok(res)
        }
    }
}

impl Drop for Ring {
    fn drop(&mut self) {
        // SAFETY: our own fd (the mappings die with the process).
        unsafe { libc::close(self.fd) };
    }
}

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
