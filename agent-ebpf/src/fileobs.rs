//! The Landlock-denial observer: where BPF LSM is not available, `corral
//! run` enforces `[files]` with Landlock, which reports nothing to Corral.
//! Syscall tracepoints notice the opens and execs of tagged processes that
//! failed with EACCES/EPERM (path pointer recorded at entry, string read at
//! exit) and emit a `FileEvent` marked `LAYER_LANDLOCK`. They never change
//! a syscall's outcome.
//!
//! Two forms, same logic: one `syscalls:sys_{enter,exit}_<name>` tracepoint
//! per observed syscall (preferred: no other syscall runs a program), or
//! tp_btf `sys_enter`/`sys_exit` (fallback: every syscall of every task runs
//! it and pays a syscall-number compare at entry and exit).
//! Cost of an observed syscall for an untagged task: one cgroup-id helper
//! and one LRU lookup at entry (`FILEOBS_CGROUPS` caches "not observed" per
//! cgroup for `CACHE_NS`), one hash miss at exit.

use agent_common::{
    event::{KIND_FILE, REASON_NO_RULE, VERDICT_DENY},
    file::{
        ACCESS_EXEC, ACCESS_READ, ACCESS_WRITE, DIRFD_CWD, FILE_PATH_LEN, FILE_REASON_OBSERVED,
        FileEvent, IDENTITY_FLAG_FILES, LAYER_LANDLOCK,
    },
    identity::MODE_ENFORCE,
};
use aya_ebpf::{
    bindings::pt_regs,
    helpers::{
        bpf_get_current_cgroup_id, bpf_get_current_pid_tgid, bpf_ktime_get_ns,
        bpf_probe_read_kernel, bpf_probe_read_user, bpf_probe_read_user_str_bytes,
    },
    macros::map,
    maps::{HashMap, LruHashMap},
    programs::{BtfTracePointContext, TracePointContext},
};

use crate::{
    events::{self, COUNT_DENIED},
    identity::{self, Subject},
    maps::EVENTS,
};

/// x86_64 syscall numbers (the `pt_regs` field names below are x86_64's
/// too, so another architecture fails to build rather than misread).
pub mod nr {
    pub const OPEN: i64 = 2;
    pub const CREAT: i64 = 85;
    pub const OPENAT: i64 = 257;
    pub const OPENAT2: i64 = 437;
    pub const EXECVE: i64 = 59;
    pub const EXECVEAT: i64 = 322;
}

const O_ACCMODE: u64 = 3;
const O_WRONLY: u64 = 1;
const O_RDWR: u64 = 2;
const O_CREAT: u64 = 0o100;
const O_TRUNC: u64 = 0o1000;
const O_APPEND: u64 = 0o2000;

const EPERM: i64 = 1;
const EACCES: i64 = 13;

/// How long a cgroup's "observed or not" answer is trusted. A cgroup tagged
/// (`corral assign --cgroup`) or untagged since is seen within this time.
const CACHE_NS: u64 = 1_000_000_000;

/// A syscall of a tagged task in flight, from entry to exit.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Pending {
    /// User address of the path argument.
    pub path: u64,
    pub access: u32,
    pub dirfd: i32,
    pub identity: u32,
    pub mode: u32,
    pub ruleset: u32,
    pub flags: u32,
}

/// `HashMap<u64 pid_tgid, Pending>`: opens/execs of observed tasks in
/// flight, one per thread (every syscall entry has its exit, also for a task
/// being killed, so entries do not leak; a full map only loses events).
/// Preallocated: insert and delete stay cheap on the observed path.
#[map(name = "FILEOBS_PENDING")]
static FILEOBS_PENDING: HashMap<u64, Pending> = HashMap::with_max_entries(16384, 0);

/// Per cgroup: the identity to observe (0: none) and when it was resolved.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct CgroupSeen {
    pub at_ns: u64,
    pub identity: u32,
    pub mode: u32,
    pub ruleset: u32,
    pub flags: u32,
}

/// `LruHashMap<u64 cgroup id, CgroupSeen>`: the identity walk's answer for
/// a task's own cgroup, so untagged tasks pay one lookup, not a walk.
#[map(name = "FILEOBS_CGROUPS")]
static FILEOBS_CGROUPS: LruHashMap<u64, CgroupSeen> = LruHashMap::with_max_entries(4096, 0);

