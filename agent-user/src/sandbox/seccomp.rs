//! The seccomp filter `corral run` installs in its child before `execve`.
//!
//! Classic BPF, compiled in the parent from the identity's policy at
//! launch:
//! 1. any ABI but x86_64, and x32 numbers: USER_NOTIF;
//! 2. `ioctl` with a terminal-injection command (`terminal::REFUSED`):
//!    USER_NOTIF;
//! 3. per syscall number, by a balanced search over runs of numbers with
//!    the same action: hot allowed syscalls ALLOW, everything else
//!    USER_NOTIF, answered by the launcher from the live policy (see
//!    `supervisor`).
//!
//! What the filter used to refuse itself (wrong ABI, `deny` entries,
//! `seccomp()` asking for a listener, terminal injection) is notified too,
//! so the launcher refuses it and reports it without a host-wide syscall
//! hook. Without the launcher it is still refused: a notification nobody
//! answers fails with ENOSYS.
//!
//! The filter is inherited by every thread and child and survives
//! `execve`; it cannot be removed. Decisions in the filter look at the
//! syscall number and at `seccomp()`'s flags only (values, not pointers).

use std::{io, os::fd::RawFd};

use agent_common::syscall::{NR_IOCTL, NR_SECCOMP};

use crate::policy::syscalls::SyscallSet;

pub use super::cbpf::{AUDIT_ARCH_X86_64, RET_ALLOW, RET_EPERM, RET_NOTIFY};
use super::cbpf::{
    JA as BPF_JA, JEQ_K as BPF_JEQ_K, JGE_K as BPF_JGE_K, LD_W_ABS as BPF_LD_W_ABS, OFF_ARCH,
    OFF_ARG1_LO, OFF_NR, RET_K as BPF_RET_K, ins,
};
const X32_SYSCALL_BIT: u32 = 0x4000_0000;
/// Numbers the bitmap covers; every number above is notified (and refused).
const TABLE_END: u32 = agent_common::syscall::BITMAP_BITS;

fn stmt(code: u16, k: u32) -> libc::sock_filter {
    ins(code, k, 0, 0)
}

fn jump(code: u16, k: u32, jt: u8, jf: u8) -> libc::sock_filter {
    ins(code, k, jt, jf)
}

/// Never allowed by the filter itself, whatever the policy: `socket` and
/// `socketpair` (their family is checked live), `seccomp` (live, besides
/// the listener check), and `execve`/`execveat`: the launcher takes the
/// listener while the child waits in its first `execve` (see `supervisor`).
const NEVER_IN_FILTER: [u32; 5] = [
    agent_common::syscall::NR_SOCKET,
    agent_common::syscall::NR_SOCKETPAIR,
    NR_SECCOMP,
    59,
    322,
];

/// The action the filter takes for `nr` (below `TABLE_END`).
pub fn action(nr: u32, hot_allowed: &SyscallSet, denied: &SyscallSet) -> u32 {
    if denied.contains(nr) {
        RET_NOTIFY
    } else if hot_allowed.contains(nr) && !NEVER_IN_FILTER.contains(&nr) {
        RET_ALLOW
    } else {
        RET_NOTIFY
    }
}

/// A compiled filter, ready to install.
pub struct Filter {
    prog: Vec<libc::sock_filter>,
}

