//! Syscall observers: `tp_btf/sys_enter` and `tp_btf/sys_exit`.
//!
//! They run for every syscall of every task on the host, so they only ever
//! observe (and, for a tagged process without Corral's seccomp filter whose
//! policy says `assigned = "kill"`, kill). An untagged task costs a cgroup-id
//! helper and two array lookups when it made the CPU's previous syscall too
//! (`SC_LAST_CG`), else one LRU hash lookup: `SC_CG_CACHE` maps the task's
//! cgroup to its identity (0 = untagged), filled by one ancestor walk per
//! cgroup. Both levels are invalidated at once when the daemon bumps
//! `SYSCALL_TAG_GEN` after changing tags (no clearing race: an answer
//! computed before a change carries the old generation).
//!
//! Seccomp runs before the `sys_enter` tracepoint and skips it for a call
//! it refuses, but `sys_exit` still fires. So a tagged task's `sys_exit`
//! returning EPERM or ENOSYS without a matching `sys_enter` (`SC_PENDING`
//! holds the number each tagged thread entered last) is a call the seccomp
//! filter refused: in the kernel (a `deny` entry) or through the launcher's
//! answer to a notification. That is how both layers report through one
//! path, and why `sys_exit` costs one compare for every other return value.

use agent_common::{
    event::{
        COMM_LEN, EventHeader, KIND_SYSCALL, REASON_DENY_RULE, REASON_FAIL_CLOSED, REASON_NO_RULE,
        REASON_PROTECTED, VERDICT_AUDIT, VERDICT_DENY, VERDICT_KILL,
    },
    identity::MODE_AUDIT,
    syscall::{
        BITMAP_BITS, FLAG_ASSIGNED_KILL, LAUNCHER_MAX_DEPTH, LAYER_KERNEL, LAYER_KILL,
        LAYER_NOTIFY, LAYER_OBSERVED, LauncherEntry, NR_IA32_FLAG, NR_IOCTL, NR_SECCOMP, NR_SOCKET,
        NR_SOCKETPAIR, NS_PER_USER_TICK, SECCOMP_FILTER_FLAG_NEW_LISTENER, SyscallEvent,
        SyscallPolicy, TIOCLINUX, TIOCSTI, TS_COMPAT, TaskOffsets, X32_SYSCALL_BIT,
    },
};
use aya_ebpf::{
    Global,
    helpers::{
        bpf_get_current_cgroup_id, bpf_get_current_comm, bpf_get_current_pid_tgid,
        bpf_get_current_task, bpf_ktime_get_boot_ns, bpf_probe_read_kernel,
        generated::bpf_send_signal,
    },
    macros::map,
    maps::{Array, HashMap, LruHashMap, PerCpuArray},
    programs::BtfTracePointContext,
};

use crate::{
    events::{self, COUNT_AUDITED, COUNT_DENIED},
    maps::{EVENTS, SYSCALL_POLICY},
};

/// `task_struct` offsets from the running kernel's BTF; `seccomp_mode` 0
/// when unknown (then no task counts as unfiltered and nothing is killed).
#[unsafe(no_mangle)]
static CORRAL_TASK_OFFSETS: Global<TaskOffsets> = Global::new(TaskOffsets {
    seccomp_mode: 0,
    real_parent: 0,
    tgid: 0,
    ti_status: 0,
    start_boottime: 0,
    _pad: 0,
});

/// `HashMap<u32 tgid, LauncherEntry>`: live `corral run` launchers (see
/// agent-common `maps::SC_LAUNCHERS`). Pinned: launchers write it.
#[map(name = "SC_LAUNCHERS")]
static LAUNCHERS: HashMap<u32, LauncherEntry> = HashMap::pinned(4096, 0);

/// Cached identity of one cgroup, valid for one tag generation.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct CgIdentity {
    pub identity: u32,
    pub generation: u32,
}

/// `Array<u64>[1]`: the tag generation (see agent-common `maps`).
#[map(name = "SYSCALL_TAG_GEN")]
pub static SYSCALL_TAG_GEN: Array<u64> = Array::with_max_entries(1, 0);

/// `LruHashMap<u64 cgroup id, CgIdentity>`: the task's own cgroup → the
/// identity of its deepest tagged ancestor (0: untagged).
#[map(name = "SC_CG_CACHE")]
static CG_CACHE: LruHashMap<u64, CgIdentity> = LruHashMap::with_max_entries(16384, 0);

/// This CPU's last cgroup → identity answer (the first level of the cache).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct LastCgroup {
    pub cgroup: u64,
    pub identity: u32,
    pub generation: u32,
}

#[map(name = "SC_LAST_CG")]
static LAST: PerCpuArray<LastCgroup> = PerCpuArray::with_max_entries(1, 0);

