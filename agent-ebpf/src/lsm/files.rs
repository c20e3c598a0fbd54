//! `[files]` rules: `file_open` (every open and exec), and the link/rename
//! hooks that would otherwise let a path rule be walked around.
//!
//! One LPM lookup decides (see `agent_common::file::FileRuleValue`). The
//! opened path comes from `bpf_d_path` (the real path after symlinks,
//! `/proc/self/fd/N` magic links, `openat2` and io_uring all resolved by the
//! VFS); a directory is looked up with a `/` appended so the rule `/a/b/`
//! covers `/a/b` itself but never `/a/bc`.

use agent_common::{
    event::{
        KIND_FILE, KIND_FILE_OP, REASON_DENY_RULE, REASON_FAIL_CLOSED, REASON_NO_RULE,
        REASON_PROTECTED, VERDICT_AUDIT, VERDICT_DENY,
    },
    file::{
        ACCESS_EXEC, ACCESS_IDX_EXEC, ACCESS_IDX_READ, ACCESS_IDX_WRITE, ACCESS_READ, ACCESS_WRITE,
        FILE_KEY_FIXED_BITS, FILE_KEY_PATH_LEN, FILE_OP_CREATE, FILE_OP_LINK_SOURCE,
        FILE_OP_LINK_TARGET, FILE_OP_MKDIR, FILE_OP_RENAME_SOURCE, FILE_OP_RENAME_TARGET,
        FILE_OP_RMDIR, FILE_OP_SYMLINK, FILE_OP_TRUNCATE, FILE_OP_UNLINK, FILE_PATH_LEN,
        FILE_REASON_NONE, FILE_REASON_PATH_TOO_LONG, FILE_REASON_PROTECTED,
        FILE_REASON_RULES_BELOW, FILE_REASON_UNRESOLVED, FILE_VALUE_EXACT, FILE_VALUE_RULES_BELOW,
        FileEvent, FileKey, FileOpEvent, FileRuleValue, IDENTITY_FLAG_FILES, LAYER_LSM,
    },
    identity::MODE_AUDIT,
    net::ACTION_ALLOW,
};
use aya_ebpf::{
    helpers::generated::{bpf_d_path, bpf_ktime_get_boot_ns, bpf_probe_read_kernel},
    maps::lpm_trie::Key,
    programs::LsmContext,
};

use super::{
    EPERM,
    kernel::{
        self, BPF_FS_MAGIC, Built, CGROUP_SUPER_MAGIC, CGROUP2_SUPER_MAGIC, FileScratch, PATH_BUF,
        S_IFDIR, S_IFMT,
    },
};
use crate::{
    events::{self, COUNT_ALLOWED, COUNT_AUDITED, COUNT_DENIED},
    identity::{self, Subject},
    maps::{EVENTS, FILE_RULES},
};

const FMODE_READ: u32 = 0x1;
const FMODE_WRITE: u32 = 0x2;
const FMODE_EXEC: u32 = 0x20;
/// `__FMODE_EXEC` as it appears in `f_flags`.
const FFLAGS_EXEC: u32 = 0x20;
const O_CREAT: u32 = 0o100;
const O_TRUNC: u32 = 0o1000;
const ENAMETOOLONG: i64 = 36;

/// What an open asks for. An exec open asks for exec only: the kernel opens
/// the binary (and the ELF interpreter) with `__FMODE_EXEC` in `f_flags`
/// (as Landlock checks it; `f_mode` need not carry `FMODE_EXEC`). `O_TRUNC`
/// and `O_CREAT` count as writing even on a read-only open.
#[inline(always)]
fn access_of(fmode: u32, fflags: u32) -> u32 {
    if fmode & FMODE_EXEC != 0 || fflags & FFLAGS_EXEC != 0 {
        return ACCESS_EXEC;
    }
    let mut a = 0;
    if fmode & FMODE_READ != 0 {
        a |= ACCESS_READ;
    }
    if fmode & FMODE_WRITE != 0 || fflags & (O_TRUNC | O_CREAT) != 0 {
        a |= ACCESS_WRITE;
    }
    if a == 0 {
        // O_ACCMODE 3 (ioctl-only opens): judged as a read.
        a = ACCESS_READ;
    }
    a
}

