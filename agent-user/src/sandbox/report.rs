//! The launcher's reports to the daemon: every syscall it refuses or audits,
//! as the same `SyscallEvent` record the kernel observers write, sent as one
//! datagram each to the daemon's report socket (`daemon::reports`).
//!
//! This is what lets the observers stay detached for launched agents: the
//! launcher sees every call its filter does not allow in the kernel (deny
//! entries, 32-bit/x32 calls and terminal injection included, all notified).
//!
//! While no daemon listens (restart, upgrade) reports wait in a bounded
//! queue and are sent once one does; past `QUEUE_MAX` the newest are
//! dropped and counted, and the count travels with the next report that
//! gets through (the daemon turns it into a `lost` event).

use std::{
    collections::{HashSet, VecDeque},
    io,
    os::unix::net::UnixDatagram,
    path::PathBuf,
};

use agent_common::{
    event::{COMM_LEN, EventHeader, KIND_SYSCALL},
    syscall::{LAUNCHER_REPORT_MAGIC, LauncherReport, SyscallEvent},
};

/// Reports kept while the daemon is away.
pub const QUEUE_MAX: usize = 4096;

/// What one report says besides who made the call.
pub struct Decision {
    pub identity: u32,
    pub mode: u32,
    pub verdict: u32,
    pub reason: u32,
    pub nr: u32,
    pub layer: u32,
    pub errno: u32,
    pub args: [u64; 3],
}

pub struct Reporter {
    socket: Option<PathBuf>,
    sock: Option<UnixDatagram>,
    queue: VecDeque<LauncherReport>,
    lost: u32,
    /// (tgid, nr, policy generation) already audited: audits are reported
    /// once per process, syscall and policy, like the observers did.
    audited: HashSet<(u32, u32, u32)>,
}

impl Reporter {
    /// `socket`: the daemon's report socket (`None`: an older daemon that
    /// has none; reports are then dropped and counted).
    pub fn new(socket: Option<PathBuf>) -> Reporter {
        Reporter {
            socket,
            sock: UnixDatagram::unbound().ok(),
            queue: VecDeque::new(),
            lost: 0,
            audited: HashSet::new(),
        }
    }

    /// First audit of `nr` by `tgid` under `generation`?
    pub fn first_audit(&mut self, tgid: u32, nr: u32, generation: u32) -> bool {
        if self.audited.len() > 65536 {
            self.audited.clear();
        }
        self.audited.insert((tgid, nr, generation))
    }

    /// Queues the report of a call by thread `tid`, then sends what it can.
    pub fn report(&mut self, tid: u32, d: &Decision) {
        let ev = event(tid, d);
        if self.queue.len() >= QUEUE_MAX {
            self.lost = self.lost.saturating_add(1);
        } else {
            self.queue.push_back(LauncherReport {
                magic: LAUNCHER_REPORT_MAGIC,
                lost: 0,
                event: ev,
            });
        }
        self.flush();
    }

    pub fn pending(&self) -> bool {
        !self.queue.is_empty()
    }

    /// Sends queued reports in order; stops at the first that the socket
    /// refuses (no daemon, or its queue is full) and keeps it for later.
    pub fn flush(&mut self) {
        let (Some(sock), Some(path)) = (&self.sock, &self.socket) else {
            self.lost = self.lost.saturating_add(self.queue.len() as u32);
            self.queue.clear();
            return;
        };
        while let Some(r) = self.queue.front_mut() {
            r.lost = self.lost;
            // SAFETY: `LauncherReport` is repr(C) plain data.
            let bytes = unsafe {
                std::slice::from_raw_parts(
                    (r as *const LauncherReport).cast::<u8>(),
                    size_of::<LauncherReport>(),
                )
            };
            match send(sock, bytes, path) {
                Ok(()) => {
                    self.lost = 0;
                    self.queue.pop_front();
                }
                Err(_) => return,
            }
        }
    }
}

fn send(sock: &UnixDatagram, bytes: &[u8], path: &std::path::Path) -> io::Result<()> {
    // Non-blocking: a stalled daemon must not stall the agent's syscalls.
    sock.set_nonblocking(true)?;
    sock.send_to(bytes, path).map(drop)
}

/// The record the observers would have written for this call.
fn event(tid: u32, d: &Decision) -> SyscallEvent {
    let tgid = proc_field(tid, "Tgid:").unwrap_or(tid);
    let mut comm = [0u8; COMM_LEN];
    if let Ok(c) = std::fs::read(format!("/proc/{tid}/comm")) {
        let c = c.strip_suffix(b"\n").unwrap_or(&c);
        let n = c.len().min(COMM_LEN - 1);
        comm[..n].copy_from_slice(&c[..n]);
    }
    SyscallEvent {
        hdr: EventHeader {
            kind: KIND_SYSCALL,
            identity: d.identity,
            ts_ns: crate::clock::boot_ns(),
            cgroup_id: cgroup_id(tid).unwrap_or(0),
            pid: tid,
            tgid,
            comm,
            verdict: d.verdict,
            mode: d.mode,
            reason: d.reason,
            rule_id: 0,
        },
        nr: d.nr,
        layer: d.layer,
        errno: d.errno,
        _pad: 0,
        args: d.args,
    }
}

fn proc_field(tid: u32, key: &str) -> Option<u32> {
    std::fs::read_to_string(format!("/proc/{tid}/status"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix(key))?
        .trim()
        .parse()
        .ok()
}

/// The thread's cgroup v2 id (the directory's inode number).
fn cgroup_id(tid: u32) -> Option<u64> {
    use std::os::unix::fs::MetadataExt as _;
    let rel = crate::cgroup::of_pid(tid).ok()?;
    let root = crate::cgroup::cgroup2_root().ok()?;
    Some(
        std::fs::metadata(root.join(rel.trim_start_matches('/')))
            .ok()?
            .ino(),
    )
}
