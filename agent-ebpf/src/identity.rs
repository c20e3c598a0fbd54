//! Who is calling: every hook resolves its subject here.

use agent_common::identity::{CGROUP_MAX_DEPTH, MODE_ENFORCE};
use aya_ebpf::{Global, helpers::bpf_get_current_ancestor_cgroup_id};

use crate::maps::{CGROUP_IDENTITY, IDENTITIES};

/// The loading daemon's tgid. Only names the daemon as a target in
/// self-protection events: it exempts nobody. A pid outlives the daemon
/// (pins keep the programs running while it is stopped), so a tagged
/// process later given that pid must still be judged; the daemon is never
/// judged because it is never tagged (it refuses to run in, or tag, a
/// cgroup that holds it).
#[unsafe(no_mangle)]
static CORRAL_DAEMON_TGID: Global<u32> = Global::new(0);

pub struct Subject {
    pub identity: u32,
    pub mode: u32,
    pub ruleset: u32,
    /// `IdentityState::flags` (e.g. `file::IDENTITY_FLAG_FILES`).
    pub flags: u32,
}

/// The daemon's tgid (0 before the loader set it).
#[inline(always)]
pub fn daemon_tgid() -> u32 {
    CORRAL_DAEMON_TGID.load()
}

/// The one rule for who the calling task is: the identity of the deepest
/// tagged cgroup among its ancestors, 0 when none is tagged. Every program
/// that judges the calling task uses it (the syscall observers through
/// their cache); `lsm::kernel::task_identity` applies the same rule to
/// another task from its cgroup's ancestor array, and the hand-assembled
/// unix programs (agent-user `daemon/kernel/unix_prog.rs`) spell it in
/// instructions. `tests/tests/nested_identity.rs` checks that the network
/// and unix programs agree on an identity nested in another.
#[inline(always)]
pub fn deepest_tagged() -> u32 {
    // Plain scalar accumulator: an Option accumulator upset the verifier.
    let mut found: u32 = 0;
    let mut level: i32 = 0;
    while level < CGROUP_MAX_DEPTH {
        // SAFETY: helper with no pointer arguments.
        let cg = unsafe { bpf_get_current_ancestor_cgroup_id(level) };
        if cg == 0 {
            break;
        }
        // SAFETY: the value is a plain u32 copied out immediately.
        if let Some(id) = unsafe { CGROUP_IDENTITY.get(cg) } {
            found = *id;
        }
        level += 1;
    }
    found
}

/// The identity of the current task: the deepest tagged cgroup among its
/// ancestors (so a sub-cgroup an agent creates is still that agent).
/// `None` for untagged tasks, which are never judged.
#[inline(always)]
pub fn current() -> Option<Subject> {
    let found = deepest_tagged();
    if found == 0 {
        return None;
    }
    // SAFETY: plain-data value copied out field by field.
    match unsafe { IDENTITIES.get(found) } {
        Some(st) => Some(Subject {
            identity: found,
            mode: st.mode,
            ruleset: st.ruleset,
            flags: st.flags,
        }),
        // Tagged but without state (a half-removed identity): judge it with
        // an empty rule set in enforce mode, i.e. deny everything.
        None => Some(Subject {
            identity: found,
            mode: MODE_ENFORCE,
            ruleset: 0,
            flags: 0,
        }),
    }
}