/// The identity whose failed opens are reported: tagged, with `[files]`
/// rules, in enforce mode (Landlock is only applied then).
#[inline(always)]
fn observed() -> Option<Subject> {
    // SAFETY: helpers without pointer arguments.
    let cg = unsafe { bpf_get_current_cgroup_id() };
    let now = unsafe { bpf_ktime_get_ns() };
    // SAFETY: plain data copied out.
    if let Some(c) = unsafe { FILEOBS_CGROUPS.get(cg) }
        && now.wrapping_sub(c.at_ns) < CACHE_NS
    {
        if c.identity == 0 {
            return None;
        }
        return Some(Subject {
            identity: c.identity,
            mode: c.mode,
            ruleset: c.ruleset,
            flags: c.flags,
        });
    }
    let seen = match identity::current() {
        Some(s) if s.flags & IDENTITY_FLAG_FILES != 0 && s.mode == MODE_ENFORCE => CgroupSeen {
            at_ns: now,
            identity: s.identity,
            mode: s.mode,
            ruleset: s.ruleset,
            flags: s.flags,
        },
        // The daemon itself and untagged tasks are cached as "none" too.
        _ => CgroupSeen {
            at_ns: now,
            identity: 0,
            mode: 0,
            ruleset: 0,
            flags: 0,
        },
    };
    let _ = FILEOBS_CGROUPS.insert(cg, seen, 0);
    if seen.identity == 0 {
        return None;
    }
    Some(Subject {
        identity: seen.identity,
        mode: seen.mode,
        ruleset: seen.ruleset,
        flags: seen.flags,
    })
}

#[inline(always)]
fn access_of_flags(flags: u64) -> u32 {
    let mut a = match flags & O_ACCMODE {
        O_WRONLY => ACCESS_WRITE,
        O_RDWR => ACCESS_READ | ACCESS_WRITE,
        _ => ACCESS_READ,
    };
    if flags & (O_CREAT | O_TRUNC | O_APPEND) != 0 {
        a |= ACCESS_WRITE;
    }
    a
}

#[inline(always)]
fn is_observed_syscall(id: i64) -> bool {
    id == nr::OPENAT
        || id == nr::OPEN
        || id == nr::OPENAT2
        || id == nr::CREAT
        || id == nr::EXECVE
        || id == nr::EXECVEAT
}

/// Generic `sys_enter(struct pt_regs *regs, long id)` (tp_btf): runs for
/// every syscall, so the syscall number is checked first.
pub fn enter_btf(ctx: &BtfTracePointContext) -> i32 {
    let id: i64 = ctx.arg(1);
    if !is_observed_syscall(id) {
        return 0;
    }
    let regs: *const pt_regs = ctx.arg(0);
    // SAFETY: the tracepoint's own pt_regs, read with the probe helper
    // (only for the few syscalls observed).
    let arg = |i: u32| -> Result<u64, i64> {
        let r = unsafe {
            match i {
                0 => bpf_probe_read_kernel(&(*regs).rdi),
                1 => bpf_probe_read_kernel(&(*regs).rsi),
                _ => bpf_probe_read_kernel(&(*regs).rdx),
            }
        };
        r.map_err(|e| e as i64)
    };
    let _ = record(id, arg);
    0
}

/// Per-syscall `syscalls:sys_enter_<name>` tracepoint: runs only for that
/// syscall (`id`); its arguments are 8-byte fields from offset 16.
pub fn enter_tp(ctx: &TracePointContext, id: i64) -> i32 {
    let arg = |i: u32| -> Result<u64, i64> {
        // SAFETY: offsets inside the tracepoint record (format file).
        unsafe { ctx.read_at::<u64>(16 + 8 * i as usize) }.map_err(|e| e as i64)
    };
    let _ = record(id, arg);
    0
}

