//! Who is calling on the agent socket, as the kernel says (never as the
//! caller claims): peer process → pidfd → cgroup → identity.
//!
//! The pattern is SPIRE's peertracker, with a pidfd:
//! 1. At accept, take a pidfd for the peer: `SO_PEERPIDFD` (Linux 6.5+)
//!    refers to the very process that called connect(), even if its pid has
//!    been reused since; older kernels fall back to `SO_PEERCRED`'s pid and
//!    `pidfd_open` at once.
//! 2. Per request, read `/proc/<pid>/stat` (start time) and
//!    `/proc/<pid>/cgroup`, then check that the pidfd's process is still
//!    alive and that the start time did not change. A live pidfd process
//!    owns its pid, so what was read is that process's.
//! 3. The process must have started no later than the connection was
//!    accepted: a pid reused between connect and the fallback's
//!    `pidfd_open` belongs to a process that started later.
//!
//! A peer that exited (leaving the socket to a child, or just gone) is
//! refused, whatever now holds its pid.

use std::{
    fs,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd, RawFd},
};

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum AttestError {
    #[error("cannot read the caller's credentials: {0}")]
    Creds(String),
    #[error("the calling process (pid {0}) has exited; a lease is only issued to a live caller")]
    Exited(u32),
    #[error("pid {0} was reused after the connection (process started after it): refused")]
    Reused(u32),
    #[error("cannot read /proc/{0}: {1}")]
    Proc(u32, String),
}

/// The peer of one agent-socket connection, pinned at accept.
#[derive(Debug)]
pub struct Peer {
    pub pidfd: OwnedFd,
    pub pid: u32,
    pub uid: u32,
    /// `CLOCK_BOOTTIME` clock ticks when the connection was accepted.
    pub accepted_ticks: u64,
    /// `SO_PEERPIDFD` or `pidfd_open`.
    pub via: &'static str,
}

/// What one request's attestation found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attested {
    pub pid: u32,
    pub uid: u32,
    /// The caller's cgroup, relative to the cgroup v2 root (`/corral/x`).
    pub cgroup: String,
    pub start_ticks: u64,
    pub exe: Option<String>,
}

const SO_PEERPIDFD: libc::c_int = 77;

fn ticks_per_sec() -> u64 {
    // SAFETY: plain libc call.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 { t as u64 } else { 100 }
}

/// `CLOCK_BOOTTIME` in clock ticks: the unit of a process start time.
pub fn boot_ticks() -> u64 {
    crate::clock::boot_ns() / (1_000_000_000 / ticks_per_sec())
}

fn pidfd_open(pid: u32) -> std::io::Result<OwnedFd> {
    // SAFETY: plain syscall; a returned fd is ours.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a fresh fd from the kernel.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// Whether the pidfd's process is still alive (signal 0: no signal sent).
pub fn alive(pidfd: &OwnedFd) -> bool {
    // SAFETY: plain syscall, null siginfo.
    let r = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            0,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    };
    // EPERM means it exists but we may not signal it (we are root: unusual).
    r == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

/// Pins the peer of a freshly accepted unix stream.
pub fn peer_of(sock: RawFd) -> Result<Peer, AttestError> {
    let accepted_ticks = boot_ticks();
    let mut cred = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `cred`.
    let r = unsafe {
        libc::getsockopt(
            sock,
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&raw mut cred).cast(),
            &mut len,
        )
    };
    if r != 0 || cred.pid <= 0 {
        return Err(AttestError::Creds(
            std::io::Error::last_os_error().to_string(),
        ));
    }
    let pid = cred.pid as u32;
    let mut fd: libc::c_int = -1;
    let mut len = size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: getsockopt writes one int.
    let r = unsafe {
        libc::getsockopt(
            sock,
            libc::SOL_SOCKET,
            SO_PEERPIDFD,
            (&raw mut fd).cast(),
            &mut len,
        )
    };
    let (pidfd, via) = if r == 0 && fd >= 0 {
        // SAFETY: a fresh fd from the kernel.
        (unsafe { OwnedFd::from_raw_fd(fd) }, "SO_PEERPIDFD")
    } else {
        match pidfd_open(pid) {
            Ok(fd) => (fd, "pidfd_open"),
            Err(_) => return Err(AttestError::Exited(pid)),
        }
    };
    Ok(Peer {
        pidfd,
        pid,
        uid: cred.uid,
        accepted_ticks,
        via,
    })
}

/// Start time (field 22 of `/proc/<pid>/stat`, clock ticks since boot).
fn start_ticks(pid: u32) -> Result<u64, AttestError> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat"))
        .map_err(|e| AttestError::Proc(pid, e.to_string()))?;
    // The command name may hold spaces and parens: fields start after the
    // last ')'. Field 3 (state) is the first after it, so 22 is index 19.
    stat.rsplit_once(')')
        .and_then(|(_, rest)| rest.split_whitespace().nth(19))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| AttestError::Proc(pid, "unparsable stat".into()))
}