impl Filter {
    /// `hot_allowed`: what the filter allows itself; `denied`: never
    /// allowed in the filter (the launcher refuses them in enforce mode,
    /// reports them in audit mode).
    pub fn compile(hot_allowed: &SyscallSet, denied: &SyscallSet) -> Filter {
        // Runs of equal action: (first number, action). The last run goes
        // on to 2^32 (numbers past the bitmap are notified).
        let mut runs: Vec<(u32, u32)> = Vec::new();
        for nr in 0..TABLE_END {
            let a = action(nr, hot_allowed, denied);
            if runs.last().map(|r| r.1) != Some(a) {
                runs.push((nr, a));
            }
        }
        if runs.last().map(|r| r.1) != Some(RET_NOTIFY) {
            runs.push((TABLE_END, RET_NOTIFY));
        }
        let refused = super::terminal::REFUSED;
        let n = refused.len() as u8;
        let mut prog = vec![
            stmt(BPF_LD_W_ABS, OFF_ARCH),
            jump(BPF_JEQ_K, AUDIT_ARCH_X86_64, 1, 0),
            stmt(BPF_RET_K, RET_NOTIFY),
            stmt(BPF_LD_W_ABS, OFF_NR),
            jump(BPF_JGE_K, X32_SYSCALL_BIT, 0, 1),
            stmt(BPF_RET_K, RET_NOTIFY),
            // ioctl: its command decides before its number does.
            jump(BPF_JEQ_K, NR_IOCTL, 0, 3 + n),
            stmt(BPF_LD_W_ABS, OFF_ARG1_LO),
        ];
        for (i, cmd) in refused.iter().enumerate() {
            // Match: to the RET_NOTIFY after the list.
            prog.push(jump(BPF_JEQ_K, *cmd, n - i as u8, 0));
        }
        prog.extend([
            jump(BPF_JA, 0, 0, 0),
            stmt(BPF_RET_K, RET_NOTIFY),
            stmt(BPF_LD_W_ABS, OFF_NR),
        ]);
        // The `ja` above skips the RET_NOTIFY.
        let ja = prog.len() - 3;
        prog[ja].k = 1;
        prog.extend(tree(&runs));
        Filter { prog }
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.prog.len()
    }

    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.prog.is_empty()
    }

    /// Runs the filter on `(arch, nr, args[1])` the way the kernel would.
    #[cfg(test)]
    pub fn eval(&self, arch: u32, nr: u32, arg1: u64) -> u32 {
        let mut a: u32 = 0;
        let mut pc = 0usize;
        while let Some(i) = self.prog.get(pc) {
            pc += 1;
            match i.code {
                BPF_LD_W_ABS => {
                    a = match i.k {
                        OFF_NR => nr,
                        OFF_ARCH => arch,
                        OFF_ARG1_LO => arg1 as u32,
                        _ => 0,
                    }
                }
                BPF_JEQ_K | BPF_JGE_K => {
                    let t = match i.code {
                        BPF_JEQ_K => a == i.k,
                        _ => a >= i.k,
                    };
                    pc += usize::from(if t { i.jt } else { i.jf });
                }
                BPF_JA => pc += i.k as usize,
                BPF_RET_K => return i.k,
                _ => return 0,
            }
        }
        0
    }

    /// Installs the filter on the calling thread and returns the listener
    /// fd. Runs in the child between fork and exec: one or two raw
    /// syscalls, no allocation. `no_new_privs` must already be set.
    pub fn install(&self) -> io::Result<RawFd> {
        let fprog = libc::sock_fprog {
            len: self.prog.len() as u16,
            filter: self.prog.as_ptr().cast_mut(),
        };
        let mut flags =
            libc::SECCOMP_FILTER_FLAG_NEW_LISTENER | libc::SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV;
        loop {
            // SAFETY: `fprog` points at the live program for the call.
            let fd = unsafe {
                libc::syscall(
                    libc::SYS_seccomp,
                    libc::SECCOMP_SET_MODE_FILTER,
                    flags,
                    &fprog as *const libc::sock_fprog,
                )
            };
            if fd >= 0 {
                return Ok(fd as RawFd);
            }
            let e = io::Error::last_os_error();
            // WAIT_KILLABLE_RECV is Linux 5.19+; older kernels get the
            // plain listener (a signal then restarts a notified syscall).
            if e.raw_os_error() == Some(libc::EINVAL)
                && flags & libc::SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV != 0
            {
                flags &= !libc::SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV;
                continue;
            }
            return Err(e);
        }
    }
}

