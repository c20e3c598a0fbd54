//! `[files]` rules: `file_open` (every open and exec), and the link/rename
//! hooks that would otherwise let a path rule be walked around.
//!
//! One LPM lookup decides (see `agent_common::file::FileRuleValue`). The
//! opened path comes from `bpf_d_path` (the real path after symlinks,
//! `/proc/self/fd/N` magic links, `openat2` and io_uring all resolved by the
//! VFS); a directory is looked up with a `/` appended so the rule `/a/b/`
//! covers `/a/b` itself but never `/a/bc`.
//!
//! `file_open` is in `open`, the `path_*` hooks and the path walk here; the
//! lookup, the decision and the events they share are in `verdict`, so every
//! hook judges and reports alike.

mod open;
mod verdict;

use agent_common::{
    event::{REASON_DENY_RULE, REASON_PROTECTED, VERDICT_AUDIT, VERDICT_DENY},
    file::{
        ACCESS_WRITE, FILE_OP_CHMOD, FILE_OP_CHOWN, FILE_OP_CREATE, FILE_OP_LINK_SOURCE,
        FILE_OP_LINK_TARGET, FILE_OP_MKDIR, FILE_OP_RENAME_SOURCE, FILE_OP_RENAME_TARGET,
        FILE_OP_RMDIR, FILE_OP_SYMLINK, FILE_OP_TRUNCATE, FILE_OP_UNLINK, FILE_REASON_NO_HOST_PATH,
        FILE_REASON_PATH_TOO_LONG, FILE_REASON_PROTECTED, FILE_REASON_RULES_BELOW,
        FILE_VALUE_PROTECTED_BELOW, FILE_VALUE_RULES_BELOW, IDENTITY_FLAG_FILES,
    },
    identity::MODE_AUDIT,
};
use aya_ebpf::programs::LsmContext;

use self::verdict::{
    builtin_refusal, emit_op, judge, lookup, refuse_by_rule, refuse_protected, refuse_unresolved,
};
use crate::{
    events::{self, COUNT_AUDITED, COUNT_DENIED},
    identity::{self, Subject},
    lsm::{
        EPERM,
        kernel::{self, Built, FileScratch, PATH_BUF},
    },
};

pub use open::file_open;

/// Judges write access to (`mnt`, `dentry`) for a link or rename side.
/// `dir`: look the path up as a directory. Returns the hook's verdict.
/// Identities without `[files]` meet only Corral's built-in protected
/// paths (and a path that is not a host path).
#[inline(always)]
fn judge_side(
    s: &Subject,
    sc: &mut FileScratch,
    mnt: u64,
    dentry: u64,
    dir: bool,
    op: u32,
    check_below: bool,
) -> i32 {
    let confined = s.flags & IDENTITY_FLAG_FILES != 0;
    let mut len = corral_path_of(mnt, dentry);
    if len == 0 {
        let why = sc.why;
        if !confined && why != FILE_REASON_NO_HOST_PATH {
            return 0;
        }
        return refuse_unresolved(s, sc, op, ACCESS_WRITE, why);
    }
    if dir && len > 1 && (len as usize) < PATH_BUF {
        // SAFETY: bounded below PATH_BUF.
        unsafe {
            *sc.path
                .as_mut_ptr()
                .add(kernel::bounded(len as usize, PATH_BUF - 1)) = b'/'
        };
        len += 1;
    }
    let v = lookup(sc, s.ruleset, len);
    if check_below
        && let Some(val) = v
        && val.flags & FILE_VALUE_PROTECTED_BELOW != 0
        && val.len == len
    {
        // Moving a directory above Corral's protected paths would move
        // them out from under their rules.
        return refuse_protected(s, sc, len, op, ACCESS_WRITE, 0);
    }
    if let Some((access, rule_id)) = builtin_refusal(v, len, dir, ACCESS_WRITE) {
        return refuse_protected(s, sc, len, op, access, rule_id);
    }
    if !confined {
        return 0;
    }
    if check_below
        && let Some(val) = v
        && val.flags & FILE_VALUE_RULES_BELOW != 0
        && val.len == len
    {
        // Moving this directory would carry the subjects of the rules
        // beneath it somewhere else.
        let audit = s.mode == MODE_AUDIT;
        let verdict = if audit { VERDICT_AUDIT } else { VERDICT_DENY };
        events::count(s.identity, if audit { COUNT_AUDITED } else { COUNT_DENIED });
        emit_op(
            s,
            sc,
            len,
            op,
            ACCESS_WRITE,
            verdict,
            REASON_DENY_RULE,
            FILE_REASON_RULES_BELOW,
            0,
        );
        return if audit { 0 } else { -EPERM };
    }
    match judge(v, len, dir, ACCESS_WRITE) {
        None => 0,
        Some(refused) => refuse_by_rule(s, sc, len, op, refused),
    }
}