/// `LruHashMap<u32 tid, u32>`: the syscall number a tagged thread entered
/// last, plus one.
#[map(name = "SC_PENDING")]
static PENDING: LruHashMap<u32, u32> = LruHashMap::with_max_entries(65536, 0);

/// `LruHashMap<u64 tgid << 32 | nr, u32 generation>`: audit events already
/// sent (one per process, syscall and policy generation).
#[map(name = "SC_AUDITED")]
static AUDITED: LruHashMap<u64, u32> = LruHashMap::with_max_entries(16384, 0);

const SECCOMP_MODE_FILTER: i32 = 2;
const SIGKILL: u32 = 9;
const EPERM: i64 = 1;
const ENOSYS: i64 = 38;

/// Byte offsets in x86_64 `struct pt_regs` (a fixed layout).
const REGS_DX: usize = 12 * 8;
const REGS_SI: usize = 13 * 8;
const REGS_DI: usize = 14 * 8;
const REGS_ORIG_AX: usize = 15 * 8;

/// The current task's identity id, 0 when untagged.
#[inline(always)]
fn tagged_identity() -> u32 {
    // SAFETY: helper without arguments.
    let cg = unsafe { bpf_get_current_cgroup_id() };
    let generation = match SYSCALL_TAG_GEN.get(0) {
        Some(g) => *g as u32,
        None => 0,
    };
    // This CPU's last answer: syscalls come in runs from one task.
    let last = LAST.get_ptr_mut(0);
    if let Some(l) = last {
        // SAFETY: this CPU's slot; tracing programs run with migration off.
        let l = unsafe { &*l };
        if l.cgroup == cg && l.generation == generation {
            return l.identity;
        }
    }
    // SAFETY: plain-data value copied out field by field.
    let identity = match unsafe { CG_CACHE.get(cg) } {
        Some(e) if e.generation == generation => e.identity,
        _ => {
            let identity = crate::identity::deepest_tagged();
            let _ = CG_CACHE.insert(
                cg,
                CgIdentity {
                    identity,
                    generation,
                },
                0,
            );
            identity
        }
    };
    if let Some(l) = last {
        // SAFETY: as above.
        unsafe {
            *l = LastCgroup {
                cgroup: cg,
                identity,
                generation,
            }
        };
    }
    identity
}

#[inline(always)]
fn reg(regs: *const u8, off: usize) -> u64 {
    // SAFETY: a probe read of a kernel pointer the tracepoint passed.
    unsafe { bpf_probe_read_kernel(regs.wrapping_add(off) as *const u64) }.unwrap_or(0)
}

#[inline(always)]
fn args_of(regs: *const u8) -> [u64; 3] {
    [reg(regs, REGS_DI), reg(regs, REGS_SI), reg(regs, REGS_DX)]
}

/// Whether the current task is bound by Corral's seccomp filter (`None`:
/// unknown). Any filter is not enough: a process can install its own, so
/// the filter counts only when a parent is a registered `corral run`
/// launcher (which installs it before the agent's first instruction).
#[inline(always)]
fn has_corral_filter(identity: u32) -> Option<bool> {
    let o = CORRAL_TASK_OFFSETS.load();
    if o.seccomp_mode == 0 {
        return None;
    }
    // SAFETY: helper without arguments; the pointer is only probe-read.
    let task = unsafe { bpf_get_current_task() } as *const u8;
    // SAFETY: probe read of the current task's own field.
    let mode =
        unsafe { bpf_probe_read_kernel(task.wrapping_add(o.seccomp_mode as usize) as *const i32) };
    if mode.ok()? != SECCOMP_MODE_FILTER {
        return Some(false);
    }
    Some(launched(&o, task, identity))
}

/// Whether a parent of `task` (up to `LAUNCHER_MAX_DEPTH` levels) is a
/// registered launcher of `identity`: the same tgid, started at the same
/// tick (not a later process given a dead launcher's pid).
#[inline(always)]
fn launched(o: &TaskOffsets, task: *const u8, identity: u32) -> bool {
    let mut t = task;
    let mut depth: u32 = 0;
    while depth < LAUNCHER_MAX_DEPTH {
        // SAFETY: probe reads of task fields; a bad pointer reads as 0.
        let parent =
            unsafe { bpf_probe_read_kernel(t.wrapping_add(o.real_parent as usize) as *const u64) }
                .unwrap_or(0);
        if parent == 0 || parent == t as u64 {
            return false;
        }
        let p = parent as *const u8;
        // SAFETY: as above.
        let tgid = unsafe { bpf_probe_read_kernel(p.wrapping_add(o.tgid as usize) as *const u32) }
            .unwrap_or(0);
        // SAFETY: plain-data value copied out.
        if tgid != 0
            && let Some(e) = unsafe { LAUNCHERS.get(tgid) }
        {
            let (want_identity, want_ticks) = (e.identity, e.start_ticks);
            // SAFETY: as above.
            let start = unsafe {
                bpf_probe_read_kernel(p.wrapping_add(o.start_boottime as usize) as *const u64)
            }
            .unwrap_or(0);
            return want_identity == identity && start / NS_PER_USER_TICK == want_ticks;
        }
        t = p;
        depth += 1;
    }
    false
}

