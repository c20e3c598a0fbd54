//! File access: the access bits policies and kernel programs share, and the
//! event a refused open produces.
//!
//! Two layers can refuse an open of a tagged process:
//! - `LAYER_LSM`: Corral's BPF-LSM `file_open` program decided (EPERM);
//! - `LAYER_LANDLOCK`: BPF LSM is not available, `corral run` applied the
//!   identity's `[files]` rules with Landlock, and the syscall observer saw
//!   an open (or exec) of that process fail with EACCES/EPERM. The observer
//!   never decides anything; it only reports what Landlock refused.

use crate::user_pod;

/// Access bits (`FileRule::access` in the policy model, `FileEvent::access`).
/// Reading: `open` for reading, listing a directory.
pub const ACCESS_READ: u32 = 1;
/// Writing: `open` for writing, `O_TRUNC`, `O_APPEND`, `O_CREAT`, `creat`.
pub const ACCESS_WRITE: u32 = 2;
/// Executing: `execve` (the kernel opens the binary with `FMODE_EXEC`).
pub const ACCESS_EXEC: u32 = 4;
pub const ACCESS_ALL: u32 = ACCESS_READ | ACCESS_WRITE | ACCESS_EXEC;

/// `FileEvent::layer`: who refused.
pub const LAYER_LSM: u32 = 1;
pub const LAYER_LANDLOCK: u32 = 2;

/// `FileEvent::reason`: why, beyond the header's rule/no-rule reason.
/// Nothing more to say: the header's `reason`/`rule_id` tell it.
pub const FILE_REASON_NONE: u32 = 0;
/// The path did not fit the kernel buffer: denied for a tagged identity
/// (fail closed); `path` holds its first bytes.
pub const FILE_REASON_PATH_TOO_LONG: u32 = 1;
/// `bpf_d_path` could not resolve the path: denied (fail closed).
pub const FILE_REASON_UNRESOLVED: u32 = 2;
/// Landlock layer: the header cannot name the rule (the observer only sees
/// the errno); the daemon replays the policy on `path` to find it.
pub const FILE_REASON_OBSERVED: u32 = 3;

/// Bytes of path an event carries (NUL-padded; longer paths are cut, and
/// `path_len` says how many bytes are meaningful).
pub const FILE_PATH_LEN: usize = 256;

/// `dirfd` value for "relative to the working directory" (`AT_FDCWD`).
pub const DIRFD_CWD: i32 = -100;

/// An open or exec of a tagged process that was refused.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct FileEvent {
    pub hdr: crate::event::EventHeader,
    /// `ACCESS_*` bits that were requested.
    pub access: u32,
    /// `LAYER_*`.
    pub layer: u32,
    /// `FILE_REASON_*`.
    pub reason: u32,
    /// Meaningful bytes of `path`.
    pub path_len: u32,
    /// The errno the caller got (positive: 13 EACCES, 1 EPERM).
    pub errno: u32,
    /// LSM: 0 (the path is absolute, as `bpf_d_path` resolved it).
    /// Landlock: the path as the process passed it, which may be relative
    /// to this directory fd (`DIRFD_CWD` for the working directory).
    pub dirfd: i32,
    pub path: [u8; FILE_PATH_LEN],
}
const _: () = assert!(core::mem::size_of::<FileEvent>() == 344);

user_pod!(FileEvent);

// --- BPF LSM enforcement (lsm/file_open and the bypass closers) -------------

