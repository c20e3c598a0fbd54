//! `file` (opens, execs, directory-entry and mount changes) and `protect`
//! events in their JSON form.

use agent_common::file::{
    ACCESS_EXEC, ACCESS_READ, ACCESS_WRITE, FileEvent, FileOpEvent, LAYER_LANDLOCK, LAYER_LSM,
    ProtectEvent,
};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FileInfo {
    /// The path: absolute as the kernel resolved it (`lsm`), or as the
    /// process passed it, made absolute from its working directory when
    /// possible (`landlock`).
    pub path: String,
    /// What was asked: `read`, `write`, `read,write`, `exec`.
    pub access: String,
    /// Who refused: `lsm` (Corral's BPF LSM program) or `landlock`
    /// (`corral run` applied the rules with Landlock; seen by the observer).
    pub layer: String,
    /// The errno the process got: `EACCES` or `EPERM`.
    pub errno: String,
    /// Set when the path did not fit the event (`path` is its start), or
    /// the kernel could not resolve it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    /// For a refused change to a directory entry or a mount (BPF LSM):
    /// `create`, `mkdir`, `symlink`, `unlink`, `rmdir`, `truncate`,
    /// `link-source`, `link-target`, `rename-source`, `rename-target`,
    /// `mount`, `move-mount`, `umount`. Absent for opens and execs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub op: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProtectInfo {
    /// `bpf`, `signal`, `ptrace`, `clone-into-cgroup`, `sigio` (a signal
    /// through a file's owner), `setown` (making another process a file's
    /// signal owner), `pivot-root` or `userns`.
    pub op: String,
    /// The target process (signal, ptrace).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_pid: Option<u32>,
    /// The target's identity id; 0 for an untagged process.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_identity_id: Option<u32>,
    /// The target is the Corral daemon.
    pub target_is_daemon: bool,
    /// The signal number (signal, sigio), the bpf command (bpf), the ptrace
    /// access mode bits (ptrace), or the fcntl/ioctl command (setown).
    pub arg: u32,
}

/// `ACCESS_*` bits as `read,write,exec`.
pub fn access_str(access: u32) -> String {
    let names = [
        (ACCESS_READ, "read"),
        (ACCESS_WRITE, "write"),
        (ACCESS_EXEC, "exec"),
    ];
    let v: Vec<&str> = names
        .iter()
        .filter(|(b, _)| access & b != 0)
        .map(|(_, n)| *n)
        .collect();
    if v.is_empty() {
        "none".into()
    } else {
        v.join(",")
    }
}

/// The kernel's path bytes (not NUL-terminated; `len` meaningful bytes),
/// with bytes that are not printable ASCII as `\xNN`.
pub fn file_path_str(path: &[u8], len: u32) -> String {
    let b = &path[..(len as usize).min(path.len())];
    let b = b.split(|&c| c == 0).next().unwrap_or(b);
    let mut s = String::new();
    for &c in b {
        if c.is_ascii_graphic() || c == b' ' {
            s.push(c as char);
        } else {
            s.push_str(&format!("\\x{c:02x}"));
        }
    }
    s
}

/// `FileEvent` to its JSON form; `path` is the path as decided by the
/// caller (the daemon makes relative Landlock paths absolute).
pub fn file_info(e: &FileEvent, path: String) -> FileInfo {
    let note = file_note(e.reason, e.path_len);
    FileInfo {
        path,
        access: access_str(e.access),
        layer: match e.layer {
            LAYER_LSM => "lsm".into(),
            LAYER_LANDLOCK => "landlock".into(),
            l => format!("unknown-{l}"),
        },
        errno: match e.errno {
            1 => "EPERM".into(),
            13 => "EACCES".into(),
            n => format!("errno {n}"),
        },
        note,
        op: None,
    }
}

