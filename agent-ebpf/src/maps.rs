//! Map definitions. Keys and values are documented in agent-common's `maps`
//! module; every map is pinned by name so a restarted daemon re-adopts it.

use agent_common::{
    file::{FileKey, FileRuleValue},
    identity::{IdentityState, IdentityStats, MAX_IDENTITIES},
    net::{Net4Key, Net6Key, NetRuleList},
};
use aya_ebpf::{
    bindings::BPF_F_NO_PREALLOC,
    macros::map,
    maps::{HashMap, LpmTrie, PerCpuArray, RingBuf},
};

/// Agent cgroups. Sized for many sub-cgroups per identity.
#[map(name = "CGROUP_IDENTITY")]
pub static CGROUP_IDENTITY: HashMap<u64, u32> = HashMap::pinned(65536, 0);

#[map(name = "IDENTITIES")]
pub static IDENTITIES: HashMap<u32, IdentityState> = HashMap::pinned(MAX_IDENTITIES, 0);

/// Two rule sets (old and new) of every identity must fit during a reload.
#[map(name = "NET4_RULES")]
pub static NET4_RULES: LpmTrie<Net4Key, NetRuleList> = LpmTrie::pinned(524288, BPF_F_NO_PREALLOC);

#[map(name = "NET6_RULES")]
pub static NET6_RULES: LpmTrie<Net6Key, NetRuleList> = LpmTrie::pinned(524288, BPF_F_NO_PREALLOC);

/// Size is overridden by the daemon's `--ringbuf-size`.
#[map(name = "EVENTS")]
pub static EVENTS: RingBuf = RingBuf::pinned(16 * 1024 * 1024, 0);

#[map(name = "EVENT_DROPS")]
pub static EVENT_DROPS: PerCpuArray<u64> = PerCpuArray::pinned(1, 0);

#[map(name = "IDENTITY_STATS")]
pub static IDENTITY_STATS: PerCpuArray<IdentityStats> = PerCpuArray::pinned(MAX_IDENTITIES, 0);

/// `[files]` rules of every identity: two rule sets (old and new) of a
/// 100,000-rule policy fit during a reload.
#[map(name = "FILE_RULES")]
pub static FILE_RULES: LpmTrie<FileKey, FileRuleValue> = LpmTrie::pinned(262144, BPF_F_NO_PREALLOC);

// The eBPF crate's one import loop, kept: the scratch value's layout (the
// LPM key it starts with, the build area, the opaque word) belongs to the
// path walk in `lsm::kernel` that is the only code touching it.
/// The LSM programs' path buffer (per CPU, not pinned: holds nothing
/// between runs).
#[map(name = "FILE_SCRATCH")]
pub static FILE_SCRATCH: PerCpuArray<crate::lsm::kernel::FileScratch> =
    PerCpuArray::with_max_entries(1, 0);

/// Per-identity syscall allowlists, read by the syscall observers here and
/// by `corral run` launchers through the pin (see agent-common `syscall`).
#[map(name = "SYSCALL_POLICY")]
pub static SYSCALL_POLICY: HashMap<u32, agent_common::syscall::SyscallPolicy> =
    HashMap::pinned(MAX_IDENTITIES, 0);