/// Refused because the path is Corral's own ground: a write into cgroupfs
/// (an agent must not move itself out of its cgroup) or any open on bpffs
/// (the pin dir). Applies to every tagged identity, with or without `[files]`.
pub const FILE_REASON_PROTECTED: u32 = 4;
/// A directory rename whose source holds rules beneath it: allowing it would
/// move those rules' subject out from under them, so it is refused.
pub const FILE_REASON_RULES_BELOW: u32 = 5;
/// The file's host path cannot be established: its mount is not reachable
/// from the initial mount namespace's root (a detached or cloned mount
/// tree, another mount namespace's mounts). Denied (fail closed).
pub const FILE_REASON_NO_HOST_PATH: u32 = 6;
/// Landlock refused creating something in the directory `path` (a file,
/// directory, link, device...): its audit record names the directory, not
/// the new name. Judged like `FILE_REASON_OBSERVED`.
pub const FILE_REASON_OBSERVED_CREATE: u32 = 7;

/// `FileOpEvent::op`: which LSM hook refused.
pub const FILE_OP_LINK_SOURCE: u32 = 1;
pub const FILE_OP_LINK_TARGET: u32 = 2;
pub const FILE_OP_RENAME_SOURCE: u32 = 3;
pub const FILE_OP_RENAME_TARGET: u32 = 4;
pub const FILE_OP_MOUNT: u32 = 5;
pub const FILE_OP_MOVE_MOUNT: u32 = 6;
/// Creating a file (`O_CREAT`, mknod): write access to the new path.
pub const FILE_OP_CREATE: u32 = 7;
pub const FILE_OP_MKDIR: u32 = 8;
pub const FILE_OP_SYMLINK: u32 = 9;
pub const FILE_OP_UNLINK: u32 = 10;
pub const FILE_OP_RMDIR: u32 = 11;
/// truncate(2) by path.
pub const FILE_OP_TRUNCATE: u32 = 12;
/// umount(2): self-protection (bpffs holds Corral's pins).
pub const FILE_OP_UMOUNT: u32 = 13;
/// chmod(2) family (fchmod too): changing who may access a path needs write
/// access to it.
pub const FILE_OP_CHMOD: u32 = 14;
/// chown(2) family (fchown too), likewise.
pub const FILE_OP_CHOWN: u32 = 15;

/// A change to a directory entry (create, mkdir, symlink, unlink, rmdir,
/// truncate by path, hard link, rename) or a mount of a tagged process,
/// refused by the BPF LSM programs (`event::KIND_FILE_OP`). `path` is the
/// side that was refused.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct FileOpEvent {
    pub hdr: crate::event::EventHeader,
    /// `FILE_OP_*`.
    pub op: u32,
    /// `ACCESS_*` bits the operation needed on `path`.
    pub access: u32,
    /// `FILE_REASON_*`.
    pub reason: u32,
    /// Meaningful bytes of `path`.
    pub path_len: u32,
    pub path: [u8; FILE_PATH_LEN],
}
const _: () = assert!(core::mem::size_of::<FileOpEvent>() == 336);

/// `ProtectEvent::op`: which self-protection hook refused.
pub const PROTECT_BPF: u32 = 1;
pub const PROTECT_SIGNAL: u32 = 2;
pub const PROTECT_PTRACE: u32 = 3;
/// clone3(CLONE_INTO_CGROUP): a child started in another cgroup.
pub const PROTECT_CLONE_INTO_CGROUP: u32 = 4;
/// A signal through a file's owner (SIGIO/SIGURG, `file_send_sigiotask`)
/// to a process outside the identity or to the daemon.
pub const PROTECT_SIGIO: u32 = 5;
/// Making another process a file's signal owner (`fcntl(F_SETOWN*)`,
/// `ioctl(FIOSETOWN/SIOCSPGRP)`), or arming a file whose owner is outside
/// (`F_SETSIG`, `F_SETFL` with `O_ASYNC`, `FIOASYNC`); `arg` is the
/// fcntl/ioctl command, the target the owner when known.
pub const PROTECT_SETOWN: u32 = 6;
/// pivot_root(2): it would change the root every path is judged from
/// (chroot need not be refused: opens are judged by host path).
pub const PROTECT_PIVOT_ROOT: u32 = 7;
/// A new user namespace (`userns_create`) for an identity with `[files]`:
/// it gives an unprivileged agent mount namespaces and detached mounts.
pub const PROTECT_USERNS: u32 = 8;