/// Whether the current syscall came through the i386 entry point (`int
/// 0x80` from a 64-bit process): its number is not an x86_64 number.
#[inline(always)]
fn ia32_call() -> bool {
    let off = CORRAL_TASK_OFFSETS.load().ti_status;
    if off == 0 {
        return false;
    }
    // SAFETY: helper without arguments; probe read of the task's own field.
    let status = unsafe {
        bpf_probe_read_kernel(
            (bpf_get_current_task() as *const u8).wrapping_add(off as usize) as *const u32,
        )
    };
    status.unwrap_or(0) & TS_COMPAT != 0
}

struct Seen {
    identity: u32,
    mode: u32,
    verdict: u32,
    reason: u32,
    nr: u32,
    layer: u32,
    errno: u32,
    args: [u64; 3],
}

#[inline(always)]
fn emit(e: &Seen) {
    events::count(
        e.identity,
        if e.verdict == VERDICT_AUDIT {
            COUNT_AUDITED
        } else {
            COUNT_DENIED
        },
    );
    let pid_tgid = bpf_get_current_pid_tgid();
    match EVENTS.reserve::<SyscallEvent>(0) {
        Some(mut slot) => {
            slot.write(SyscallEvent {
                hdr: EventHeader {
                    kind: KIND_SYSCALL,
                    identity: e.identity,
                    // SAFETY: helpers without pointer arguments.
                    ts_ns: unsafe { bpf_ktime_get_boot_ns() },
                    cgroup_id: unsafe { bpf_get_current_cgroup_id() },
                    pid: pid_tgid as u32,
                    tgid: (pid_tgid >> 32) as u32,
                    comm: bpf_get_current_comm().unwrap_or([0u8; COMM_LEN]),
                    verdict: e.verdict,
                    mode: e.mode,
                    reason: e.reason,
                    rule_id: 0,
                },
                nr: e.nr,
                layer: e.layer,
                errno: e.errno,
                _pad: 0,
                args: e.args,
            });
            slot.submit(0);
        }
        None => events::count_drop(),
    }
}

/// First audit of this syscall by this process under this policy
/// generation (audit events are reported once, not per call).
#[inline(always)]
fn first_audit(tgid: u32, nr: u32, generation: u32) -> bool {
    let key = ((tgid as u64) << 32) | nr as u64;
    // SAFETY: plain u32 copied out.
    if let Some(g) = unsafe { AUDITED.get(key) }
        && *g == generation
    {
        return false;
    }
    let _ = AUDITED.insert(key, generation, 0);
    true
}

#[inline(always)]
fn reason_for(pol: &SyscallPolicy, nr: u32) -> u32 {
    if pol.denied_bit(nr) {
        REASON_DENY_RULE
    } else {
        REASON_NO_RULE
    }
}

