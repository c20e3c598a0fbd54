//! io_uring, by hand (no crate): a ring that submits one entry at a time
//! and waits for its completion, inline or through the SQPOLL thread.
//! Shared by the network bypass steps (`bypass/uring.rs`) and the BPF-LSM
//! `uring-open` step (`lsm.rs`).

use std::{
    io,
    os::fd::RawFd,
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

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

/// One submission queue entry, the fields the steps use.
#[derive(Default, Clone, Copy)]
pub(crate) struct Sqe {
    pub opcode: u8,
    pub flags: u8,
    pub fd: i32,
    pub off: u64,
    pub addr: u64,
    pub len: u32,
    /// The op's flags (`open_flags` for IORING_OP_OPENAT).
    pub op_flags: u32,
}

pub(crate) struct Ring {
    fd: RawFd,
    sq: *mut u8,
    cq: *mut u8,
    sqes: *mut u8,
    p: UringParams,
    sqpoll: bool,
}

fn check(rc: i64) -> io::Result<i64> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
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
    /// A ring of 4 entries; with `sqpoll`, submitted by the kernel's SQPOLL
    /// thread.
    pub(crate) fn new(sqpoll: bool) -> io::Result<Ring> {
        let mut p = UringParams::default();
        if sqpoll {
            p.flags = IORING_SETUP_SQPOLL;
            p.sq_thread_idle = 2000;
        }
        // SAFETY: params outlive the call.
        let fd = check(unsafe { libc::syscall(libc::SYS_io_uring_setup, 4u32, &mut p as *mut _) })?
            as RawFd;
        // From here on `Drop` closes the fd, also when a mapping fails.
        let mut r = Ring {
            fd,
            sq: std::ptr::null_mut(),
            cq: std::ptr::null_mut(),
            sqes: std::ptr::null_mut(),
            p,
            sqpoll,
        };
        let sq_len = r.p.sq_off.array as usize + r.p.sq_entries as usize * 4;
        let cq_len = r.p.cq_off.cqes as usize + r.p.cq_entries as usize * 16;
        r.sq = map(fd, sq_len, 0)?;
        r.cq = map(fd, cq_len, 0x800_0000)?;
        r.sqes = map(fd, 64 * r.p.sq_entries as usize, 0x1000_0000)?;
        Ok(r)
    }

    /// Submits one entry and waits for its completion; gives `res`.
    pub(crate) fn run(&mut self, e: Sqe) -> io::Result<i32> {
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
            check(libc::syscall(
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