/// Looks `s.path[..len]` up in the identity's ruleset.
#[inline(always)]
fn lookup(s: &mut FileScratch, ruleset: u32, len: u32) -> Option<&'static FileRuleValue> {
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
fn decide(v: Option<&FileRuleValue>, len: u32, is_dir: bool, idx: usize) -> (u32, u32) {
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
fn judge(
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

/// Copies up to `FILE_PATH_LEN` bytes of the resolved path into an event.
#[inline(always)]
fn copy_path(dst: *mut u8, s: &FileScratch, len: u32) -> u32 {
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

/// Reports a refused (or audited) open.
#[inline(always)]
#[expect(clippy::too_many_arguments, reason = "one event, built in place")]
fn emit_open(
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
fn emit_op(
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
fn refuse_by_rule(
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
    if op == 0 {
        emit_open(
            s,
            sc,
            len,
            access,
            verdict,
            reason,
            FILE_REASON_NONE,
            rule_id,
        );
    } else {
        emit_op(
            s,
            sc,
            len,
            op,
            access,
            verdict,
            reason,
            FILE_REASON_NONE,
            rule_id,
        );
    }
    if audit { 0 } else { -EPERM }
}

/// Fail closed: the path could not be established. Audit mode reports only.
#[inline(always)]
fn refuse_unresolved(s: &Subject, sc: &FileScratch, op: u32, access: u32, file_reason: u32) -> i32 {
    let audit = s.mode == MODE_AUDIT;
    let verdict = if audit { VERDICT_AUDIT } else { VERDICT_DENY };
    events::count(s.identity, if audit { COUNT_AUDITED } else { COUNT_DENIED });
    if op == 0 {
        emit_open(
            s,
            sc,
            0,
            access,
            verdict,
            REASON_FAIL_CLOSED,
            file_reason,
            0,
        );
    } else {
        emit_op(
            s,
            sc,
            0,
            op,
            access,
            verdict,
            REASON_FAIL_CLOSED,
            file_reason,
            0,
        );
    }
    if audit { 0 } else { -EPERM }
}

/// Self-protection: refused in every mode.
#[inline(always)]
fn refuse_protected(s: &Subject, sc: &FileScratch, len: u32, access: u32) -> i32 {
    events::count(s.identity, COUNT_DENIED);
    emit_open(
        s,
        sc,
        len,
        access,
        VERDICT_DENY,
        REASON_PROTECTED,
        FILE_REASON_PROTECTED,
        0,
    );
    -EPERM
}

/// `bpf_d_path` of the opened file into the scratch buffer: Ok(len without
/// NUL) or the helper's error.
#[inline(always)]
fn d_path(file: u64, sc: &mut FileScratch) -> Result<u32, i64> {
    let path = file + kernel::f_path_off() as u64;
    // SAFETY: `file` is the hook's trusted `struct file *`; f_path is at the
    // offset BTF gave; the buffer is PATH_BUF bytes of map value.
    let r = unsafe {
        bpf_d_path(
            path as *mut aya_ebpf::bindings::path,
            sc.path.as_mut_ptr().cast(),
            PATH_BUF as u32,
        )
    };
    if r <= 0 {
        return Err(r);
    }
    Ok((r - 1) as u32)
}

/// `lsm/file_open`.
pub fn file_open(ctx: &LsmContext) -> i32 {
    let Some(s) = identity::current() else {
        return 0;
    };
    let file: u64 = ctx.arg(0);
    let o = kernel::offsets();
    let Some(sc) = kernel::scratch() else {
        return 0;
    };
    let fmode = kernel::read::<u32>(file, o.file_f_mode);
    let fflags = kernel::read::<u32>(file, o.file_f_flags);
    let access = access_of(fmode, fflags);
    let inode = kernel::read_ptr(file, o.file_f_inode);
    let imode = kernel::read::<u16>(inode, o.inode_i_mode);
    let sb = kernel::read_ptr(inode, o.inode_i_sb);
    let magic = kernel::read::<u64>(sb, o.sb_s_magic);

    let protected = magic == BPF_FS_MAGIC
        || ((magic == CGROUP2_SUPER_MAGIC || magic == CGROUP_SUPER_MAGIC)
            && access & ACCESS_WRITE != 0);
    if !protected && s.flags & IDENTITY_FLAG_FILES == 0 {
        return 0;
    }
    let mut len = match d_path(file, sc) {
        Ok(l) => l,
        Err(e) => {
            if protected {
                return refuse_protected(&s, sc, 0, access);
            }
            let why = if e == -ENAMETOOLONG {
                FILE_REASON_PATH_TOO_LONG
            } else {
                FILE_REASON_UNRESOLVED
            };
            return refuse_unresolved(&s, sc, 0, access, why);
        }
    };
    if protected {
        return refuse_protected(&s, sc, len, access);
    }
    // Pipes, sockets and anonymous inodes re-opened through /proc/self/fd
    // have names like `pipe:[123]`: not filesystem paths, not judged.
    if sc.path[0] != b'/' {
        return 0;
    }
    let is_dir = imode & S_IFMT == S_IFDIR;
    if is_dir && len > 1 && (len as usize) < PATH_BUF {
        // SAFETY: bounded below PATH_BUF.
        unsafe {
            *sc.path
                .as_mut_ptr()
                .add(kernel::bounded(len as usize, PATH_BUF - 1)) = b'/'
        };
        len += 1;
    }
    let v = lookup(sc, s.ruleset, len);
    match judge(v, len, is_dir, access) {
        None => {
            events::count(s.identity, COUNT_ALLOWED);
            0
        }
        Some(refused) => refuse_by_rule(&s, sc, len, 0, refused),
    }
}

/// Judges write access to (`mnt`, `dentry`) for a link or rename side.
/// `dir`: look the path up as a directory. Returns the hook's verdict.
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
    let mut len = corral_path_of(mnt, dentry);
    if len == 0 {
        return refuse_unresolved(s, sc, op, ACCESS_WRITE, FILE_REASON_PATH_TOO_LONG);
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
    if s.flags & IDENTITY_FLAG_FILES == 0 {
        return 0;
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
    if s.flags & IDENTITY_FLAG_FILES == 0 {
        return 0;
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
    if s.flags & IDENTITY_FLAG_FILES == 0 {
        return 0;
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
    let Some(s) = identity::current() else {
        return 0;
    };
    let path = kernel::arg_scalar(ctx, 0);
    let o = kernel::offsets();
    let mnt = kernel::read_ptr(path, o.path_mnt);
    let dentry = kernel::read_ptr(path, o.path_dentry);
    if let Some(r) = protected_entry(&s, mnt, dentry, FILE_OP_TRUNCATE) {
        return r;
    }
    if s.flags & IDENTITY_FLAG_FILES == 0 {
        return 0;
    }
    judge_one(&s, mnt, dentry, false, FILE_OP_TRUNCATE, false)
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
    match kernel::build_path(&o, sc, mnt, dentry) {
        Built::Ok(l) => l,
        Built::TooLong => 0,
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
