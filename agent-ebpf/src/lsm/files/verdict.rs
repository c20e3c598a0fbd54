//! What every `[files]` hook shares: the rule lookup, the decision for each
//! access bit, and the counters and events of a refusal.

use crate::{
    events::{self, COUNT_AUDITED, COUNT_DENIED},
    identity::Subject,
    lsm::{
        EPERM,
        kernel::{self, FileScratch},
    },
    maps::{EVENTS, FILE_RULES},
};
use agent_common::{
    event::{
        KIND_FILE, KIND_FILE_OP, REASON_DENY_RULE, REASON_FAIL_CLOSED, REASON_NO_RULE,
        REASON_PROTECTED, VERDICT_AUDIT, VERDICT_DENY,
    },
    file::{
        ACCESS_EXEC, ACCESS_IDX_EXEC, ACCESS_IDX_READ, ACCESS_IDX_WRITE, ACCESS_READ, ACCESS_WRITE,
        FILE_KEY_FIXED_BITS, FILE_KEY_PATH_LEN, FILE_PATH_LEN, FILE_REASON_NONE,
        FILE_REASON_PROTECTED, FILE_VALUE_EXACT, FileEvent, FileKey, FileOpEvent, FileRuleValue,
        LAYER_LSM, is_builtin_rule,
    },
    identity::MODE_AUDIT,
    net::{ACTION_ALLOW, ACTION_DENY},
};
use aya_ebpf::{
    helpers::generated::{bpf_ktime_get_boot_ns, bpf_probe_read_kernel},
    maps::lpm_trie::Key,
};

/// Looks `s.path[..len]` up in the identity's ruleset.
#[inline(always)]
pub(super) fn lookup(
    s: &mut FileScratch,
    ruleset: u32,
    len: u32,
) -> Option<&'static FileRuleValue> {
    let bytes = if len as usize > FILE_KEY_PATH_LEN {
        FILE_KEY_PATH_LEN as u32
    } else {
        len
    };
    s.prefix_len = FILE_KEY_FIXED_BITS + 8 * bytes;
    s.ruleset_be = ruleset.to_be();
    // SAFETY: FileScratch starts with the exact layout of Key<FileKey>
    // (packed: u32 prefix, u32 ruleset, path bytes) and is larger.
    let key = unsafe { &*(s as *const FileScratch as *const Key<FileKey>) };
    FILE_RULES.get(key)
}

/// The decision for one access: (action, rule_id); action 0 = no rule.
/// `exact` holds the decisions for the entry's own path (a file of an exact
/// rule, or the directory of a `/` rule, where an exact rule of the same
/// path wins); `beneath` for everything the entry is only a prefix of. A
/// directory is looked up with a `/` appended, so an exact entry is its own
/// path when it is one byte shorter. Replayed by agent-user
/// `daemon::lsm::compile::decide`.
#[inline(always)]
pub(super) fn decide(v: Option<&FileRuleValue>, len: u32, is_dir: bool, idx: usize) -> (u32, u32) {
    let Some(v) = v else { return (0, 0) };
    let own = v.len == len || (is_dir && v.flags & FILE_VALUE_EXACT != 0 && v.len + 1 == len);
    let d = if own {
        &v.exact[idx & 3]
    } else {
        &v.beneath[idx & 3]
    };
    if d.expires_ns == 0 {
        return (d.action, d.rule_id);
    }
    // A lease grant: the clock only when one is in play.
    // SAFETY: helper without pointer arguments.
    d.at(unsafe { bpf_ktime_get_boot_ns() })
}

/// Every requested access must be allowed. Returns (access, action,
/// rule_id) of the first refused one, or None when all are allowed.
#[inline(always)]
pub(super) fn judge(
    v: Option<&FileRuleValue>,
    len: u32,
    is_dir: bool,
    access: u32,
) -> Option<(u32, u32, u32)> {
    let wanted = [
        (ACCESS_READ, ACCESS_IDX_READ),
        (ACCESS_WRITE, ACCESS_IDX_WRITE),
        (ACCESS_EXEC, ACCESS_IDX_EXEC),
    ];
    let mut i = 0;
    while i < 3 {
        let (bit, idx) = wanted[i];
        if access & bit != 0 {
            let (action, rule_id) = decide(v, len, is_dir, idx);
            if action != ACTION_ALLOW {
                return Some((bit, action, rule_id));
            }
        }
        i += 1;
    }
    None
}

/// A requested access refused by one of Corral's built-in protected paths
/// (self-protection: every mode, every identity). Returns (access,
/// rule_id) of the first such access.
#[inline(always)]
pub(super) fn builtin_refusal(
    v: Option<&FileRuleValue>,
    len: u32,
    is_dir: bool,
    access: u32,
) -> Option<(u32, u32)> {
    let wanted = [
        (ACCESS_READ, ACCESS_IDX_READ),
        (ACCESS_WRITE, ACCESS_IDX_WRITE),
        (ACCESS_EXEC, ACCESS_IDX_EXEC),
    ];
    v?;
    let mut i = 0;
    while i < 3 {
        let (bit, idx) = wanted[i];
        if access & bit != 0 {
            let (action, rule_id) = decide(v, len, is_dir, idx);
            if action == ACTION_DENY && is_builtin_rule(rule_id) {
                return Some((bit, rule_id));
            }
        }
        i += 1;
    }
    None
}