/// A balanced search over `runs` (sorted by first number; A holds the
/// number). Jump offsets are 8-bit, so a left subtree longer than 255
/// instructions is skipped through a `ja`.
fn tree(runs: &[(u32, u32)]) -> Vec<libc::sock_filter> {
    if runs.len() == 1 {
        return vec![stmt(BPF_RET_K, runs[0].1)];
    }
    let mid = runs.len() / 2;
    let left = tree(&runs[..mid]);
    let right = tree(&runs[mid..]);
    let mut out = Vec::with_capacity(left.len() + right.len() + 2);
    match u8::try_from(left.len()) {
        Ok(n) => out.push(jump(BPF_JGE_K, runs[mid].0, n, 0)),
        Err(_) => {
            out.push(jump(BPF_JGE_K, runs[mid].0, 0, 1));
            out.push(stmt(BPF_JA, left.len() as u32));
        }
    }
    out.extend(left);
    out.extend(right);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::syscalls::{hot_set, nr_of};

    fn set(names: &[&str]) -> SyscallSet {
        let mut s = SyscallSet::default();
        for n in names {
            s.insert(nr_of(n).expect(n));
        }
        s
    }

    #[test]
    fn filter_matches_the_action_table_everywhere() {
        let allowed = hot_set();
        let denied = set(&["ptrace", "mount", "bpf", "kexec_load", "io_uring_setup"]);
        let f = Filter::compile(&allowed, &denied);
        assert!(f.len() < 4096, "{}", f.len());
        for nr in (0..TABLE_END).filter(|n| *n != NR_IOCTL) {
            assert_eq!(
                f.eval(AUDIT_ARCH_X86_64, nr, 0),
                action(nr, &allowed, &denied),
                "nr {nr}"
            );
        }
        assert_eq!(f.eval(AUDIT_ARCH_X86_64, 0, 0), RET_ALLOW);
        assert_eq!(
            f.eval(AUDIT_ARCH_X86_64, 101, 0),
            RET_NOTIFY,
            "deny entries are notified: the launcher refuses and reports"
        );
        assert_eq!(
            f.eval(AUDIT_ARCH_X86_64, 83, 0),
            RET_NOTIFY,
            "mkdir is live"
        );
        assert_eq!(f.eval(AUDIT_ARCH_X86_64, 100_000, 0), RET_NOTIFY);
        assert_eq!(f.eval(AUDIT_ARCH_X86_64, u32::MAX, 0), RET_NOTIFY);
        assert_eq!(f.eval(AUDIT_ARCH_X86_64, 0x4000_0000, 0), RET_NOTIFY, "x32");
        assert_eq!(f.eval(0x4000_0003, 0, 0), RET_NOTIFY, "i386");
        assert_eq!(
            f.eval(AUDIT_ARCH_X86_64, NR_SECCOMP, 8),
            RET_NOTIFY,
            "listener"
        );
        for cmd in super::super::terminal::REFUSED {
            assert_eq!(
                f.eval(AUDIT_ARCH_X86_64, NR_IOCTL, cmd as u64),
                RET_NOTIFY,
                "ioctl {cmd:#x}"
            );
        }
        assert_eq!(
            f.eval(AUDIT_ARCH_X86_64, NR_IOCTL, 0x5401),
            action(NR_IOCTL, &allowed, &denied),
            "TCGETS goes by the table"
        );
        assert_eq!(f.eval(AUDIT_ARCH_X86_64, NR_SECCOMP, 0), RET_NOTIFY);
        assert_eq!(
            f.eval(AUDIT_ARCH_X86_64, 41, 0),
            RET_NOTIFY,
            "socket checks args live"
        );
        let mut all = hot_set();
        all.insert(59);
        let f = Filter::compile(&all, &SyscallSet::default());
        assert_eq!(
            f.eval(AUDIT_ARCH_X86_64, 59, 0),
            RET_NOTIFY,
            "execve hands over"
        );
    }

    #[test]
    fn the_deny_list_is_notified_and_long_trees_jump_far() {
        // Every other number allowed: the worst case for runs.
        let mut alternate = SyscallSet::default();
        for nr in (0..TABLE_END).step_by(2) {
            alternate.insert(nr);
        }
        let denied = set(&["ptrace"]);
        let f = Filter::compile(&alternate, &denied);
        assert!(f.len() > 512, "{}", f.len());
        for nr in (0..TABLE_END).filter(|n| *n != NR_IOCTL) {
            assert_eq!(
                f.eval(AUDIT_ARCH_X86_64, nr, 0),
                action(nr, &alternate, &denied),
                "nr {nr}"
            );
        }
        assert_eq!(f.eval(AUDIT_ARCH_X86_64, 101, 0), RET_NOTIFY);
    }
}
