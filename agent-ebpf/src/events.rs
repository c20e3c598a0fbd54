//! Filling event headers, counting decisions and lost events.

use agent_common::{
    event::{COMM_LEN, EventHeader},
    identity::IdentityStats,
};
use aya_ebpf::helpers::{
    bpf_get_current_cgroup_id, bpf_get_current_comm, bpf_get_current_pid_tgid,
    bpf_ktime_get_boot_ns,
};

use crate::{
    identity::Subject,
    maps::{EVENT_DROPS, IDENTITY_STATS},
};

pub const COUNT_ALLOWED: u32 = 0;
pub const COUNT_DENIED: u32 = 1;
pub const COUNT_AUDITED: u32 = 2;

#[inline(always)]
pub fn header(kind: u32, s: &Subject, verdict: u32, reason: u32, rule_id: u32) -> EventHeader {
    let pid_tgid = bpf_get_current_pid_tgid();
    let comm = bpf_get_current_comm().unwrap_or([0u8; COMM_LEN]);
    EventHeader {
        kind,
        identity: s.identity,
        // SAFETY: helpers without pointer arguments.
        ts_ns: unsafe { bpf_ktime_get_boot_ns() },
        cgroup_id: unsafe { bpf_get_current_cgroup_id() },
        pid: pid_tgid as u32,
        tgid: (pid_tgid >> 32) as u32,
        comm,
        verdict,
        mode: s.mode,
        reason,
        rule_id,
    }
}

/// A reservation failed: the event is lost, and the reader must know.
#[inline(always)]
pub fn count_drop() {
    if let Some(p) = EVENT_DROPS.get_ptr_mut(0) {
        // SAFETY: per-CPU slot, no concurrent writer on this CPU.
        unsafe { *p += 1 };
    }
}

#[inline(always)]
pub fn count(identity: u32, which: u32) {
    if let Some(p) = IDENTITY_STATS.get_ptr_mut(identity) {
        // SAFETY: per-CPU slot, no concurrent writer on this CPU.
        let st: &mut IdentityStats = unsafe { &mut *p };
        match which {
            COUNT_ALLOWED => st.allowed += 1,
            COUNT_DENIED => st.denied += 1,
            _ => st.audited += 1,
        }
    }
}
