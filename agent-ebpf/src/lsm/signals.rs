//! Signals that do not go through `task_kill`: SIGIO/SIGURG sent to a
//! file's owner (`fcntl(F_SETOWN)` + `O_ASYNC`, optionally `F_SETSIG` to
//! pick any signal, SIGKILL included).
//!
//! Every other way a tagged process can signal goes through `task_kill`
//! (kill, tgkill, tkill, rt_(tg)sigqueueinfo, pidfd_send_signal, kill(-1)
//! per target) or only reaches the caller itself or its own children
//! (posix timers and mq_notify signal their own thread group; `exit_signal`
//! goes to the parent — the caller — and is reset to SIGCHLD on
//! reparenting or with `CLONE_PARENT`; `PR_SET_PDEATHSIG` signals the
//! caller; leases and dnotify make the caller the owner).
//!
//! A fown signal is raised by whoever triggers the I/O (possibly another
//! process, or softirq), so it is judged twice: at delivery when a tagged
//! task triggers it, and where the owner is chosen — a tagged process may
//! name only itself (`F_SETOWN` with its own pid, or 0); the variants
//! whose target the kernel reads from user memory after this hook
//! (`F_SETOWN_EX`, `FIOSETOWN`, `SIOCSPGRP`) are refused outright, since a
//! second thread could change the target between our read and the
//! kernel's. A file whose owner is already outside (inherited or passed
//! in, set up by a process outside) may not be armed by a tagged process:
//! `F_SETSIG` (choosing the signal: SIGKILL too), `F_SETFL` with `O_ASYNC`
//! and `FIOASYNC` are refused there, so the agent cannot make someone
//! else's I/O deliver its choice of signal.

use agent_common::file::{PROTECT_SETOWN, PROTECT_SIGIO};
use aya_ebpf::{helpers::bpf_get_current_pid_tgid, programs::LsmContext};

use super::{
    EPERM, kernel,
    protect::{emit, guard_task, may_touch},
};
use crate::identity::{self, Subject};

const SIGIO: u32 = 29;
const F_SETOWN: u32 = 8;
const F_SETOWN_EX: u32 = 15;
const FIOSETOWN: u32 = 0x8901;
const SIOCSPGRP: u32 = 0x8902;
const F_SETFL: u32 = 4;
const F_SETSIG: u32 = 10;
const O_ASYNC: u64 = 0o20000;
const FIOASYNC: u32 = 0x5452;
/// `enum pid_type`: a process group or session owner.
const PIDTYPE_PGID: u32 = 2;
/// `struct hlist_node`, the element of `task_struct.pid_links[]`.
const HLIST_NODE: u32 = 16;

/// Whether `file`'s signal owner is outside the caller's identity (or the
/// daemon, or a process group): Some((tgid, identity, daemon)) then.
#[inline(always)]
fn owner_outside(s: &Subject, file: u64) -> Option<(u32, u32, bool)> {
    let o = kernel::offsets();
    if o.fown_ok == 0 {
        return None;
    }
    let fown = if o.f_owner_ptr != 0 {
        kernel::read_ptr(file, o.file_f_owner)
    } else {
        file + o.file_f_owner as u64
    };
    if fown == 0 {
        return None;
    }
    let pid = kernel::read_ptr(fown, o.fown_pid);
    if pid == 0 {
        return None;
    }
    let ptype = kernel::read::<u32>(fown, o.fown_pid_type);
    if ptype >= PIDTYPE_PGID {
        return Some((0, 0, false));
    }
    let first = kernel::read_ptr(pid, o.pid_tasks + 8 * ptype);
    if first == 0 {
        // The owner has exited: no one to signal.
        return None;
    }
    let task = first - (o.task_pid_links + HLIST_NODE * ptype) as u64;
    let (ok, tgid, target, daemon) = may_touch(s, task);
    if ok {
        None
    } else {
        Some((tgid, target, daemon))
    }
}

/// Refuses arming `file` (`cmd`) when its owner is outside the identity.
#[inline(always)]
fn refuse_arming(s: &Subject, file: u64, cmd: u32) -> i32 {
    match owner_outside(s, file) {
        None => 0,
        Some((tgid, target, daemon)) => {
            emit(s, PROTECT_SETOWN, tgid, target, cmd, daemon);
            -EPERM
        }
    }
}

/// `lsm/file_send_sigiotask(tsk, fown, sig)`: a SIGIO/SIGURG (or the
/// `F_SETSIG` signal) triggered by a tagged task, to a task outside its
/// identity or to the daemon.
pub fn file_send_sigiotask(ctx: &LsmContext) -> i32 {
    let Some(s) = identity::current() else {
        return 0;
    };
    // 0 means the default, SIGIO.
    let sig = match ctx.arg::<u64>(2) as u32 {
        0 => SIGIO,
        n => n,
    };
    guard_task(&s, ctx.arg(0), PROTECT_SIGIO, sig, true)
}

/// `lsm/file_fcntl(file, cmd, arg)`: the owner of a file's signals.
pub fn file_fcntl(ctx: &LsmContext) -> i32 {
    let cmd: u64 = ctx.arg(1);
    let cmd = cmd as u32;
    let arg: u64 = ctx.arg(2);
    let arming = cmd == F_SETSIG || (cmd == F_SETFL && arg & O_ASYNC != 0);
    if cmd != F_SETOWN && cmd != F_SETOWN_EX && !arming {
        return 0;
    }
    let Some(s) = identity::current() else {
        return 0;
    };
    if arming {
        return refuse_arming(&s, kernel::arg_scalar(ctx, 0), cmd);
    }
    let who = arg as i32;
    if cmd == F_SETOWN {
        let id = bpf_get_current_pid_tgid();
        // Positive: a process (its thread group); negative: a process
        // group, which may hold processes outside the identity (the
        // launcher's job). 0 clears the owner. Pids are the caller's view;
        // in a pid namespace of its own its pid differs and it is refused
        // (fail closed).
        if who == 0 || who as u32 == (id >> 32) as u32 || who as u32 == id as u32 {
            return 0;
        }
    }
    emit(
        &s,
        PROTECT_SETOWN,
        if cmd == F_SETOWN { who as u32 } else { 0 },
        0,
        cmd,
        false,
    );
    -EPERM
}

/// `lsm/file_ioctl(file, cmd, arg)`: `FIOSETOWN`/`SIOCSPGRP` set a
/// socket's owner from user memory (see the module comment); `FIOASYNC`
/// arms a file.
pub fn file_ioctl(ctx: &LsmContext) -> i32 {
    let cmd: u64 = ctx.arg(1);
    let cmd = cmd as u32;
    if cmd != FIOSETOWN && cmd != SIOCSPGRP && cmd != FIOASYNC {
        return 0;
    }
    let Some(s) = identity::current() else {
        return 0;
    };
    if cmd == FIOASYNC {
        // On or off, read from user memory: refused either way when the
        // owner is outside.
        return refuse_arming(&s, kernel::arg_scalar(ctx, 0), cmd);
    }
    emit(&s, PROTECT_SETOWN, 0, 0, cmd, false);
    -EPERM
}