/// Why a file event's path is what it is (`FILE_REASON_*` beyond the rule).
fn file_note(reason: u32, path_len: u32) -> Option<String> {
    use agent_common::file::{
        FILE_PATH_LEN, FILE_REASON_NO_HOST_PATH, FILE_REASON_PATH_TOO_LONG, FILE_REASON_PROTECTED,
        FILE_REASON_RULES_BELOW, FILE_REASON_UNRESOLVED,
    };
    match reason {
        FILE_REASON_PATH_TOO_LONG => Some("path longer than the kernel buffer (denied)".into()),
        FILE_REASON_UNRESOLVED => Some("the kernel could not resolve the path (denied)".into()),
        FILE_REASON_PROTECTED => Some(
            "Corral self-protection: no writes in cgroupfs, no access to bpffs, no mounts, \
             Corral's protected paths (see `corral policy show`)"
                .into(),
        ),
        FILE_REASON_NO_HOST_PATH => Some(
            "not reachable from the mount namespace's root (a detached or cloned mount, \
             another namespace): no host path to judge (denied)"
                .into(),
        ),
        FILE_REASON_RULES_BELOW => {
            Some("a directory with file rules beneath it cannot be moved".into())
        }
        _ if path_len as usize >= FILE_PATH_LEN => {
            Some(format!("path cut at {FILE_PATH_LEN} bytes"))
        }
        _ => None,
    }
}

/// A refused link, rename or mount (BPF LSM) in its JSON form.
pub fn file_op_info(e: &FileOpEvent) -> FileInfo {
    use agent_common::file::{
        FILE_OP_CHMOD, FILE_OP_CHOWN, FILE_OP_CREATE, FILE_OP_LINK_SOURCE, FILE_OP_LINK_TARGET,
        FILE_OP_MKDIR, FILE_OP_MOUNT, FILE_OP_MOVE_MOUNT, FILE_OP_RENAME_SOURCE,
        FILE_OP_RENAME_TARGET, FILE_OP_RMDIR, FILE_OP_SYMLINK, FILE_OP_TRUNCATE, FILE_OP_UMOUNT,
        FILE_OP_UNLINK,
    };
    let op = match e.op {
        FILE_OP_LINK_SOURCE => "link-source",
        FILE_OP_LINK_TARGET => "link-target",
        FILE_OP_RENAME_SOURCE => "rename-source",
        FILE_OP_RENAME_TARGET => "rename-target",
        FILE_OP_MOUNT => "mount",
        FILE_OP_MOVE_MOUNT => "move-mount",
        FILE_OP_CREATE => "create",
        FILE_OP_MKDIR => "mkdir",
        FILE_OP_SYMLINK => "symlink",
        FILE_OP_UNLINK => "unlink",
        FILE_OP_RMDIR => "rmdir",
        FILE_OP_TRUNCATE => "truncate",
        FILE_OP_CHMOD => "chmod",
        FILE_OP_CHOWN => "chown",
        FILE_OP_UMOUNT => "umount",
        _ => "unknown",
    };
    FileInfo {
        path: file_path_str(&e.path, e.path_len),
        access: access_str(e.access),
        layer: "lsm".into(),
        errno: if e.hdr.verdict == agent_common::event::VERDICT_DENY {
            "EPERM".into()
        } else {
            "none".into()
        },
        note: file_note(e.reason, e.path_len),
        op: Some(op.into()),
    }
}

pub fn protect_info(e: &ProtectEvent) -> ProtectInfo {
    use agent_common::file::{
        PROTECT_BPF, PROTECT_CLONE_INTO_CGROUP, PROTECT_PIVOT_ROOT, PROTECT_PTRACE, PROTECT_SETOWN,
        PROTECT_SIGIO, PROTECT_SIGNAL, PROTECT_USERNS,
    };
    let op = match e.op {
        PROTECT_BPF => "bpf",
        PROTECT_SIGNAL => "signal",
        PROTECT_PTRACE => "ptrace",
        PROTECT_CLONE_INTO_CGROUP => "clone-into-cgroup",
        PROTECT_SIGIO => "sigio",
        PROTECT_SETOWN => "setown",
        PROTECT_PIVOT_ROOT => "pivot-root",
        PROTECT_USERNS => "userns",
        _ => "unknown",
    };
    // setown: the pid F_SETOWN named (negative: a process group), when
    // the command carries it by value.
    let targeted = matches!(e.op, PROTECT_SIGNAL | PROTECT_PTRACE | PROTECT_SIGIO)
        || (e.op == PROTECT_SETOWN && e.target_tgid != 0);
    ProtectInfo {
        op: op.into(),
        target_pid: targeted.then_some(e.target_tgid),
        target_identity_id: targeted.then_some(e.target_identity),
        target_is_daemon: e.target_is_daemon != 0,
        arg: e.arg,
    }
}