/// A tagged process was refused `bpf()`, a signal or ptrace
/// (`event::KIND_PROTECT`).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ProtectEvent {
    pub hdr: crate::event::EventHeader,
    /// `PROTECT_*`.
    pub op: u32,
    /// Signal / ptrace: the target process (0 for bpf).
    pub target_tgid: u32,
    /// Signal / ptrace: the target's identity id (0: untagged).
    pub target_identity: u32,
    /// bpf: the command; signal: the signal number; ptrace: the mode bits.
    pub arg: u32,
    /// 1 when the target is the Corral daemon.
    pub target_is_daemon: u32,
    pub _pad: u32,
}
const _: () = assert!(core::mem::size_of::<ProtectEvent>() == 88);

/// Rule ids of Corral's built-in protected paths (`daemon::lsm::builtin`):
/// a deny from one of them is self-protection, refused in every mode and
/// for identities without `[files]` too. Below lease grants' ids.
pub const BUILTIN_RULE_MIN: u32 = 0x7fff_ff00;
pub const BUILTIN_RULE_END: u32 = 0x8000_0000;

/// Whether `rule_id` is one of Corral's built-in protected-path rules.
#[inline(always)]
pub const fn is_builtin_rule(rule_id: u32) -> bool {
    rule_id >= BUILTIN_RULE_MIN && rule_id < BUILTIN_RULE_END
}

/// `IdentityState::flags` bit: the identity has a `[files]` section, so the
/// `file_open` program judges its opens (without it, opens are not judged;
/// self-protection applies either way).
pub const IDENTITY_FLAG_FILES: u32 = 1;

/// Path bytes in a `FILE_RULES` key. The kernel caps LPM trie keys at 256
/// data bytes; 4 of them are the ruleset. Rule paths are at most this long;
/// longer opened paths are looked up by their first bytes, which is exact
/// for every rule (all rules fit) — see `FileRuleValue::len`.
pub const FILE_KEY_PATH_LEN: usize = 252;
/// Key bits before the path: the ruleset.
pub const FILE_KEY_FIXED_BITS: u32 = 32;

/// `FILE_RULES` key data (aya's `Key` carries the prefix length). The ruleset
/// is big-endian so the trie orders by ruleset, then path bytes. A rule
/// `"/a/b/"` (beneath) is stored with its trailing `/`; the kernel looks up
/// an opened directory with a `/` appended, so the rule covers `/a/b`
/// itself and never `/a/bc`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FileKey {
    pub ruleset_be: u32,
    pub path: [u8; FILE_KEY_PATH_LEN],
}
const _: () = assert!(core::mem::size_of::<FileKey>() == 256);

/// One access decision: `net::ACTION_ALLOW`, `net::ACTION_DENY` or 0 (no
/// rule speaks about this access here: default deny), and the rule id.
///
/// A decision that comes from a lease grant carries the grant's end
/// (`expires_ns`, CLOCK_BOOTTIME; 0 = never) and what decides once it has
/// passed (`fallback_*`: the written policy's decision for the same slot),
/// so an expired grant stops working even while the daemon is down.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FileDecision {
    pub action: u32,
    pub rule_id: u32,
    pub fallback_action: u32,
    pub fallback_rule_id: u32,
    pub expires_ns: u64,
}
const _: () = assert!(core::mem::size_of::<FileDecision>() == 24);

impl FileDecision {
    /// (action, rule_id) in force at `now_ns` (CLOCK_BOOTTIME).
    #[inline(always)]
    pub fn at(&self, now_ns: u64) -> (u32, u32) {
        if self.expires_ns != 0 && self.expires_ns <= now_ns {
            (self.fallback_action, self.fallback_rule_id)
        } else {
            (self.action, self.rule_id)
        }
    }
}

