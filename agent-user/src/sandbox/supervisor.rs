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
//! If this process dies, every notified syscall of the child fails with
//! ENOSYS: closed, never open.

use std::{
    ffi::CString,
    io,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd, RawFd},
    path::{Path, PathBuf},
    sync::atomic::{AtomicI32, AtomicU32, Ordering},
    time::{Duration, Instant},
};

use agent_common::{identity::MODE_AUDIT, syscall::SyscallPolicy};

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
}

impl Supervisor {
    /// The answer to one notification: `0` (continue) or `-EPERM`.
    pub fn decide(&mut self, nr: u32, args: &[u64; 3]) -> i32 {
        let mut v = self.map.lookup(self.identity_id);
        if !matches!(&v, Ok(Some(p)) if p.name == self.name) {
            // Missing, unreadable or someone else's: the daemon may have
            // re-created the map; look again before refusing.
            self.map.reopen_if_stale();
            v = self.map.lookup(self.identity_id);
        }
        match v {
            Ok(Some(p)) if p.name == self.name => {
                if p.allows(nr, args) || p.mode == MODE_AUDIT {
                    0
                } else {
                    -libc::EPERM
                }
            }
            // The identity is gone or the map unreadable: closed.
            _ => -libc::EPERM,
        }
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
            let nr = req.data.nr as u32;
            let args = [req.data.args[0], req.data.args[1], req.data.args[2]];
            let error = if req.data.arch == super::seccomp::AUDIT_ARCH_X86_64 {
                self.decide(nr, &args)
            } else {
                -libc::EPERM
            };
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
                    listener.as_raw_fd(),
                    libc::SECCOMP_IOCTL_NOTIF_SEND,
                    &resp as *const libc::seccomp_notif_resp,
                );
            }
        }
    }
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
