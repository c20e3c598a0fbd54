//! Self-protection: what a tagged process must never do, whatever its
//! policy and mode — load or inspect BPF, signal or ptrace the daemon or
//! processes outside its identity, mount or unmount (which could hide or
//! reveal paths, or take bpffs and the pinned links away), start a child in
//! another cgroup. cgroupfs writes and bpffs opens are refused in
//! `files::file_open`, changes to their entries in the `files` path hooks.

use agent_common::{
    event::{KIND_PROTECT, REASON_PROTECTED, VERDICT_DENY},
    file::{
        FILE_OP_MOUNT, FILE_OP_MOVE_MOUNT, FILE_OP_UMOUNT, PROTECT_BPF, PROTECT_CLONE_INTO_CGROUP,
        PROTECT_PTRACE, PROTECT_SIGNAL, ProtectEvent,
    },
};
use aya_ebpf::{helpers::generated::bpf_d_path, programs::LsmContext};

use super::{
    EPERM, files,
    kernel::{self, PATH_BUF},
};
use crate::{
    events::{self, COUNT_DENIED},
    identity::{self, Subject},
    maps::EVENTS,
};

/// `PTRACE_MODE_NOAUDIT`: the kernel only asks (e.g. to decide which
/// /proc fields to show); refuse without an event.
const PTRACE_MODE_NOAUDIT: u32 = 0x04;

#[inline(always)]
pub(super) fn emit(
    s: &Subject,
    op: u32,
    target_tgid: u32,
    target_identity: u32,
    arg: u32,
    daemon: bool,
) {
    events::count(s.identity, COUNT_DENIED);
    let Some(mut slot) = EVENTS.reserve::<ProtectEvent>(0) else {
        events::count_drop();
        return;
    };
    let p = slot.as_mut_ptr();
    // SAFETY: writes into the reserved, correctly sized slot.
    unsafe {
        (*p).hdr = events::header(KIND_PROTECT, s, VERDICT_DENY, REASON_PROTECTED, 0);
        (*p).op = op;
        (*p).target_tgid = target_tgid;
        (*p).target_identity = target_identity;
        (*p).arg = arg;
        (*p).target_is_daemon = daemon as u32;
        (*p)._pad = 0;
    }
    slot.submit(0);
}

/// `lsm/bpf(cmd, attr, size)`: no bpf() at all for tagged processes.
pub fn bpf(ctx: &LsmContext) -> i32 {
    let Some(s) = identity::current() else {
        return 0;
    };
    let cmd: u64 = ctx.arg(0);
    emit(&s, PROTECT_BPF, 0, 0, cmd as u32, false);
    -EPERM
}

/// Whether the caller may act on `task`: only within its own identity, and
/// never on the daemon. Returns (allowed, target tgid, target identity,
/// target is the daemon).
#[inline(always)]
pub(super) fn may_touch(s: &Subject, task: u64) -> (bool, u32, u32, bool) {
    let o = kernel::offsets();
    let tgid = kernel::task_tgid(&o, task);
    let daemon = tgid != 0 && tgid == identity::daemon_tgid();
    let target = kernel::task_identity(&o, task);
    (!daemon && target == s.identity, tgid, target, daemon)
}

/// Refuses the caller `task` unless `may_touch` allows it; reports the
/// refusal as `op` with `arg` when `report` (checks the kernel only asks
/// about are refused silently).
#[inline(always)]
pub(super) fn guard_task(s: &Subject, task: u64, op: u32, arg: u32, report: bool) -> i32 {
    let (ok, tgid, target, daemon) = may_touch(s, task);
    if ok {
        return 0;
    }
    if report {
        emit(s, op, tgid, target, arg, daemon);
    }
    -EPERM
}

/// `lsm/task_kill(p, info, sig, cred)`.
pub fn task_kill(ctx: &LsmContext) -> i32 {
    let Some(s) = identity::current() else {
        return 0;
    };
    let sig = ctx.arg::<u64>(2) as u32;
    // Signal 0 only probes for existence: refused, not worth an event.
    guard_task(&s, ctx.arg(0), PROTECT_SIGNAL, sig, sig != 0)
}

/// `lsm/ptrace_access_check(child, mode)`: ptrace, /proc/PID/mem and the
/// like, across identities.
pub fn ptrace_access_check(ctx: &LsmContext) -> i32 {
    let Some(s) = identity::current() else {
        return 0;
    };
    let mode = ctx.arg::<u64>(1) as u32;
    let report = mode & PTRACE_MODE_NOAUDIT == 0;
    guard_task(&s, ctx.arg(0), PROTECT_PTRACE, mode, report)
}

/// `lsm/sb_mount(dev_name, path, type, flags, data)`: no mounts (bind
/// mounts could lay an allowed path over a denied one, or the reverse).
pub fn sb_mount(ctx: &LsmContext) -> i32 {
    let Some(s) = identity::current() else {
        return 0;
    };
    let path: u64 = ctx.arg(1);
    let Some(sc) = kernel::scratch() else {
        return -EPERM;
    };
    // SAFETY: `path` is the hook's trusted `struct path *` (bpf_d_path is
    // allowed in sb_mount); the buffer is PATH_BUF bytes of map value.
    let r = unsafe {
        bpf_d_path(
            path as *mut aya_ebpf::bindings::path,
            sc.path.as_mut_ptr().cast(),
            PATH_BUF as u32,
        )
    };
    let len = if r > 0 { (r - 1) as u32 } else { 0 };
    files::emit_mount(&s, sc, len, FILE_OP_MOUNT);
    -EPERM
}

/// `lsm/move_mount(from_path, to_path)`: attaching a (detached) mount.
pub fn move_mount(ctx: &LsmContext) -> i32 {
    let Some(s) = identity::current() else {
        return 0;
    };
    let to_path = kernel::arg_scalar(ctx, 1);
    let len = files::path_of(to_path);
    let Some(sc) = kernel::scratch() else {
        return -EPERM;
    };
    files::emit_mount(&s, sc, len, FILE_OP_MOVE_MOUNT);
    -EPERM
}

/// `lsm/sb_umount(mnt, flags)`: unmounting could take bpffs (and with it
/// the pinned links) away, or uncover what a mount hides.
pub fn sb_umount(ctx: &LsmContext) -> i32 {
    let Some(s) = identity::current() else {
        return 0;
    };
    let mnt = kernel::arg_scalar(ctx, 0);
    let root = kernel::read_ptr(mnt, kernel::offsets().vfsmount_mnt_root);
    let len = files::corral_path_of(mnt, root);
    let Some(sc) = kernel::scratch() else {
        return -EPERM;
    };
    files::emit_mount(&s, sc, len, FILE_OP_UMOUNT);
    -EPERM
}

/// `CLONE_INTO_CGROUP` (clone3): the child would start in a cgroup of the
/// caller's choosing, outside its identity, without any cgroupfs write.
const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;

/// `lsm/task_alloc(task, clone_flags)`: every fork of a tagged process; only
/// `CLONE_INTO_CGROUP` is refused.
pub fn task_alloc(ctx: &LsmContext) -> i32 {
    let flags: u64 = ctx.arg(1);
    if flags & CLONE_INTO_CGROUP == 0 {
        return 0;
    }
    let Some(s) = identity::current() else {
        return 0;
    };
    emit(
        &s,
        PROTECT_CLONE_INTO_CGROUP,
        0,
        0,
        (flags >> 32) as u32,
        false,
    );
    -EPERM
}