/// Self-protection refusal of an open (`op` 0) or a change: every mode.
#[inline(always)]
pub(super) fn refuse_protected(
    s: &Subject,
    sc: &FileScratch,
    len: u32,
    op: u32,
    access: u32,
    rule_id: u32,
) -> i32 {
    events::count(s.identity, COUNT_DENIED);
    let d = Decision {
        verdict: VERDICT_DENY,
        reason: REASON_PROTECTED,
        file_reason: FILE_REASON_PROTECTED,
        rule_id,
    };
    emit_decision(s, sc, len, op, access, &d);
    -EPERM
}

/// Copies up to `FILE_PATH_LEN` bytes of the resolved path into an event.
#[inline(always)]
pub(super) fn copy_path(dst: *mut u8, s: &FileScratch, len: u32) -> u32 {
    let n = if len as usize > FILE_PATH_LEN {
        FILE_PATH_LEN as u32
    } else {
        len
    };
    if n > 0 {
        // SAFETY: n ≤ FILE_PATH_LEN bytes into the event's path field, from
        // the scratch buffer (at least PATH_BUF bytes).
        unsafe {
            bpf_probe_read_kernel(
                dst.cast(),
                kernel::bounded(n as usize, FILE_PATH_LEN * 2 - 1) as u32,
                s.path.as_ptr().cast(),
            )
        };
    }
    n
}

/// What an event says about a decision.
pub(super) struct Decision {
    pub verdict: u32,
    pub reason: u32,
    pub file_reason: u32,
    pub rule_id: u32,
}

/// Reports a decision on an open (`op` 0) or on a change (`emit_op`).
#[inline(always)]
fn emit_decision(s: &Subject, sc: &FileScratch, len: u32, op: u32, access: u32, d: &Decision) {
    if op == 0 {
        emit_open(
            s,
            sc,
            len,
            access,
            d.verdict,
            d.reason,
            d.file_reason,
            d.rule_id,
        );
    } else {
        emit_op(
            s,
            sc,
            len,
            op,
            access,
            d.verdict,
            d.reason,
            d.file_reason,
            d.rule_id,
        );
    }
}

/// Reports a refused (or audited) open.
#[inline(always)]
#[expect(clippy::too_many_arguments, reason = "one event, built in place")]
pub(super) fn emit_open(
    s: &Subject,
    sc: &FileScratch,
    path_len: u32,
    access: u32,
    verdict: u32,
    reason: u32,
    file_reason: u32,
    rule_id: u32,
) {
    let Some(mut slot) = EVENTS.reserve::<FileEvent>(0) else {
        events::count_drop();
        return;
    };
    let p = slot.as_mut_ptr();
    // SAFETY: writes into the reserved, correctly sized slot.
    unsafe {
        (*p).hdr = events::header(KIND_FILE, s, verdict, reason, rule_id);
        (*p).access = access;
        (*p).layer = LAYER_LSM;
        (*p).reason = file_reason;
        (*p).errno = if verdict == VERDICT_DENY {
            EPERM as u32
        } else {
            0
        };
        (*p).dirfd = 0;
        (*p).path_len = copy_path((*p).path.as_mut_ptr(), sc, path_len);
    }
    slot.submit(0);
}

#[inline(always)]
#[expect(clippy::too_many_arguments, reason = "one event, built in place")]
pub(super) fn emit_op(
    s: &Subject,
    sc: &FileScratch,
    path_len: u32,
    op: u32,
    access: u32,
    verdict: u32,
    reason: u32,
    file_reason: u32,
    rule_id: u32,
) {
    let Some(mut slot) = EVENTS.reserve::<FileOpEvent>(0) else {
        events::count_drop();
        return;
    };
    let p = slot.as_mut_ptr();
    // SAFETY: writes into the reserved, correctly sized slot.
    unsafe {
        (*p).hdr = events::header(KIND_FILE_OP, s, verdict, reason, rule_id);
        (*p).op = op;
        (*p).access = access;
        (*p).reason = file_reason;
        (*p).path_len = copy_path((*p).path.as_mut_ptr(), sc, path_len);
    }
    slot.submit(0);
}

/// Counts and reports a rule refusal; the hook's return value.
#[inline(always)]
pub(super) fn refuse_by_rule(
    s: &Subject,
    sc: &FileScratch,
    len: u32,
    op: u32,
    refused: (u32, u32, u32),
) -> i32 {
    let (access, action, rule_id) = refused;
    let reason = if action == 0 {
        REASON_NO_RULE
    } else {
        REASON_DENY_RULE
    };
    let audit = s.mode == MODE_AUDIT;
    let verdict = if audit { VERDICT_AUDIT } else { VERDICT_DENY };
    events::count(s.identity, if audit { COUNT_AUDITED } else { COUNT_DENIED });
    let d = Decision {
        verdict,
        reason,
        file_reason: FILE_REASON_NONE,
        rule_id,
    };
    emit_decision(s, sc, len, op, access, &d);
    if audit { 0 } else { -EPERM }
}

/// Fail closed: the path could not be established. Audit mode reports only.
#[inline(always)]
pub(super) fn refuse_unresolved(
    s: &Subject,
    sc: &FileScratch,
    op: u32,
    access: u32,
    file_reason: u32,
) -> i32 {
    let audit = s.mode == MODE_AUDIT;
    let verdict = if audit { VERDICT_AUDIT } else { VERDICT_DENY };
    events::count(s.identity, if audit { COUNT_AUDITED } else { COUNT_DENIED });
    let d = Decision {
        verdict,
        reason: REASON_FAIL_CLOSED,
        file_reason,
        rule_id: 0,
    };
    emit_decision(s, sc, 0, op, access, &d);
    if audit { 0 } else { -EPERM }
}
