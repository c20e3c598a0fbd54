//! `[syscalls]` for `corral run`: the three sandbox phases.
//!
//! - prepare (parent): read the identity's value from the pinned
//!   `SYSCALL_POLICY` (the same value the supervisor will answer from, so
//!   the filter and the answers start from one policy), compile the filter,
//!   start the supervisor thread;
//! - in the child: install the filter, publish the listener (see
//!   `supervisor`);
//! - after spawn: nothing; the supervisor thread answers until the launcher
//!   exits (when the child does).

use std::{os::fd::RawFd, sync::Arc};

use agent_common::syscall::SyscallPolicy;
use anyhow::{Context as _, bail};

use super::{
    seccomp::Filter,
    supervisor::{Handshake, PolicyMap, Supervisor},
};
use crate::policy::syscalls::{ALWAYS_ALLOWED, SyscallSet, hot_set, name_bytes, nr_of};

pub struct SyscallConfinement {
    filter: Filter,
    handshake: Arc<Handshake>,
    /// Held until the launcher is done (see `launcher_mark`).
    _mark: Option<super::launcher_mark::LauncherMark>,
}

/// `None` when the identity has no `[syscalls]` section.
pub fn prepare(
    identity: &str,
    policy: &crate::views::LaunchPolicy,
) -> anyhow::Result<Option<SyscallConfinement>> {
    let s = &policy.syscalls;
    if !s.confined {
        return Ok(None);
    }
    let map_path = s
        .map
        .clone()
        .context("the daemon did not say where SYSCALL_POLICY is pinned")?;
    let id = policy.identity_id;
    let (map, value) = live_policy(identity, id, &map_path)?;
    let name = name_bytes(identity);
    if !value.confined() {
        // A reload removed the section since the daemon answered.
        return Ok(None);
    }
    let allowed = SyscallSet(value.allow);
    let mut hot = hot_set();
    for n in ALWAYS_ALLOWED {
        hot.insert(nr_of(n).expect("in the table"));
    }
    let filter = Filter::compile(&allowed.intersect(&hot), &SyscallSet(value.deny));
    let handshake = Arc::new(Handshake::new().context("mapping the handshake page")?);
    let sup = Supervisor {
        map,
        identity_id: id,
        name,
        reporter: super::report::Reporter::new(s.report.clone()),
    };
    let h = handshake.clone();
    std::thread::Builder::new()
        .name("seccomp-supervisor".into())
        .spawn(move || sup.run(&h))
        .context("starting the seccomp supervisor")?;
    // An agent running as the launcher's user must not ptrace it or write
    // its memory (it answers for the agent).
    // SAFETY: plain prctl on ourselves.
    unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) };
    Ok(Some(SyscallConfinement {
        filter,
        handshake,
        _mark: launcher_mark(&map_path, id, value.generation),
    }))
}

/// The pinned map the launcher answers from, and the identity's entry in
/// it now; refused when this kernel cannot notify (never run unconfined).
fn live_policy(
    identity: &str,
    id: u32,
    map_path: &std::path::Path,
) -> anyhow::Result<(PolicyMap, SyscallPolicy)> {
    let avail =
        std::fs::read_to_string("/proc/sys/kernel/seccomp/actions_avail").unwrap_or_default();
    if !avail.split_whitespace().any(|a| a == "user_notif") {
        bail!(
            "identity `{identity}` has a [syscalls] section, but this kernel has no seccomp user \
             notification (actions: {}): refusing to run it unconfined",
            avail.trim()
        );
    }
    let map = PolicyMap::open(map_path).with_context(|| {
        format!(
            "opening {} (the identity's syscall policy; `corral run` reads it directly)",
            map_path.display()
        )
    })?;
    let value: SyscallPolicy = map
        .lookup(id)
        .with_context(|| format!("reading {}", map_path.display()))?
        .with_context(|| {
            format!(
                "no syscall policy for `{identity}` (id {id}) in {}",
                map_path.display()
            )
        })?;
    if value.name != name_bytes(identity) {
        bail!(
            "{} holds another identity under id {id}; retry",
            map_path.display()
        );
    }
    Ok((map, value))
}

/// Registers the launcher, after which the child's filter counts as
/// Corral's for the observers.
fn launcher_mark(
    map_path: &std::path::Path,
    id: u32,
    generation: u32,
) -> Option<super::launcher_mark::LauncherMark> {
    let marks = map_path.with_file_name(agent_common::maps::SC_LAUNCHERS);
    match super::launcher_mark::LauncherMark::register(&marks, id, generation) {
        Ok(m) => Some(m),
        Err(e) => {
            // An older daemon has no such map: its observers go by the
            // filter alone.
            eprintln!(
                "corral run: cannot register with {} ({e}); `assigned = \"kill\"` may take \
                 this agent for an assigned process",
                marks.display()
            );
            None
        }
    }
}

impl SyscallConfinement {
    /// In the child, last before exec: no allocation, no syscall after the
    /// filter is installed.
    pub fn apply_in_child(&self) -> std::io::Result<()> {
        // SAFETY: getpid has no arguments.
        let pid = unsafe { libc::getpid() };
        let fd: RawFd = self.filter.install()?;
        self.handshake.publish(pid, fd);
        Ok(())
    }
}