/// At entry of an observed syscall: remembers the path pointer and access
/// of a task that is observed (one LRU lookup for everyone else).
#[inline(always)]
fn record(id: i64, arg: impl Fn(u32) -> Result<u64, i64>) -> Result<(), i64> {
    let Some(s) = observed() else {
        return Ok(());
    };
    let (path, dirfd, access) = if id == nr::OPEN {
        (arg(0)?, DIRFD_CWD, access_of_flags(arg(1)?))
    } else if id == nr::CREAT {
        (arg(0)?, DIRFD_CWD, ACCESS_WRITE)
    } else if id == nr::OPENAT {
        (arg(1)?, arg(0)? as i32, access_of_flags(arg(2)?))
    } else if id == nr::OPENAT2 {
        // struct open_how starts with the u64 flags.
        let how = arg(2)? as *const u64;
        // SAFETY: a user pointer, read with the fault-tolerant helper.
        let flags = unsafe { bpf_probe_read_user(how) }.unwrap_or(0);
        (arg(1)?, arg(0)? as i32, access_of_flags(flags))
    } else if id == nr::EXECVE {
        (arg(0)?, DIRFD_CWD, ACCESS_EXEC)
    } else {
        (arg(1)?, arg(0)? as i32, ACCESS_EXEC)
    };
    let p = Pending {
        path,
        access,
        dirfd,
        identity: s.identity,
        mode: s.mode,
        ruleset: s.ruleset,
        flags: s.flags,
    };
    let key = bpf_get_current_pid_tgid();
    FILEOBS_PENDING.insert(key, p, 0).map_err(|e| e as i64)
}

/// Generic `sys_exit(struct pt_regs *regs, long ret)` (tp_btf).
pub fn exit_btf(ctx: &BtfTracePointContext) -> i32 {
    let regs: *const pt_regs = ctx.arg(0);
    // SAFETY: a BTF-typed tracepoint argument: the verifier turns this load
    // into a fault-tolerant one, without the cost of a helper call (this
    // runs on every syscall exit of every task).
    let id = unsafe { (*regs).orig_rax } as i64;
    if !is_observed_syscall(id) {
        return 0;
    }
    finish(ctx.arg(1))
}

/// Per-syscall `syscalls:sys_exit_<name>` tracepoint: `ret` at offset 16.
pub fn exit_tp(ctx: &TracePointContext) -> i32 {
    // SAFETY: an offset inside the tracepoint record (format file).
    match unsafe { ctx.read_at::<i64>(16) } {
        Ok(ret) => finish(ret),
        Err(_) => 0,
    }
}

/// At exit: reports the observed syscall if it failed with EACCES/EPERM.
#[inline(always)]
fn finish(ret: i64) -> i32 {
    let key = bpf_get_current_pid_tgid();
    // SAFETY: plain data copied out before the delete.
    let Some(p) = (unsafe { FILEOBS_PENDING.get(key) }).copied() else {
        return 0;
    };
    let _ = FILEOBS_PENDING.remove(key);
    if ret != -EACCES && ret != -EPERM {
        return 0;
    }
    let s = Subject {
        identity: p.identity,
        mode: p.mode,
        ruleset: p.ruleset,
        flags: p.flags,
    };
    events::count(s.identity, COUNT_DENIED);
    let Some(mut slot) = EVENTS.reserve::<FileEvent>(0) else {
        events::count_drop();
        return 0;
    };
    let ev = slot.as_mut_ptr();
    // SAFETY: `ev` points at a reserved, writable FileEvent; fields are
    // written in place so the path can be read straight into the slot.
    unsafe {
        (*ev).hdr = events::header(KIND_FILE, &s, VERDICT_DENY, REASON_NO_RULE, 0);
        (*ev).access = p.access;
        (*ev).layer = LAYER_LANDLOCK;
        (*ev).reason = FILE_REASON_OBSERVED;
        (*ev).errno = (-ret) as u32;
        (*ev).dirfd = p.dirfd;
        (*ev).path = [0u8; FILE_PATH_LEN];
        let len = match bpf_probe_read_user_str_bytes(p.path as *const u8, &mut (*ev).path) {
            Ok(b) => b.len(),
            Err(_) => 0,
        };
        // A string that filled the buffer may have been cut: say so with
        // a length of the whole buffer.
        (*ev).path_len = if len >= FILE_PATH_LEN - 1 {
            FILE_PATH_LEN as u32
        } else {
            len as u32
        };
    }
    slot.submit(0);
    0
}
