//! The launcher's mark in `SC_LAUNCHERS`: what tells the syscall observers
//! that a tagged process with a seccomp filter runs under Corral's filter
//! (a parent of it is a registered launcher), and not under one it
//! installed itself to pass for a launched agent and escape `assigned =
//! "kill"`. Registered before the child starts; left in place when the
//! launcher exits (the daemon removes the marks of launchers that died,
//! after their last reports had time to arrive). The entry holds the
//! identity launched and the launcher's start time, which the kernel side
//! compares: a process later given a dead launcher's pid vouches for
//! nobody. The key is the pid as the outermost pid namespace this process
//! can see names it; a launcher inside a pid namespace of its own is then
//! not found, and its agents count as assigned (fail closed).

use std::{
    io,
    os::fd::{AsRawFd as _, OwnedFd},
    path::Path,
};

use agent_common::syscall::LauncherEntry;

const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;

#[repr(C)]
struct ElemAttr {
    map_fd: u32,
    _pad: u32,
    key: u64,
    value: u64,
    flags: u64,
}

pub struct LauncherMark {
    /// Held for the launcher's life: the map stays reachable as long as
    /// the launcher runs, whatever happens to its pin.
    _map: OwnedFd,
}

fn bpf(cmd: libc::c_long, attr: &ElemAttr) -> io::Result<()> {
    // SAFETY: `attr` points at a live key and value of the map's sizes
    // (u32, u32) for the duration of the call.
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *const ElemAttr,
            size_of::<ElemAttr>(),
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

impl LauncherMark {
    /// Registers this process as the launcher of `identity_id`, whose
    /// filter is compiled from the policy of `generation`.
    pub fn register(
        map_path: &Path,
        identity_id: u32,
        generation: u32,
    ) -> io::Result<LauncherMark> {
        let map = super::supervisor::obj_get_rw(map_path, true)?;
        let tgid = outer_tgid().unwrap_or_else(std::process::id);
        let entry = LauncherEntry {
            identity: identity_id,
            generation,
            start_ticks: start_ticks(tgid)
                .ok_or_else(|| io::Error::other("cannot read this process's start time"))?,
        };
        bpf(
            BPF_MAP_UPDATE_ELEM,
            &ElemAttr {
                map_fd: map.as_raw_fd() as u32,
                _pad: 0,
                key: &tgid as *const u32 as u64,
                value: &entry as *const LauncherEntry as u64,
                flags: 0,
            },
        )?;
        Ok(LauncherMark { _map: map })
    }
}

// No Drop that removes the mark: a launcher exits right after its agent,
// often before the daemon has read its last reports, which it vouches for
// by this mark. The daemon removes the marks of dead launchers (at apply,
// and every 30 s); a later process with the same pid has another start
// time, so a stale mark never vouches for it.

/// This process's pid in the outermost pid namespace `/proc` shows
/// (`NStgid`'s first entry).
fn outer_tgid() -> Option<u32> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("NStgid:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Start time of process `tgid` in clock ticks since boot (`/proc/PID/stat`
/// field 22), `None` when it does not exist.
pub fn start_ticks(tgid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{tgid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

#[cfg(test)]
mod tests {
    #[test]
    fn reads_its_own_start_time() {
        let me = std::process::id();
        assert!(super::start_ticks(me).is_some());
        assert_eq!(super::outer_tgid(), Some(me));
        assert_eq!(super::start_ticks(u32::MAX), None);
    }
}
