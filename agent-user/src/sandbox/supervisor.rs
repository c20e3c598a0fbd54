//! Answering the child's seccomp notifications from the live policy.
//!
//! The launcher (`corral run`) stays outside the identity's cgroup as the
//! child's parent. A thread of it takes the filter's listener fd from the
//! child and answers each notification from the identity's value in the
//! pinned `SYSCALL_POLICY` map, read with `BPF_MAP_LOOKUP_ELEM` on an fd
//! from `BPF_OBJ_GET`: no daemon round trip, and a daemon restart does not
//! disturb it. Decisions are by syscall number (and `socket`'s family, a
//! value). An allowed call continues in the kernel
//! (`SECCOMP_USER_NOTIF_FLAG_CONTINUE`); a refused one fails with EPERM.
//!
//! The listener changes hands without a syscall from the child once its
//! filter is installed: every such syscall is already judged by the filter,
//! and one that is notified would wait for a supervisor that has no
//! listener yet (a `sendmsg` of the fd over a socketpair deadlocks unless
//! the filter allows `sendmsg` to everyone). The child writes its pid and
//! the listener's fd number into a shared page (memory stores only); the
//! supervisor copies the fd with `pidfd_getfd` while the child waits in its
//! first notified syscall (`execve` is never allowed by the filter itself).
//!
//! Every call it refuses or audits is reported to the daemon (`report`).
//! If this process dies, every notified syscall of the child fails with
//! ENOSYS: closed, never open (and the daemon's observers report those).

use std::{
    ffi::CString,
    io,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd, RawFd},
    path::{Path, PathBuf},
    sync::atomic::{AtomicI32, AtomicU32, Ordering},
    time::{Duration, Instant},
};

use agent_common::{
    event::{REASON_DENY_RULE, REASON_NO_RULE, REASON_PROTECTED, VERDICT_AUDIT, VERDICT_DENY},
    identity::MODE_AUDIT,
    syscall::{
        BITMAP_BITS, LAYER_KERNEL, LAYER_NOTIFY, NR_IA32_FLAG, NR_IOCTL, NR_SECCOMP,
        SECCOMP_FILTER_FLAG_NEW_LISTENER, SyscallPolicy, X32_SYSCALL_BIT,
    },
};

use super::report::{Decision, Reporter};

/// `SECCOMP_IOCTL_NOTIF_SET_FLAGS` flag: wake the target on the answering
/// CPU (Linux 6.6+; ≈2.7 µs per notified syscall here instead of ≈48).
const SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP: u64 = 1;

const BPF_MAP_LOOKUP_ELEM: libc::c_long = 1;
const BPF_OBJ_GET: libc::c_long = 7;
const BPF_F_RDONLY: u32 = 1 << 3;

#[repr(C)]
#[derive(Default)]
struct ObjGetAttr {
    pathname: u64,
    bpf_fd: u32,
    file_flags: u32,
    path_fd: i32,
    _pad: u32,
}

#[repr(C)]
struct LookupAttr {
    map_fd: u32,
    _pad: u32,
    key: u64,
    value: u64,
    flags: u64,
}

/// `SYSCALL_POLICY`, opened read-only through its pin.
pub struct PolicyMap {
    path: PathBuf,
    fd: OwnedFd,
    /// When the pin was last opened (re-opened at most once a second when
    /// the identity's value is missing: a daemon may have re-created it).
    opened: Instant,
}

impl PolicyMap {
    pub fn open(path: &Path) -> io::Result<PolicyMap> {
        Ok(PolicyMap {
            path: path.to_path_buf(),
            fd: obj_get(path)?,
            opened: Instant::now(),
        })
    }

    /// The identity's value, `None` when it has none.
    pub fn lookup(&self, id: u32) -> io::Result<Option<SyscallPolicy>> {
        let mut value = SyscallPolicy::empty();
        let attr = LookupAttr {
            map_fd: self.fd.as_raw_fd() as u32,
            _pad: 0,
            key: &id as *const u32 as u64,
            value: &mut value as *mut SyscallPolicy as u64,
            flags: 0,
        };
        // SAFETY: `attr` points at a live key and a value buffer of the
        // map's value size (checked in `open_checked`).
        let r = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_MAP_LOOKUP_ELEM,
                &attr as *const LookupAttr,
                size_of::<LookupAttr>(),
            )
        };
        if r == 0 {
            return Ok(Some(value));
        }
        let e = io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::ENOENT) {
            Ok(None)
        } else {
            Err(e)
        }
    }

    fn reopen_if_stale(&mut self) {
        if self.opened.elapsed() < Duration::from_secs(1) {
            return;
        }
        self.opened = Instant::now();
        if let Ok(fd) = obj_get(&self.path) {
            self.fd = fd;
        }
    }
}