pub fn on_enter(ctx: &BtfTracePointContext) -> i32 {
    let identity = tagged_identity();
    if identity == 0 {
        return 0;
    }
    // SAFETY: plain-data value, read in place.
    let Some(pol) = (unsafe { SYSCALL_POLICY.get(identity) }) else {
        return 0;
    };
    let pid_tgid = bpf_get_current_pid_tgid();
    let id: i64 = ctx.arg(1);
    // The number this thread entered last, plus one (0: none).
    let entered = (id as u32).wrapping_add(1);
    match PENDING.get_ptr_mut(pid_tgid as u32) {
        // SAFETY: this thread's own slot.
        Some(p) => unsafe { *p = entered },
        None => {
            let _ = PENDING.insert(pid_tgid as u32, entered, 0);
        }
    }
    if !pol.confined() || id < 0 {
        return 0;
    }
    // Only x86_64 numbers index the policy: an i386 (`int 0x80`) or x32
    // call is one the policy cannot allow (the launch-time filter refuses
    // both ABIs outright).
    let ia32 = ia32_call();
    let compat = ia32 || id as u64 & X32_SYSCALL_BIT as u64 != 0;
    let nr = if ia32 {
        id as u32 | NR_IA32_FLAG
    } else if compat {
        id as u32
    } else if id >= BITMAP_BITS as i64 {
        return 0;
    } else {
        id as u32
    };
    if !compat && pol.allowed_bit(nr) && nr != NR_SOCKET && nr != NR_SOCKETPAIR {
        return 0;
    }
    let regs: *const u8 = ctx.arg(0);
    let args = args_of(regs);
    if !compat && pol.allows(nr, &args) {
        return 0;
    }
    // The call runs although the policy does not allow it.
    let audit = pol.mode == MODE_AUDIT;
    let (layer, verdict) = match has_corral_filter(identity) {
        // Audit mode: the launcher let it through, and reported it itself.
        // Enforce mode: the filter compiled at launch allows it in the
        // kernel (a hot syscall the policy has dropped since), or a policy
        // change raced the answer.
        Some(true) if audit => return 0,
        Some(true) => (LAYER_KERNEL, VERDICT_AUDIT),
        Some(false) if !audit && pol.flags & FLAG_ASSIGNED_KILL != 0 => (LAYER_KILL, VERDICT_KILL),
        _ => (LAYER_OBSERVED, VERDICT_AUDIT),
    };
    if verdict == VERDICT_KILL {
        // SAFETY: helper with a plain signal number; it signals the current
        // process, which is tagged and whose policy asked for this.
        unsafe { bpf_send_signal(SIGKILL) };
    } else if !first_audit((pid_tgid >> 32) as u32, nr, pol.generation) {
        return 0;
    }
    // Bitmaps are only ever indexed by an x86_64 number (the verifier
    // cannot see that a flagged number never reaches them otherwise).
    let reason = if compat {
        REASON_NO_RULE
    } else {
        reason_for(pol, nr)
    };
    emit(&Seen {
        identity,
        mode: pol.mode,
        verdict,
        reason,
        nr,
        layer,
        errno: 0,
        args,
    });
    0
}

/// Only calls that fail with EPERM or ENOSYS can be refusals, so every other
/// exit costs one compare, whoever made it. A tagged thread's EPERM/ENOSYS
/// exit is a refusal when the thread did not enter that syscall: its last
/// `sys_enter` was for another number (seccomp skips `sys_enter` for a call
/// it refuses). The one miss: a call the thread entered last time, refused
/// right after a policy change with no other syscall between.
pub fn on_exit(ctx: &BtfTracePointContext) -> i32 {
    let ret: i64 = ctx.arg(1);
    if ret != -EPERM && ret != -ENOSYS {
        return 0;
    }
    let identity = tagged_identity();
    if identity == 0 {
        return 0;
    }
    let regs: *const u8 = ctx.arg(0);
    let raw_nr = reg(regs, REGS_ORIG_AX) as u32;
    // SAFETY: plain u32 copied out.
    if let Some(last) = unsafe { PENDING.get(bpf_get_current_pid_tgid() as u32) }
        && *last == raw_nr.wrapping_add(1)
    {
        // It entered: the call itself failed, nobody refused it.
        return 0;
    }
    // A launched agent's launcher answers (and reports) every refusal but
    // the ones nobody answers (ENOSYS: the launcher is gone).
    if ret == -EPERM && has_corral_filter(identity) == Some(true) {
        return 0;
    }
    // SAFETY: plain-data value, read in place.
    let Some(pol) = (unsafe { SYSCALL_POLICY.get(identity) }) else {
        return 0;
    };
    let args = args_of(regs);
    // The launch-time filter refuses every i386 and x32 call in the kernel.
    let ia32 = ia32_call();
    let compat = ia32 || raw_nr >= BITMAP_BITS;
    let nr = if ia32 { raw_nr | NR_IA32_FLAG } else { raw_nr };
    let in_kernel = compat
        || pol.denied_bit(raw_nr & (BITMAP_BITS - 1))
        || (nr == NR_SECCOMP && args[1] & SECCOMP_FILTER_FLAG_NEW_LISTENER != 0);
    // The launcher's terminal filter (every `corral run` agent).
    let terminal = nr == NR_IOCTL && (args[1] as u32 == TIOCSTI || args[1] as u32 == TIOCLINUX);
    let (layer, reason) = if terminal && ret == -EPERM {
        (LAYER_KERNEL, REASON_PROTECTED)
    } else if ret == -ENOSYS {
        // Notified, and nobody answers: the launcher is gone (closed).
        (LAYER_NOTIFY, REASON_FAIL_CLOSED)
    } else if compat {
        (LAYER_KERNEL, REASON_NO_RULE)
    } else if in_kernel {
        (LAYER_KERNEL, reason_for(pol, raw_nr & (BITMAP_BITS - 1)))
    } else {
        (LAYER_NOTIFY, reason_for(pol, raw_nr & (BITMAP_BITS - 1)))
    };
    emit(&Seen {
        identity,
        mode: pol.mode,
        verdict: VERDICT_DENY,
        reason,
        nr,
        layer,
        errno: (-ret) as u32,
        args,
    });
    0
}
