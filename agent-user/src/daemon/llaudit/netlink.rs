//! NETLINK_AUDIT, as much of it as the Landlock-denial observer needs: the
//! audit status (read, enable, backlog), Corral's one task rule, and a
//! listener on the read-only multicast group. No auditctl: a host without
//! the audit user space still has the kernel side.

use std::{
    io,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    time::Duration,
};

pub const AUDIT_GET: u16 = 1000;
pub const AUDIT_SET: u16 = 1001;
pub const AUDIT_ADD_RULE: u16 = 1011;
pub const AUDIT_LIST_RULES: u16 = 1013;
pub const AUDIT_SYSCALL: u16 = 1300;
pub const AUDIT_PATH: u16 = 1302;
pub const AUDIT_CWD: u16 = 1307;
pub const AUDIT_EOE: u16 = 1320;
pub const AUDIT_LANDLOCK_ACCESS: u16 = 1423;
pub const AUDIT_LANDLOCK_DOMAIN: u16 = 1424;

pub const STATUS_ENABLED: u32 = 0x1;
pub const STATUS_BACKLOG_LIMIT: u32 = 0x10;

/// The multicast group every record is copied to, auditd or not; reading
/// it never makes Corral the audit daemon (a stalled daemon would block
/// the host's audit callers, a slow multicast reader only itself).
const AUDIT_NLGRP_READLOG: u32 = 1;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLM_F_REQUEST: u16 = 1;
const NLM_F_ACK: u16 = 4;
const HDR: usize = 16;

/// `struct audit_status`.
#[repr(C)]
#[derive(Default, Clone, Copy, Debug)]
pub struct Status {
    pub mask: u32,
    pub enabled: u32,
    pub failure: u32,
    pub pid: u32,
    pub rate_limit: u32,
    pub backlog_limit: u32,
    pub lost: u32,
    pub backlog: u32,
    pub feature_bitmap: u32,
    pub backlog_wait_time: u32,
    pub backlog_wait_time_actual: u32,
}

fn socket(groups: u32) -> io::Result<OwnedFd> {
    // SAFETY: plain socket(2).
    let fd = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            libc::NETLINK_AUDIT,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh fd we own.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: zeroed sockaddr_nl is valid; only the family and groups set.
    let mut sa: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
    sa.nl_family = libc::AF_NETLINK as u16;
    sa.nl_groups = groups;
    // SAFETY: `sa` is a valid sockaddr_nl of the size given.
    let rc = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&sa as *const libc::sockaddr_nl).cast(),
            size_of::<libc::sockaddr_nl>() as u32,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(fd)
}