/// Judges one side of a change (see `judge_side`).
#[inline(always)]
fn judge_one(s: &Subject, mnt: u64, dentry: u64, dir: bool, op: u32, check_below: bool) -> i32 {
    let Some(sc) = kernel::scratch() else {
        return 0;
    };
    judge_side(s, sc, mnt, dentry, dir, op, check_below)
}

/// Self-protection for a change to a directory entry: none on bpffs (a
/// link's pin removed detaches it) or cgroupfs (identities), for every
/// tagged identity. The hook's verdict when refused.
#[inline(always)]
fn protected_entry(s: &Subject, mnt: u64, dentry: u64, op: u32) -> Option<i32> {
    if !kernel::protected_fs(kernel::dentry_magic(&kernel::offsets(), dentry)) {
        return None;
    }
    let len = corral_path_of(mnt, dentry);
    let sc = kernel::scratch()?;
    events::count(s.identity, COUNT_DENIED);
    emit_op(
        s,
        sc,
        len,
        op,
        ACCESS_WRITE,
        VERDICT_DENY,
        REASON_PROTECTED,
        FILE_REASON_PROTECTED,
        0,
    );
    Some(-EPERM)
}

/// `lsm/path_link(old_dentry, new_dir, new_dentry)`: a tagged identity may
/// link only what it may write, into a place it may write (both sides are on
/// `new_dir`'s mount: the kernel refuses cross-mount links).
pub fn path_link(ctx: &LsmContext) -> i32 {
    let Some(s) = identity::current() else {
        return 0;
    };
    let old_dentry = kernel::arg_scalar(ctx, 0);
    let new_dir = kernel::arg_scalar(ctx, 1);
    let new_dentry = kernel::arg_scalar(ctx, 2);
    let mnt = kernel::read_ptr(new_dir, kernel::offsets().path_mnt);
    if let Some(r) = protected_entry(&s, mnt, new_dentry, FILE_OP_LINK_TARGET) {
        return r;
    }
    let r = judge_one(&s, mnt, old_dentry, false, FILE_OP_LINK_SOURCE, false);
    if r != 0 {
        return r;
    }
    judge_one(&s, mnt, new_dentry, false, FILE_OP_LINK_TARGET, false)
}

/// `lsm/path_rename(old_dir, old_dentry, new_dir, new_dentry, flags)`:
/// write access is needed on both sides; a directory with rules beneath it
/// cannot be moved.
pub fn path_rename(ctx: &LsmContext) -> i32 {
    let Some(s) = identity::current() else {
        return 0;
    };
    let old_dir = kernel::arg_scalar(ctx, 0);
    let old_dentry = kernel::arg_scalar(ctx, 1);
    let new_dir = kernel::arg_scalar(ctx, 2);
    let new_dentry = kernel::arg_scalar(ctx, 3);
    let o = kernel::offsets();
    let old_mnt = kernel::read_ptr(old_dir, o.path_mnt);
    let new_mnt = kernel::read_ptr(new_dir, o.path_mnt);
    if let Some(r) = protected_entry(&s, old_mnt, old_dentry, FILE_OP_RENAME_SOURCE) {
        return r;
    }
    if let Some(r) = protected_entry(&s, new_mnt, new_dentry, FILE_OP_RENAME_TARGET) {
        return r;
    }
    let dir = kernel::dentry_is_dir(&o, old_dentry);
    let r = judge_one(&s, old_mnt, old_dentry, dir, FILE_OP_RENAME_SOURCE, dir);
    if r != 0 {
        return r;
    }
    // RENAME_EXCHANGE moves the target the other way: judge it as a source.
    let new_is_dir = dir || kernel::dentry_is_dir(&o, new_dentry);
    judge_one(
        &s,
        new_mnt,
        new_dentry,
        new_is_dir,
        FILE_OP_RENAME_TARGET,
        new_is_dir,
    )
}

/// A change to the directory entry `dentry` in `dir` (create, mkdir,
/// symlink, unlink, rmdir): needs write access to the entry's path.
#[inline(always)]
fn entry_change(ctx: &LsmContext, op: u32, dir_entry: bool) -> i32 {
    let Some(s) = identity::current() else {
        return 0;
    };
    let dir = kernel::arg_scalar(ctx, 0);
    let dentry = kernel::arg_scalar(ctx, 1);
    let mnt = kernel::read_ptr(dir, kernel::offsets().path_mnt);
    if let Some(r) = protected_entry(&s, mnt, dentry, op) {
        return r;
    }
    judge_one(&s, mnt, dentry, dir_entry, op, false)
}

