//! Confinement that `corral run` applies in the child before `execve`, on
//! top of the kernel-side (eBPF) rules that follow the cgroup.
//!
//! Three phases, because only async-signal-safe work is allowed between
//! fork and exec:
//! 1. `Confinement::prepare` (parent, before fork): everything that
//!    allocates — fetch the identity's policy, build rulesets and filters.
//! 2. `Confinement::apply_in_child` (child, after joining the cgroup and
//!    dropping privileges): raw syscalls on pre-built data only.
//! 3. `Confinement::supervise` (parent, after spawn): anything that must
//!    keep running beside the child (e.g. answering seccomp notifications).
//!
//! Each mechanism lives in its own module and adds one field here.

pub(crate) mod cbpf;
pub mod landlock;
pub mod launcher_mark;
pub mod report;
pub mod seccomp;
pub mod supervisor;
pub mod syscalls;
pub mod terminal;

use crate::views::LaunchPolicy;
use std::process::Child;

/// What the launcher prepared for one child.
pub struct Confinement {
    /// Own session, own pty, no terminal injection (see `terminal.rs`);
    /// taken by `supervise` to run the relay.
    terminal: Option<terminal::Terminal>,
    /// `[files]` rules as a Landlock ruleset, when BPF LSM does not enforce
    /// them (see `landlock.rs`).
    landlock: Option<landlock::Landlock>,
    /// `[syscalls]`: the seccomp filter and its supervisor (see
    /// `syscalls.rs`).
    syscalls: Option<syscalls::SyscallConfinement>,
}

impl Confinement {
    /// Builds every mechanism's pre-fork state from the identity's policy as
    /// the daemon serves it (`GET /v1/policy/NAME`).
    pub fn prepare(identity: &str, policy: &LaunchPolicy) -> anyhow::Result<Confinement> {
        let mut terminal = terminal::Terminal::prepare()?;
        let syscalls = syscalls::prepare(identity, policy)?;
        if syscalls.is_some() {
            terminal.leave_to_syscall_filter();
        }
        Ok(Confinement {
            terminal: Some(terminal),
            landlock: landlock::prepare(&policy.files)?,
            syscalls,
        })
    }

    /// Runs in the child between fork and exec: no allocation, no locks.
    pub fn apply_in_child(&self) -> std::io::Result<()> {
        if let Some(t) = &self.terminal {
            t.apply_in_child()?;
        }
        // Landlock first: a syscall filter installed after it may refuse
        // the landlock_* calls themselves.
        if let Some(l) = &self.landlock {
            l.restrict_self()?;
        }
        // Last: after it, every syscall of the child is judged.
        if let Some(s) = &self.syscalls {
            s.apply_in_child()?;
        }
        Ok(())
    }

    /// Runs in the parent after spawn, until the child exits; returns its
    /// exit status.
    pub fn supervise(mut self, child: &mut Child) -> std::io::Result<std::process::ExitStatus> {
        let relay = match self.terminal.take() {
            Some(t) => t.start_relay()?,
            None => None,
        };
        let status = child.wait();
        if let Some(r) = relay {
            r.finish();
        }
        status
    }
}
