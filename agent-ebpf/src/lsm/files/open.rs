//! `lsm/file_open`: every open and exec, judged by the path the VFS
//! resolved.

use agent_common::file::{
    ACCESS_EXEC, ACCESS_READ, ACCESS_WRITE, FILE_REASON_NO_HOST_PATH, FILE_REASON_PATH_TOO_LONG,
    FILE_REASON_UNRESOLVED, IDENTITY_FLAG_FILES, KernelOffsets,
};
use aya_ebpf::{helpers::generated::bpf_d_path, programs::LsmContext};

use super::verdict::{
    builtin_refusal, judge, lookup, refuse_by_rule, refuse_protected, refuse_unresolved,
};
use crate::{
    events::{self, COUNT_ALLOWED},
    identity,
    lsm::kernel::{
        self, BPF_FS_MAGIC, CGROUP_SUPER_MAGIC, CGROUP2_SUPER_MAGIC, FileScratch, PATH_BUF,
        S_IFDIR, S_IFMT,
    },
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

/// The opened file's host path into the scratch buffer: `bpf_d_path`
/// where it gives one (the task's root is its mount namespace's root),
/// else the path walk to the namespace root (after chroot). A file whose
/// mount is not in the caller's mount namespace (a detached or cloned
/// tree, another namespace's mounts) has no host path we can establish:
/// Err(`FILE_REASON_*`).
#[inline(always)]
fn host_path(o: &KernelOffsets, file: u64, sc: &mut FileScratch) -> Result<u32, u32> {
    let mnt = kernel::read_ptr(file, o.file_f_path + o.path_mnt);
    let file_ns = kernel::read_ptr(mnt - o.mount_mnt as u64, o.mount_mnt_ns);
    let ns = kernel::current_mnt_ns(o);
    // Kernel-internal mounts (pipes, sockets, anon inodes re-opened
    // through /proc) have names, not paths: d_path says which.
    if !kernel::internal_ns(file_ns) {
        if file_ns != ns {
            return Err(FILE_REASON_NO_HOST_PATH);
        }
        if !kernel::root_is_ns_root(o, ns) {
            let dentry = kernel::read_ptr(file, o.file_f_path + o.path_dentry);
            let len = super::corral_path_of(mnt, dentry);
            return if len == 0 { Err(sc.why) } else { Ok(len) };
        }
    }
    d_path(file, sc).map_err(|e| {
        if e == -ENAMETOOLONG {
            FILE_REASON_PATH_TOO_LONG
        } else {
            FILE_REASON_UNRESOLVED
        }
    })
}

/// `lsm/file_open`. Every tagged open resolves its host path (Corral's
/// built-in protected paths apply to identities without `[files]` too);
/// only identities with `[files]` are judged by rules.
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
    let confined = s.flags & IDENTITY_FLAG_FILES != 0;
    let mut len = match host_path(&o, file, sc) {
        Ok(l) => l,
        Err(why) => {
            if protected {
                return refuse_protected(&s, sc, 0, 0, access, 0);
            }
            if !confined && why != FILE_REASON_NO_HOST_PATH {
                return 0;
            }
            return refuse_unresolved(&s, sc, 0, access, why);
        }
    };
    if protected {
        return refuse_protected(&s, sc, len, 0, access, 0);
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
    if let Some((refused, rule_id)) = builtin_refusal(v, len, is_dir, access) {
        return refuse_protected(&s, sc, len, 0, refused, rule_id);
    }
    if !confined {
        return 0;
    }
    match judge(v, len, is_dir, access) {
        None => {
            events::count(s.identity, COUNT_ALLOWED);
            0
        }
        Some(refused) => refuse_by_rule(&s, sc, len, 0, refused),
    }
}