fn setsockopt<T>(fd: &OwnedFd, level: i32, name: i32, v: &T) -> io::Result<()> {
    // SAFETY: `v` is a live value of the size given.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            (v as *const T).cast(),
            size_of::<T>() as u32,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The control socket: requests and their acknowledgements.
pub struct Control {
    fd: OwnedFd,
    seq: u32,
}

impl Control {
    /// EPROTONOSUPPORT: a kernel without audit (CONFIG_AUDIT=n, `audit=0`).
    pub fn open() -> io::Result<Control> {
        let fd = socket(0)?;
        let tv = libc::timeval {
            tv_sec: 2,
            tv_usec: 0,
        };
        setsockopt(&fd, libc::SOL_SOCKET, libc::SO_RCVTIMEO, &tv)?;
        Ok(Control { fd, seq: 0 })
    }

    /// Sends one request and waits for its ack, and for `want_reply` its
    /// reply too (the kernel may send the two in either order).
    fn request(&mut self, ty: u16, payload: &[u8], want_reply: bool) -> io::Result<Vec<u8>> {
        Ok(self
            .exchange(ty, payload, want_reply)?
            .pop()
            .unwrap_or_default())
    }

    /// The replies to one request: one, or a dump's many up to DONE.
    fn exchange(&mut self, ty: u16, payload: &[u8], want_reply: bool) -> io::Result<Vec<Vec<u8>>> {
        self.seq = self.seq.wrapping_add(1);
        let mut msg = Vec::with_capacity(HDR + payload.len());
        msg.extend_from_slice(&((HDR + payload.len()) as u32).to_ne_bytes());
        msg.extend_from_slice(&ty.to_ne_bytes());
        msg.extend_from_slice(&(NLM_F_REQUEST | NLM_F_ACK).to_ne_bytes());
        msg.extend_from_slice(&self.seq.to_ne_bytes());
        msg.extend_from_slice(&0u32.to_ne_bytes());
        msg.extend_from_slice(payload);
        // SAFETY: a valid buffer; the kernel is the default destination.
        let rc = unsafe { libc::send(self.fd.as_raw_fd(), msg.as_ptr().cast(), msg.len(), 0) };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        let (mut acked, mut done, mut replies) = (false, !want_reply, Vec::new());
        let mut buf = vec![0u8; 16384];
        while !acked || !done {
            // SAFETY: a valid buffer of the size given.
            let n =
                unsafe { libc::recv(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            if n < 0 {
                return Err(io::Error::last_os_error());
            }
            for (t, seq, body) in messages(&buf[..n as usize]) {
                if seq != self.seq {
                    continue;
                }
                if t == NLMSG_ERROR {
                    let err = body
                        .get(..4)
                        .map_or(0, |b| i32::from_ne_bytes(b.try_into().unwrap()));
                    if err != 0 {
                        return Err(io::Error::from_raw_os_error(-err));
                    }
                    acked = true;
                } else if t == NLMSG_DONE {
                    done = true;
                } else {
                    replies.push(body.to_vec());
                    done |= ty != AUDIT_LIST_RULES;
                }
            }
        }
        Ok(replies)
    }

    /// Whether a `task,never` rule without fields, not Corral's, is in
    /// force: then no process gets an audit context, agents included.
    pub fn foreign_task_never(&mut self) -> io::Result<bool> {
        Ok(self.exchange(AUDIT_LIST_RULES, &[], true)?.iter().any(|r| {
            let word = |i: usize| {
                r.get(i * 4..i * 4 + 4)
                    .map(|b| u32::from_ne_bytes(b.try_into().unwrap()))
            };
            word(0) == Some(AUDIT_FILTER_TASK) && word(1) == Some(AUDIT_NEVER) && word(2) == Some(0)
        }))
    }

    pub fn status(&mut self) -> io::Result<Status> {
        let b = self.request(AUDIT_GET, &[], true)?;
        let mut s = Status::default();
        let n = b.len().min(size_of::<Status>());
        // SAFETY: `Status` is plain u32s; a shorter (older) reply leaves
        // the rest zero.
        unsafe { std::ptr::copy_nonoverlapping(b.as_ptr(), (&mut s as *mut Status).cast(), n) };
        Ok(s)
    }

    /// Sets the fields named by `mask` to their values in `s`.
    pub fn set(&mut self, mask: u32, mut s: Status) -> io::Result<()> {
        s.mask = mask;
        // SAFETY: `Status` is plain u32s.
        let b = unsafe {
            std::slice::from_raw_parts((&s as *const Status).cast::<u8>(), size_of::<Status>())
        };
        self.request(AUDIT_SET, b, false).map(drop)
    }

    /// Adds a rule; `Ok(false)` when the same rule is already there.
    pub fn add_rule(&mut self, rule: &[u8]) -> io::Result<bool> {
        match self.request(AUDIT_ADD_RULE, rule, false) {
            Ok(_) => Ok(true),
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => Ok(false),
            Err(e) => Err(e),
        }
    }
}

/// (type, seq, body) of each netlink message in one datagram.
pub fn messages(d: &[u8]) -> impl Iterator<Item = (u16, u32, &[u8])> {
    let mut off = 0;
    std::iter::from_fn(move || {
        let h = d.get(off..off + HDR)?;
        let len = u32::from_ne_bytes(h[0..4].try_into().unwrap()) as usize;
        let ty = u16::from_ne_bytes(h[4..6].try_into().unwrap());
        let seq = u32::from_ne_bytes(h[8..12].try_into().unwrap());
        if len < HDR {
            return None;
        }
        let body = d.get(off + HDR..(off + len).min(d.len()))?;
        off += (len + 3) & !3;
        Some((ty, seq, body))
    })
}

const AUDIT_FILTER_TASK: u32 = 1;
const AUDIT_NEVER: u32 = 0;
const AUDIT_GID: u32 = 5;
const AUDIT_FILTERKEY: u32 = 210;
const AUDIT_NOT_EQUAL: u32 = 0x3000_0000;
const AUDIT_EQUAL: u32 = 0x4000_0000;
const AUDIT_BITMASK_SIZE: usize = 64;
pub const RULE_KEY: &[u8] = b"corral";

/// `-a task,never -F gid!=GID -k corral`: a process forked by a task that
/// is not in group `gid` (primary or supplementary, which the kernel
/// checks for `gid`) gets no audit context, so enabling audit costs the
/// host's syscalls nothing; agents launched in the group keep one, and
/// their Landlock records arrive with a SYSCALL record naming the process.
pub fn task_never_unless_gid(gid: u32) -> Vec<u8> {
    let mut fields = [0u32; AUDIT_BITMASK_SIZE];
    let mut values = [0u32; AUDIT_BITMASK_SIZE];
    let mut ops = [0u32; AUDIT_BITMASK_SIZE];
    (fields[0], values[0], ops[0]) = (AUDIT_GID, gid, AUDIT_NOT_EQUAL);
    (fields[1], values[1], ops[1]) = (AUDIT_FILTERKEY, RULE_KEY.len() as u32, AUDIT_EQUAL);
    let mut b = Vec::new();
    for v in [AUDIT_FILTER_TASK, AUDIT_NEVER, 2] {
        b.extend_from_slice(&v.to_ne_bytes());
    }
    let words = [u32::MAX; AUDIT_BITMASK_SIZE];
    for arr in [&words, &fields, &values, &ops] {
        arr.iter()
            .for_each(|v| b.extend_from_slice(&v.to_ne_bytes()));
    }
    b.extend_from_slice(&(RULE_KEY.len() as u32).to_ne_bytes());
    b.extend_from_slice(RULE_KEY);
    b
}

/// A socket on the multicast log group (needs CAP_AUDIT_READ, and the
/// initial network namespace: records are sent only there), with a big
/// receive buffer and a filter that lets only the record types the
/// observer reads into it (an auditd host's own rules can be chatty).
pub fn listener() -> io::Result<OwnedFd> {
    let fd = socket(AUDIT_NLGRP_READLOG)?;
    let size: i32 = 8 << 20;
    if setsockopt(&fd, libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, &size).is_err() {
        setsockopt(&fd, libc::SOL_SOCKET, libc::SO_RCVBUF, &size)?;
    }
    let prog = type_filter(&[
        AUDIT_LANDLOCK_ACCESS,
        AUDIT_LANDLOCK_DOMAIN,
        AUDIT_SYSCALL,
        AUDIT_PATH,
        AUDIT_CWD,
        AUDIT_EOE,
    ]);
    let fprog = libc::sock_fprog {
        len: prog.len() as u16,
        filter: prog.as_ptr().cast_mut(),
    };
    setsockopt(&fd, libc::SOL_SOCKET, libc::SO_ATTACH_FILTER, &fprog)?;
    Ok(fd)
}

/// Accepts a datagram whose first message has one of `types`. Classic BPF
/// loads halfwords in network order; the header is in host order.
fn type_filter(types: &[u16]) -> Vec<libc::sock_filter> {
    use crate::sandbox::cbpf::{JEQ_K, RET_K, ins};
    let ld_h = (libc::BPF_LD | libc::BPF_H | libc::BPF_ABS) as u16;
    let mut p = vec![ins(ld_h, 4, 0, 0)];
    for (i, t) in types.iter().enumerate() {
        let wire = u16::from_be_bytes(t.to_ne_bytes()) as u32;
        let to_accept = (types.len() - i) as u8;
        p.push(ins(JEQ_K, wire, to_accept, 0));
    }
    p.push(ins(RET_K, 0, 0, 0));
    p.push(ins(RET_K, u32::MAX, 0, 0));
    p
}

/// Waits up to `timeout` for the socket to be readable.
pub fn wait_readable(fd: &OwnedFd, timeout: Duration) -> bool {
    let mut p = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd.
    unsafe { libc::poll(&mut p, 1, timeout.as_millis() as i32) > 0 }
}

/// One datagram, non-blocking: `Ok(None)` when nothing is queued.
pub fn recv(fd: &OwnedFd, buf: &mut [u8]) -> io::Result<Option<usize>> {
    // SAFETY: a valid buffer of the size given.
    let n = unsafe {
        libc::recv(
            fd.as_raw_fd(),
            buf.as_mut_ptr().cast(),
            buf.len(),
            libc::MSG_DONTWAIT,
        )
    };
    if n < 0 {
        let e = io::Error::last_os_error();
        return match e.raw_os_error() {
            Some(libc::EAGAIN) => Ok(None),
            _ => Err(e),
        };
    }
    Ok(Some(n as usize))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rule_layout_matches_audit_rule_data() {
        let r = task_never_unless_gid(7);
        assert_eq!(r.len(), 12 + 4 * 64 * 4 + 4 + RULE_KEY.len());
        assert_eq!(u32::from_ne_bytes(r[8..12].try_into().unwrap()), 2);
    }

    #[test]
    fn filter_jumps_land_on_accept() {
        let p = type_filter(&[1, 2, 3]);
        for (i, ins) in p.iter().enumerate().skip(1).take(3) {
            assert_eq!(i + 1 + ins.jt as usize, p.len() - 1);
        }
    }
}
