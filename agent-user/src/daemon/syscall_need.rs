//! When the host-wide syscall observers are needed at all.
//!
//! Agents started with `corral run` need none: their launcher refuses and
//! reports every call the seccomp filter does not allow in the kernel
//! (`sandbox::report`). The observers (every syscall on the host pays for
//! them) are attached only while some tagged process of an identity with
//! `[syscalls]` has nobody to report for it:
//! - a process without a live launcher of its identity among its parents:
//!   moved in with `corral assign` (audited or killed by the observers), or
//!   an agent whose launcher died (its notified calls fail with ENOSYS,
//!   reported as fail-closed);
//! - an agent whose launch-time filter allows in the kernel a hot syscall
//!   the live policy has dropped since (only the observers see those calls).

use std::{
    collections::HashMap,
    fs,
    path::{Path, PathBuf},
};

use agent_common::syscall::{LAUNCHER_MAX_DEPTH, LauncherEntry, SyscallPolicy};

use crate::policy::syscalls::{SyscallSet, always_allowed, hot_set};

/// One identity with a `[syscalls]` section, as the scan sees it.
pub struct Confined {
    pub id: u32,
    /// Its cgroup and the cgroups assigned to it.
    pub cgroups: Vec<PathBuf>,
    pub value: SyscallPolicy,
}

/// What an identity's policies allowed, by generation, as far as this
/// daemon has written them (`Syscalls::sync`).
pub type Served = HashMap<(u32, u32), [u64; agent_common::syscall::BITMAP_WORDS]>;

/// Why the observers are needed, or `None`.
pub fn why(
    confined: &[Confined],
    launchers: &HashMap<u32, LauncherEntry>,
    served: &Served,
) -> Option<String> {
    let hot = hot_set().union(&always_allowed());
    for c in confined {
        let allowed = SyscallSet(c.value.allow);
        // Only what the agent's own filter passes in the kernel: the hot
        // syscalls its launch-time policy allowed. A launch whose policy
        // this daemon never wrote (it started since) counts every hot
        // syscall the live policy lacks.
        let dropped_hot = |generation: u32| {
            if generation == c.value.generation {
                return false;
            }
            let launched = served.get(&(c.id, generation)).map(|a| SyscallSet(*a));
            hot.iter()
                .any(|nr| launched.as_ref().is_none_or(|l| l.contains(nr)) && !allowed.contains(nr))
        };
        for cg in &c.cgroups {
            for pid in procs(cg) {
                match launcher_of(pid, launchers) {
                    Some((id, generation)) if id == c.id => {
                        if dropped_hot(generation) {
                            return Some(format!(
                                "an agent of identity #{} runs with hot syscalls its policy no \
                                 longer allows",
                                c.id
                            ));
                        }
                    }
                    _ => {
                        return Some(format!(
                            "pid {pid} (identity #{}) has no `corral run` launcher reporting for it",
                            c.id
                        ));
                    }
                }
            }
        }
    }
    None
}

/// Every pid in `cg` and the cgroups below it (bounded).
fn procs(cg: &Path) -> Vec<u32> {
    let mut out = Vec::new();
    let mut dirs = vec![cg.to_path_buf()];
    let mut seen = 0;
    while let Some(d) = dirs.pop() {
        seen += 1;
        if seen > 1024 {
            break;
        }
        if let Ok(s) = fs::read_to_string(d.join("cgroup.procs")) {
            out.extend(s.lines().filter_map(|l| l.trim().parse::<u32>().ok()));
        }
        if let Ok(rd) = fs::read_dir(&d) {
            dirs.extend(
                rd.flatten()
                    .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                    .map(|e| e.path()),
            );
        }
    }
    out
}

/// The identity (and policy generation) of the live launcher among `pid`'s
/// parents (as the kernel side's `launched` walks them: same tgid, same
/// start tick).
fn launcher_of(pid: u32, launchers: &HashMap<u32, LauncherEntry>) -> Option<(u32, u32)> {
    let mut p = pid;
    for _ in 0..LAUNCHER_MAX_DEPTH {
        let parent = ppid(p)?;
        if parent <= 1 {
            return None;
        }
        if let Some(e) = launchers.get(&parent) {
            return (crate::sandbox::launcher_mark::start_ticks(parent) == Some(e.start_ticks))
                .then_some((e.identity, e.generation));
        }
        p = parent;
    }
    None
}

fn ppid(pid: u32) -> Option<u32> {
    let s = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // After the `(comm)`, which may hold spaces: state, then ppid.
    s.rsplit_once(')')?
        .1
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}