/// A pinned map, read-only (`BPF_F_RDONLY`) unless `write`.
pub(super) fn obj_get_rw(path: &Path, write: bool) -> io::Result<OwnedFd> {
    let c = CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in the pin path"))?;
    let attr = ObjGetAttr {
        pathname: c.as_ptr() as u64,
        file_flags: if write { 0 } else { BPF_F_RDONLY },
        ..Default::default()
    };
    // SAFETY: `attr` points at a NUL-terminated path alive for the call.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_OBJ_GET,
            &attr as *const ObjGetAttr,
            size_of::<ObjGetAttr>(),
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh fd the kernel just returned to us.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

fn obj_get(path: &Path) -> io::Result<OwnedFd> {
    obj_get_rw(path, false)
}

/// Who the supervisor answers for.
pub struct Supervisor {
    pub map: PolicyMap,
    pub identity_id: u32,
    pub name: [u8; agent_common::identity::IDENTITY_NAME_LEN],
    pub reporter: Reporter,
}

/// What the launcher answers to one notification, and what it reports.
struct Verdict {
    /// `0` (continue) or `-EPERM`.
    error: i32,
    report: Option<(u32, u32, u32)>,
}

impl Verdict {
    fn allow() -> Verdict {
        Verdict {
            error: 0,
            report: None,
        }
    }

    /// Refused, reported as (`layer`, `reason`).
    fn refuse(layer: u32, reason: u32) -> Verdict {
        Verdict {
            error: -libc::EPERM,
            report: Some((VERDICT_DENY, layer, reason)),
        }
    }
}

impl Supervisor {
    fn current(&mut self) -> Option<SyscallPolicy> {
        let mut v = self.map.lookup(self.identity_id);
        if !matches!(&v, Ok(Some(p)) if p.name == self.name) {
            // Missing, unreadable or someone else's: the daemon may have
            // re-created the map; look again before refusing.
            self.map.reopen_if_stale();
            v = self.map.lookup(self.identity_id);
        }
        match v {
            Ok(Some(p)) if p.name == self.name => Some(p),
            _ => None,
        }
    }

    /// The answer to one notification: `0` (continue) or `-EPERM`.
    pub fn decide(&mut self, nr: u32, args: &[u64; 3]) -> i32 {
        match self.current() {
            Some(p) if p.allows(nr, args) || p.mode == MODE_AUDIT => 0,
            // The identity is gone or the map unreadable: closed.
            _ => -libc::EPERM,
        }
    }

    /// Judges one notified call (`arch`, raw number, first arguments) and
    /// reports it; the layer is the one the observers used to name: what
    /// the launch-time filter refused in the kernel before it notified
    /// (wrong ABI, `deny` entries, the listener flag of `seccomp()`,
    /// terminal injection) is `kernel`, the rest `notify`.
    fn judge(&mut self, tid: u32, arch: u32, raw: u32, args: [u64; 3]) -> i32 {
        let Some(p) = self.current() else {
            return -libc::EPERM;
        };
        let ia32 = arch != super::seccomp::AUDIT_ARCH_X86_64;
        let x32 = !ia32 && raw & X32_SYSCALL_BIT != 0;
        let nr = if ia32 { raw | NR_IA32_FLAG } else { raw };
        let reason = |n: u32| {
            if n < BITMAP_BITS && p.denied_bit(n) {
                REASON_DENY_RULE
            } else {
                REASON_NO_RULE
            }
        };
        let v = if ia32 || x32 {
            Verdict::refuse(LAYER_KERNEL, REASON_NO_RULE)
        } else if raw == NR_IOCTL && super::terminal::REFUSED.contains(&(args[1] as u32)) {
            Verdict::refuse(LAYER_KERNEL, REASON_PROTECTED)
        } else if raw == NR_SECCOMP && args[1] & SECCOMP_FILTER_FLAG_NEW_LISTENER != 0 {
            Verdict::refuse(LAYER_KERNEL, reason(raw))
        } else if p.mode != MODE_AUDIT && raw < BITMAP_BITS && p.denied_bit(raw) {
            Verdict::refuse(LAYER_KERNEL, REASON_DENY_RULE)
        } else if p.allows(raw, &args) {
            Verdict::allow()
        } else if p.mode == MODE_AUDIT {
            let tgid = tgid_of(tid);
            if self.reporter.first_audit(tgid, raw, p.generation) {
                Verdict {
                    error: 0,
                    report: Some((VERDICT_AUDIT, LAYER_NOTIFY, reason(raw))),
                }
            } else {
                Verdict::allow()
            }
        } else {
            Verdict::refuse(LAYER_NOTIFY, reason(raw))
        };
        if let Some((verdict, layer, reason)) = v.report {
            self.reporter.report(
                tid,
                &Decision {
                    identity: self.identity_id,
                    mode: p.mode,
                    verdict,
                    reason,
                    nr,
                    layer,
                    errno: (-v.error) as u32,
                    args,
                },
            );
        }
        v.error
    }

    /// Takes the listener from the child, then answers notifications until
    /// this process exits. If the listener cannot be taken the child is
    /// killed: it would otherwise wait forever in its first notified call.
    pub fn run(mut self, handshake: &Handshake) {
        let listener = match handshake.take() {
            Ok(fd) => fd,
            Err((pid, e)) => {
                eprintln!("corral run: cannot take the child's seccomp listener: {e}");
                if pid > 0 {
                    // SAFETY: plain syscall on our own child.
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                }
                return;
            }
        };
        let flags = SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP;
        // SAFETY: ioctl on our listener fd with a plain integer argument.
        unsafe {
            libc::ioctl(
                listener.as_raw_fd(),
                libc::SECCOMP_IOCTL_NOTIF_SET_FLAGS,
                flags,
            );
        }
        loop {
            if self.reporter.pending() {
                // Reports wait for a daemon: retry once a second while
                // still answering at once.
                let mut pfd = libc::pollfd {
                    fd: listener.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                };
                // SAFETY: one valid pollfd on our stack.
                let n = unsafe { libc::poll(&mut pfd, 1, 1000) };
                if n == 0 {
                    self.reporter.flush();
                    continue;
                }
                if pfd.revents & (libc::POLLHUP | libc::POLLERR) != 0 {
                    self.reporter.flush();
                    return;
                }
            }
            // SAFETY: the kernel requires a zeroed struct; all-zero is valid.
            let mut req: libc::seccomp_notif = unsafe { std::mem::zeroed() };
            // SAFETY: `req` is a valid seccomp_notif for the kernel to fill.
            let r = unsafe {
                libc::ioctl(
                    listener.as_raw_fd(),
                    libc::SECCOMP_IOCTL_NOTIF_RECV,
                    &mut req as *mut libc::seccomp_notif,
                )
            };
            if r != 0 {
                match io::Error::last_os_error().raw_os_error() {
                    // The target died or was interrupted; try the next one.
                    Some(libc::ENOENT) | Some(libc::EINTR) => continue,
                    _ => return,
                }
            }
            self.respond(listener.as_raw_fd(), &req);
        }
    }

    /// Judges one notified call and answers it: continue, or its errno.
    fn respond(&mut self, listener: RawFd, req: &libc::seccomp_notif) {
        let args = [req.data.args[0], req.data.args[1], req.data.args[2]];
        let error = self.judge(req.pid, req.data.arch, req.data.nr as u32, args);
        let resp = libc::seccomp_notif_resp {
            id: req.id,
            val: 0,
            error,
            flags: if error == 0 {
                libc::SECCOMP_USER_NOTIF_FLAG_CONTINUE as u32
            } else {
                0
            },
        };
        // SAFETY: `resp` is a valid seccomp_notif_resp. ENOENT (the
        // target is gone or was interrupted) needs nothing from us.
        unsafe {
            libc::ioctl(
                listener,
                libc::SECCOMP_IOCTL_NOTIF_SEND,
                &resp as *const libc::seccomp_notif_resp,
            );
        }
    }
}

fn tgid_of(tid: u32) -> u32 {
    std::fs::read_to_string(format!("/proc/{tid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Tgid:"))
                .and_then(|v| v.trim().parse().ok())
        })
        .unwrap_or(tid)
}