/// Index of an access in `FileRuleValue` arrays.
pub const ACCESS_IDX_READ: usize = 0;
pub const ACCESS_IDX_WRITE: usize = 1;
pub const ACCESS_IDX_EXEC: usize = 2;

/// `FileRuleValue::flags`: the entry is an exact-file rule (`exact` applies
/// only when the opened path is exactly `len` bytes).
pub const FILE_VALUE_EXACT: u32 = 1;
/// `FileRuleValue::flags`: other entries lie beneath this directory (so a
/// directory rename from here would carry rules' subjects away).
pub const FILE_VALUE_RULES_BELOW: u32 = 2;
/// `FileRuleValue::flags`: one of Corral's protected paths lies beneath
/// this directory: moving it is refused as self-protection (every mode,
/// every identity).
pub const FILE_VALUE_PROTECTED_BELOW: u32 = 4;

/// `FILE_RULES` value: everything one LPM lookup needs to decide. The
/// compiler pushes decisions of shorter directory rules down into longer
/// entries, so the longest match alone decides (cost independent of the
/// rule count).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FileRuleValue {
    /// `FILE_VALUE_*`.
    pub flags: u32,
    /// Bytes of this entry's path.
    pub len: u32,
    /// Decisions for a path exactly `len` bytes long (EXACT entries only).
    pub exact: [FileDecision; 3],
    /// Decisions for everything else this entry is the longest match for.
    pub beneath: [FileDecision; 3],
}
const _: () = assert!(core::mem::size_of::<FileRuleValue>() == 8 + 6 * 24);

/// Kernel struct member offsets the LSM programs need, read from the running
/// kernel's BTF at load time and passed as one global (`CORRAL_KOFFSETS`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelOffsets {
    pub file_f_path: u32,
    pub file_f_inode: u32,
    pub file_f_mode: u32,
    pub file_f_flags: u32,
    pub path_mnt: u32,
    pub path_dentry: u32,
    pub dentry_d_parent: u32,
    pub dentry_d_name: u32,
    pub dentry_d_inode: u32,
    pub qstr_name: u32,
    pub qstr_len: u32,
    pub inode_i_mode: u32,
    pub inode_i_sb: u32,
    pub sb_s_magic: u32,
    pub vfsmount_mnt_root: u32,
    pub mount_mnt: u32,
    pub mount_mnt_parent: u32,
    pub mount_mnt_mountpoint: u32,
    pub task_tgid: u32,
    pub task_cgroups: u32,
    pub css_set_dfl_cgrp: u32,
    pub cgroup_level: u32,
    pub cgroup_kn: u32,
    pub cgroup_ancestors: u32,
    pub kernfs_node_id: u32,
    pub dentry_d_sb: u32,
    /// The task's root and mount namespace, and a mount's namespace: to
    /// judge opens by host path (chroot, detached mounts).
    pub task_fs: u32,
    pub fs_root: u32,
    pub task_nsproxy: u32,
    pub nsproxy_mnt_ns: u32,
    pub mnt_ns_root: u32,
    pub mount_mnt_ns: u32,
    /// A file's signal owner (`fown_struct`), for `F_SETSIG`/`O_ASYNC` on
    /// a file whose owner is outside the identity. `f_owner_ptr`: 1 when
    /// `file.f_owner` is a pointer (6.12+), 0 when embedded; `fown_ok`: 0
    /// when this kernel's BTF lacks a field (then not judged).
    pub file_f_owner: u32,
    pub f_owner_ptr: u32,
    pub fown_pid: u32,
    pub fown_pid_type: u32,
    pub pid_tasks: u32,
    pub task_pid_links: u32,
    pub fown_ok: u32,
    pub _pad: u32,
}
const _: () = assert!(core::mem::size_of::<KernelOffsets>() == 160);

user_pod!(
    FileOpEvent,
    ProtectEvent,
    FileKey,
    FileDecision,
    FileRuleValue,
    KernelOffsets
);