/// `lsm/path_mknod(dir, dentry, mode, dev)`: also every `O_CREAT` open that
/// creates (the kernel asks before creating, so nothing is left behind).
pub fn path_mknod(ctx: &LsmContext) -> i32 {
    entry_change(ctx, FILE_OP_CREATE, false)
}

/// `lsm/path_mkdir(dir, dentry, mode)`.
pub fn path_mkdir(ctx: &LsmContext) -> i32 {
    entry_change(ctx, FILE_OP_MKDIR, true)
}

/// `lsm/path_symlink(dir, dentry, old_name)`.
pub fn path_symlink(ctx: &LsmContext) -> i32 {
    entry_change(ctx, FILE_OP_SYMLINK, false)
}

/// `lsm/path_unlink(dir, dentry)`.
pub fn path_unlink(ctx: &LsmContext) -> i32 {
    entry_change(ctx, FILE_OP_UNLINK, false)
}

/// `lsm/path_rmdir(dir, dentry)`.
pub fn path_rmdir(ctx: &LsmContext) -> i32 {
    entry_change(ctx, FILE_OP_RMDIR, true)
}

/// `lsm/path_truncate(path)`: truncate(2) by path never opens the file.
pub fn path_truncate(ctx: &LsmContext) -> i32 {
    path_change(ctx, FILE_OP_TRUNCATE, false)
}

/// `lsm/path_chmod(path, mode)`: chmod, fchmod and fchmodat all come here.
pub fn path_chmod(ctx: &LsmContext) -> i32 {
    path_change(ctx, FILE_OP_CHMOD, true)
}

/// `lsm/path_chown(path, uid, gid)`: the chown family, fchown included.
pub fn path_chown(ctx: &LsmContext) -> i32 {
    path_change(ctx, FILE_OP_CHOWN, true)
}

/// A change to an existing path (its size, mode or owner) needs write
/// access to it. `any_kind`: the path may be a directory (looked up as one).
fn path_change(ctx: &LsmContext, op: u32, any_kind: bool) -> i32 {
    let Some(s) = identity::current() else {
        return 0;
    };
    let path = kernel::arg_scalar(ctx, 0);
    let o = kernel::offsets();
    let mnt = kernel::read_ptr(path, o.path_mnt);
    let dentry = kernel::read_ptr(path, o.path_dentry);
    if let Some(r) = protected_entry(&s, mnt, dentry, op) {
        return r;
    }
    let dir = any_kind && kernel::dentry_is_dir(&o, dentry);
    judge_one(&s, mnt, dentry, dir, op, false)
}

/// The path walk, as a BPF *global* function: the verifier checks it once,
/// on its own, and a caller sees only its scalar result (inlined, the walk's
/// loop multiplied the states of everything after it, twice in link and
/// rename, past the verifier's limit). Writes the path of (`mnt`, `dentry`)
/// into the scratch buffer; returns its length, 0 when it cannot be had.
/// Scalars only: a typed kernel pointer may not be passed to a global
/// function (see `kernel::arg_scalar`).
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn corral_path_of(mnt: u64, dentry: u64) -> u32 {
    let o = kernel::offsets();
    let Some(sc) = kernel::scratch() else {
        return 0;
    };
    let ns = kernel::current_mnt_ns(&o);
    match kernel::build_path(&o, sc, mnt, dentry, ns) {
        Built::Ok(l) => l,
        Built::TooLong => {
            sc.why = FILE_REASON_PATH_TOO_LONG;
            0
        }
        Built::NoHostPath => {
            sc.why = FILE_REASON_NO_HOST_PATH;
            0
        }
    }
}

/// Path of a `struct path *` into the scratch buffer, for an event.
#[inline(always)]
pub fn path_of(path: u64) -> u32 {
    let o = kernel::offsets();
    corral_path_of(
        kernel::read_ptr(path, o.path_mnt),
        kernel::read_ptr(path, o.path_dentry),
    )
}

/// Reports a refused mount (self-protection).
#[inline(always)]
pub fn emit_mount(s: &Subject, sc: &FileScratch, len: u32, op: u32) {
    events::count(s.identity, COUNT_DENIED);
    emit_op(
        s,
        sc,
        len,
        op,
        ACCESS_WRITE,
        VERDICT_DENY,
        REASON_PROTECTED,
        FILE_REASON_PROTECTED,
        0,
    );
}