/// The page the child publishes its listener through.
#[repr(C)]
struct Shared {
    /// 0: nothing yet; 1: `pid` and `fd` are set.
    state: AtomicU32,
    pid: AtomicI32,
    fd: AtomicI32,
}

/// A page shared by the launcher and its child (`MAP_SHARED`, so the
/// child's stores after fork are seen by the parent). Never unmapped: it
/// lives as long as the launcher.
pub struct Handshake {
    shared: &'static Shared,
}

impl Handshake {
    pub fn new() -> io::Result<Handshake> {
        // SAFETY: a fresh anonymous shared mapping of one page; zeroed by
        // the kernel, which is a valid `Shared`.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                4096,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: the mapping is page-aligned, zeroed, never unmapped.
        Ok(Handshake {
            shared: unsafe { &*p.cast::<Shared>() },
        })
    }

    /// In the child, after the filter is installed: memory stores only.
    pub fn publish(&self, pid: i32, fd: RawFd) {
        self.shared.pid.store(pid, Ordering::Relaxed);
        self.shared.fd.store(fd, Ordering::Relaxed);
        self.shared.state.store(1, Ordering::Release);
    }

    /// In the parent: waits for the child's listener and copies it. On
    /// error returns the child's pid (0 when unknown) with the cause.
    pub fn take(&self) -> Result<OwnedFd, (i32, io::Error)> {
        let start = Instant::now();
        while self.shared.state.load(Ordering::Acquire) != 1 {
            // The child is between fork and exec; it publishes in well
            // under a millisecond, or fails and the launcher exits.
            let wait = if start.elapsed() < Duration::from_millis(5) {
                20
            } else {
                500
            };
            std::thread::sleep(Duration::from_micros(wait));
        }
        let pid = self.shared.pid.load(Ordering::Relaxed);
        let fd = self.shared.fd.load(Ordering::Relaxed);
        // SAFETY: plain syscalls; the returned fds are fresh and ours.
        unsafe {
            let pidfd = libc::syscall(libc::SYS_pidfd_open, pid, 0);
            if pidfd < 0 {
                return Err((pid, io::Error::last_os_error()));
            }
            let pidfd = OwnedFd::from_raw_fd(pidfd as RawFd);
            let got = libc::syscall(libc::SYS_pidfd_getfd, pidfd.as_raw_fd(), fd, 0);
            if got < 0 {
                return Err((pid, io::Error::last_os_error()));
            }
            Ok(OwnedFd::from_raw_fd(got as RawFd))
        }
    }
}