fn cgroup_of(pid: u32) -> Result<String, AttestError> {
    crate::cgroup::of_pid(pid).map_err(|e| AttestError::Proc(pid, e.to_string()))
}

/// The facts read for one attestation, and the checks made on them.
#[derive(Debug, Clone, Copy)]
pub struct Checks {
    pub start_before: u64,
    pub start_after: u64,
    pub alive_after: bool,
    pub accepted_ticks: u64,
}

/// The decision, apart from the reading (unit-tested on its own).
pub fn judge(pid: u32, c: Checks) -> Result<(), AttestError> {
    if !c.alive_after {
        return Err(AttestError::Exited(pid));
    }
    if c.start_before != c.start_after || c.start_before > c.accepted_ticks {
        return Err(AttestError::Reused(pid));
    }
    Ok(())
}

/// Attests one request of `peer`'s connection.
pub fn attest(peer: &Peer) -> Result<Attested, AttestError> {
    if !alive(&peer.pidfd) {
        return Err(AttestError::Exited(peer.pid));
    }
    let pid = peer.pid;
    let map_gone = |e: AttestError| match e {
        // /proc/<pid> vanished: the process exited meanwhile.
        AttestError::Proc(..) if !alive(&peer.pidfd) => AttestError::Exited(pid),
        e => e,
    };
    let start_before = start_ticks(pid).map_err(map_gone)?;
    let cgroup = cgroup_of(pid).map_err(map_gone)?;
    let exe = fs::read_link(format!("/proc/{pid}/exe"))
        .ok()
        .map(|p| p.display().to_string());
    let alive_after = alive(&peer.pidfd);
    let start_after = if alive_after {
        start_ticks(pid).map_err(map_gone)?
    } else {
        0
    };
    judge(
        pid,
        Checks {
            start_before,
            start_after,
            alive_after,
            accepted_ticks: peer.accepted_ticks,
        },
    )?;
    Ok(Attested {
        pid,
        uid: peer.uid,
        cgroup,
        start_ticks: start_before,
        exe,
    })
}

#[cfg(test)]
mod tests {
    use std::{os::unix::net::UnixStream, process::Command};

    use super::*;

    #[test]
    fn attests_the_peer_of_a_socket() {
        let (a, _b) = UnixStream::pair().expect("pair");
        let peer = peer_of(a.as_raw_fd()).expect("peer");
        assert_eq!(peer.pid, std::process::id());
        let at = attest(&peer).expect("attested");
        assert_eq!(
            at.cgroup,
            crate::cgroup::of_pid(std::process::id()).unwrap()
        );
    }

    fn peer_for(child: &std::process::Child, accepted_ticks: u64) -> Peer {
        Peer {
            pidfd: pidfd_open(child.id()).expect("pidfd"),
            pid: child.id(),
            uid: 0,
            accepted_ticks,
            via: "pidfd_open",
        }
    }

    #[test]
    fn exited_peer_is_refused_whatever_holds_its_pid() {
        let mut child = Command::new("sleep").arg("30").spawn().expect("sleep");
        let peer = peer_for(&child, boot_ticks());
        assert!(attest(&peer).is_ok());
        child.kill().expect("kill");
        child.wait().expect("reap");
        // Reaped: its pid is free for reuse, but the pidfd still names the
        // dead process.
        assert_eq!(attest(&peer), Err(AttestError::Exited(peer.pid)));
    }

    #[test]
    fn process_started_after_the_connection_is_refused() {
        let mut child = Command::new("sleep").arg("30").spawn().expect("sleep");
        let start = start_ticks(child.id()).expect("start");
        // As if the connection had been accepted before this process
        // existed: its pid was reused.
        let peer = peer_for(&child, start.saturating_sub(1));
        assert_eq!(attest(&peer), Err(AttestError::Reused(child.id())));
        child.kill().ok();
        child.wait().ok();
    }

    #[test]
    fn judge_rechecks() {
        let ok = Checks {
            start_before: 10,
            start_after: 10,
            alive_after: true,
            accepted_ticks: 10,
        };
        assert_eq!(judge(1, ok), Ok(()));
        let dead = Checks {
            alive_after: false,
            ..ok
        };
        assert_eq!(judge(1, dead), Err(AttestError::Exited(1)));
        let changed = Checks {
            start_after: 11,
            ..ok
        };
        assert_eq!(judge(1, changed), Err(AttestError::Reused(1)));
        let late = Checks {
            start_before: 11,
            start_after: 11,
            ..ok
        };
        assert_eq!(judge(1, late), Err(AttestError::Reused(1)));
    }
}