// SAFETY: `Shared` is atomics only.
unsafe impl Send for Handshake {}
// SAFETY: as above.
unsafe impl Sync for Handshake {}

#[cfg(test)]
mod tests {
    use super::*;

    /// A forked child publishes an fd without any syscall after it; the
    /// parent copies it (needs CAP_SYS_PTRACE or the same uid: root here).
    #[test]
    fn handshake_hands_over_an_fd() {
        let h = Handshake::new().expect("mmap");
        let file = std::fs::File::open("/proc/self/status").expect("open");
        // SAFETY: the child only stores to memory and sleeps, then exits.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0);
        if pid == 0 {
            // SAFETY: async-signal-safe calls only.
            unsafe {
                h.publish(libc::getpid(), file.as_raw_fd());
                libc::sleep(5);
                libc::_exit(0);
            }
        }
        let got = h.take();
        // SAFETY: plain syscalls on our own child.
        unsafe {
            libc::kill(pid, libc::SIGKILL);
            libc::waitpid(pid, std::ptr::null_mut(), 0);
        }
        let fd = got.map_err(|(_, e)| e).expect("pidfd_getfd");
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: fstat on an fd we own.
        assert_eq!(unsafe { libc::fstat(fd.as_raw_fd(), &mut st) }, 0);
    }
}
