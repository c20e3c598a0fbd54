//! Reading kernel structs without CO-RE: member offsets come from the
//! running kernel's BTF at load time (`CORRAL_KOFFSETS`), reads go through
//! `bpf_probe_read_kernel`. Also the path builder for hooks where
//! `bpf_d_path` is not allowed (`path_link`, `path_rename`, `move_mount`).

use agent_common::file::{FILE_PATH_LEN, KernelOffsets};
use aya_ebpf::{Global, helpers::bpf_probe_read_kernel};

use crate::maps::{CGROUP_IDENTITY, FILE_SCRATCH};

/// Member offsets, overridden by the loader (all zero in the object: the
/// loader refuses to attach the LSM programs without real values).
#[unsafe(no_mangle)]
static CORRAL_KOFFSETS: Global<KernelOffsets> = Global::new(KernelOffsets {
    file_f_path: 0,
    file_f_inode: 0,
    file_f_mode: 0,
    file_f_flags: 0,
    path_mnt: 0,
    path_dentry: 0,
    dentry_d_parent: 0,
    dentry_d_name: 0,
    dentry_d_inode: 0,
    qstr_name: 0,
    qstr_len: 0,
    inode_i_mode: 0,
    inode_i_sb: 0,
    sb_s_magic: 0,
    vfsmount_mnt_root: 0,
    mount_mnt: 0,
    mount_mnt_parent: 0,
    mount_mnt_mountpoint: 0,
    task_tgid: 0,
    task_cgroups: 0,
    css_set_dfl_cgrp: 0,
    cgroup_level: 0,
    cgroup_kn: 0,
    cgroup_ancestors: 0,
    kernfs_node_id: 0,
    dentry_d_sb: 0,
    task_fs: 0,
    fs_root: 0,
    task_nsproxy: 0,
    nsproxy_mnt_ns: 0,
    mnt_ns_root: 0,
    mount_mnt_ns: 0,
    file_f_owner: 0,
    f_owner_ptr: 0,
    fown_pid: 0,
    fown_pid_type: 0,
    pid_tasks: 0,
    task_pid_links: 0,
    fown_ok: 0,
    _pad: 0,
});

/// `struct file` → `f_path`, separately: `bpf_d_path` needs `file + off` to
/// be a trusted pointer, so the verifier must see `off` as a constant (a
/// scalar global read straight from the frozen `.rodata` map).
#[unsafe(no_mangle)]
static CORRAL_F_PATH_OFF: Global<u32> = Global::new(0);

/// `v & mask`, with the mask kept: LLVM drops a mask it can prove
/// redundant from an earlier comparison, but the verifier may not have
/// tracked that comparison on the register used for the access. A volatile
/// read hides the value, so the mask is emitted and the verifier sees a
/// bounded offset.
#[inline(always)]
pub fn bounded(v: usize, mask: usize) -> usize {
    // SAFETY: reads a local.
    unsafe { core::ptr::read_volatile(&v) & mask }
}

#[inline(always)]
pub fn offsets() -> KernelOffsets {
    CORRAL_KOFFSETS.load()
}

#[inline(always)]
pub fn f_path_off() -> u32 {
    CORRAL_F_PATH_OFF.load()
}

/// Bytes of the path buffer; `bpf_d_path`'s limit and ours.
pub const PATH_BUF: usize = 4096;
/// Room after `PATH_BUF` so a bounded write at any offset below `PATH_BUF`
/// stays inside the buffer (the verifier checks offset + size).
const PATH_SLACK: usize = 512;
/// Steps of the path walk (components and mount crossings). Deeper paths
/// are refused (fail closed); the bound keeps the verifier's work small.
const MAX_WALK: u32 = 64;
const NAME_MAX: usize = 255;

/// The per-CPU scratch area. Its first 260 bytes are an LPM key
/// (`Key<FileKey>`): prefix length, ruleset, then the path, so a resolved
/// path is looked up in place without copying. `build` is where the path
/// walk prepends components.
#[repr(C)]
pub struct FileScratch {
    pub prefix_len: u32,
    pub ruleset_be: u32,
    pub path: [u8; PATH_BUF + PATH_SLACK],
    build: [u8; PATH_BUF + PATH_SLACK],
    /// Scratch word for `FileScratch::opaque`.
    tmp: u64,
    /// Why the last `build_path` failed (`FILE_REASON_*`).
    pub why: u32,
}

impl FileScratch {
    /// `v & mask`, passed through map memory. The verifier tracks a value
    /// spilled to the stack exactly, and marks it precise when it becomes a
    /// pointer offset, so a walk whose offset differs at every step would be
    /// explored once per possible history. Loaded back from a map value it
    /// is an unknown scalar: the mask bounds the access, and states that
    /// differ only in it are pruned as equal.
    #[inline(always)]
    fn opaque(&mut self, v: usize, mask: usize) -> usize {
        // SAFETY: a field of our per-CPU scratch.
        unsafe {
            core::ptr::write_volatile(&mut self.tmp, v as u64);
            core::ptr::read_volatile(&self.tmp) as usize & mask
        }
    }
}

#[inline(always)]
pub fn scratch() -> Option<&'static mut FileScratch> {
    // SAFETY: per-CPU slot; a program run does not migrate and the slot is
    // only used within one run.
    FILE_SCRATCH.get_ptr_mut(0).map(|p| unsafe { &mut *p })
}

/// A kernel value at `base + off`; 0 when it cannot be read. No branch on
/// the helper's result: a read that forked the verifier's state (value or
/// 0) at every step of a walk multiplied the states it explores.
#[inline(always)]
pub fn read<T: Copy + Default>(base: u64, off: u32) -> T {
    let mut v = T::default();
    // SAFETY: bpf_probe_read_kernel tolerates any address (a bad one leaves
    // `v` zeroed); `v` is a local of the right size.
    unsafe {
        aya_ebpf::helpers::generated::bpf_probe_read_kernel(
            (&mut v as *mut T).cast(),
            size_of::<T>() as u32,
            (base + off as u64) as *const core::ffi::c_void,
        )
    };
    v
}

/// Hook argument `n` as a plain scalar. `ctx.arg(n)` gives the verifier a
/// typed kernel pointer, which may not be passed to a global function;
/// read through the helper, it is just a number.
#[inline(always)]
pub fn arg_scalar(ctx: &aya_ebpf::programs::LsmContext, n: usize) -> u64 {
    use aya_ebpf::EbpfContext as _;
    let p = ctx.as_ptr() as u64 + 8 * n as u64;
    // SAFETY: reads the hook's argument array through the helper.
    unsafe { bpf_probe_read_kernel(p as *const u64).unwrap_or(0) }
}

#[inline(always)]
pub fn read_ptr(base: u64, off: u32) -> u64 {
    read::<u64>(base, off)
}

pub const S_IFMT: u16 = 0o170000;
pub const S_IFDIR: u16 = 0o040000;

pub const BPF_FS_MAGIC: u64 = 0xcafe4a11;
pub const CGROUP_SUPER_MAGIC: u64 = 0x27e0eb;
pub const CGROUP2_SUPER_MAGIC: u64 = 0x63677270;

/// Whether a superblock magic is Corral's own ground: bpffs (the pins) or
/// cgroupfs (the identities).
#[inline(always)]
pub fn protected_fs(magic: u64) -> bool {
    magic == BPF_FS_MAGIC || magic == CGROUP_SUPER_MAGIC || magic == CGROUP2_SUPER_MAGIC
}

/// Superblock magic of the filesystem a dentry (negative ones too) is on.
#[inline(always)]
pub fn dentry_magic(o: &KernelOffsets, dentry: u64) -> u64 {
    let sb = read_ptr(dentry, o.dentry_d_sb);
    read::<u64>(sb, o.sb_s_magic)
}

/// Whether a dentry's inode is a directory (false for negative dentries).
#[inline(always)]
pub fn dentry_is_dir(o: &KernelOffsets, dentry: u64) -> bool {
    let inode = read_ptr(dentry, o.dentry_d_inode);
    read::<u16>(inode, o.inode_i_mode) & S_IFMT == S_IFDIR
}

/// Outcome of building a path.
pub enum Built {
    /// Full length in bytes (no NUL); `scratch.path` holds its first
    /// `FILE_PATH_LEN` bytes (all the LPM key and events use).
    Ok(u32),
    /// More than `MAX_WALK` steps, or longer than `PATH_BUF`.
    TooLong,
    /// The walk ended at a root mount that is not the caller's mount
    /// namespace root (a detached or cloned tree, another namespace).
    NoHostPath,
}

/// `MNT_NS_INTERNAL` and other error-pointer values of `mount.mnt_ns`:
/// kernel-internal mounts (pipefs, sockfs, nsfs, anon inodes).
#[inline(always)]
pub fn internal_ns(ns: u64) -> bool {
    (ns as i64) < 0 && (ns as i64) >= -4095
}

/// The calling task's mount namespace.
#[inline(always)]
pub fn current_mnt_ns(o: &KernelOffsets) -> u64 {
    // SAFETY: helper without arguments.
    let task = unsafe { aya_ebpf::helpers::generated::bpf_get_current_task() };
    read_ptr(read_ptr(task, o.task_nsproxy), o.nsproxy_mnt_ns)
}

/// Whether the calling task's root is its mount namespace's root (then
/// `bpf_d_path` gives host paths; after chroot it does not).
#[inline(always)]
pub fn root_is_ns_root(o: &KernelOffsets, ns: u64) -> bool {
    // SAFETY: helper without arguments.
    let task = unsafe { aya_ebpf::helpers::generated::bpf_get_current_task() };
    let fs = read_ptr(task, o.task_fs);
    let mnt = read_ptr(fs, o.fs_root + o.path_mnt);
    let dentry = read_ptr(fs, o.fs_root + o.path_dentry);
    let ns_root = read_ptr(ns, o.mnt_ns_root);
    ns_root != 0
        && mnt == ns_root + o.mount_mnt as u64
        && dentry == read_ptr(mnt, o.vfsmount_mnt_root)
}

/// The absolute path of (`mnt`, `dentry`), as `d_path` would give it from
/// the mount namespace's root: walks `d_parent` up, crossing mounts through
/// `mnt_mountpoint`, prepending each name into `build`. One loop with no
/// per-component state, so the verifier's cost stays linear.
#[inline(always)]
pub fn build_path(o: &KernelOffsets, s: &mut FileScratch, mnt: u64, dentry: u64, ns: u64) -> Built {
    let mut mnt = mnt;
    let mut dentry = dentry;
    let mut root = read_ptr(mnt, o.vfsmount_mnt_root);
    let base = s.build.as_mut_ptr();
    // The path occupies build[pos..PATH_BUF].
    let mut pos: usize = PATH_BUF;
    let mut step: u32 = 0;
    let mut complete = false;
    while step < MAX_WALK {
        step += 1;
        if dentry == 0 {
            break;
        }
        if dentry == root {
            // At the root of this mount: continue in the parent mount.
            let mount = mnt - o.mount_mnt as u64;
            let parent = read_ptr(mount, o.mount_mnt_parent);
            if parent == 0 || parent == mount {
                // A root mount: only the caller's namespace root makes the
                // path a host path (the namespace is the host's tree or a
                // copy of it: tagged tasks cannot mount or pivot_root).
                if read_ptr(mount, o.mount_mnt_ns) != ns {
                    return Built::NoHostPath;
                }
                complete = true;
                break;
            }
            dentry = read_ptr(mount, o.mount_mnt_mountpoint);
            mnt = parent + o.mount_mnt as u64;
            root = read_ptr(mnt, o.vfsmount_mnt_root);
            continue;
        }
        let parent = read_ptr(dentry, o.dentry_d_parent);
        if parent == 0 || parent == dentry {
            complete = true;
            break;
        }
        let name = read_ptr(dentry, o.dentry_d_name + o.qstr_name);
        let len = read::<u32>(dentry, o.dentry_d_name + o.qstr_len) as usize;
        if len == 0 || len > NAME_MAX || len + 1 >= pos {
            return Built::TooLong;
        }
        pos -= len;
        let at = s.opaque(pos, PATH_BUF - 1);
        let size = s.opaque(len, NAME_MAX);
        // SAFETY: offset below PATH_BUF, size at most NAME_MAX: inside
        // `build` (PATH_SLACK bytes of room); the source is a kernel pointer
        // read by the helper.
        let r = unsafe {
            aya_ebpf::helpers::generated::bpf_probe_read_kernel(
                base.add(at).cast(),
                size as u32,
                name as *const core::ffi::c_void,
            )
        };
        if r != 0 {
            return Built::TooLong;
        }
        pos -= 1;
        let at = s.opaque(pos, PATH_BUF - 1);
        // SAFETY: as above.
        unsafe { *base.add(at) = b'/' };
        dentry = parent;
    }
    if !complete {
        return Built::TooLong;
    }
    copy_out(s, pos)
}

/// Moves the path built at `build[pos..PATH_BUF]` to the start of `path`
/// (cut to `FILE_PATH_LEN`); its length, or `TooLong`.
#[inline(always)]
fn copy_out(s: &mut FileScratch, pos: usize) -> Built {
    let base = s.build.as_mut_ptr();
    // The walk can end after any number of steps with a different `pos`:
    // through map memory, the length is one unknown scalar, so the states
    // after the walk are pruned as equal.
    let len = s.opaque(PATH_BUF - pos, 2 * PATH_BUF - 1);
    if len >= PATH_BUF {
        return Built::TooLong;
    }
    let pos = PATH_BUF - len;
    if len == 0 {
        s.path[0] = b'/';
        return Built::Ok(1);
    }
    let n = if len > FILE_PATH_LEN {
        FILE_PATH_LEN
    } else {
        len
    };
    // SAFETY: at most FILE_PATH_LEN bytes from inside `build` to the start
    // of `path`.
    unsafe {
        aya_ebpf::helpers::generated::bpf_probe_read_kernel(
            s.path.as_mut_ptr().cast(),
            s.opaque(n, 2 * FILE_PATH_LEN - 1) as u32,
            base.add(s.opaque(pos, PATH_BUF - 1)).cast(),
        )
    };
    Built::Ok(len as u32)
}

/// Identity of another task (`task_kill`, `ptrace_access_check`): its
/// default-hierarchy cgroup's ancestors, deepest tagged one wins, as
/// `identity::current()` does for the calling task.
#[inline(always)]
pub fn task_identity(o: &KernelOffsets, task: u64) -> u32 {
    let cset = read_ptr(task, o.task_cgroups);
    let cgrp = read_ptr(cset, o.css_set_dfl_cgrp);
    let level = read::<i32>(cgrp, o.cgroup_level);
    let mut found: u32 = 0;
    let mut l: i32 = 0;
    while l < agent_common::identity::CGROUP_MAX_DEPTH {
        if l > level {
            break;
        }
        let anc = read_ptr(cgrp, o.cgroup_ancestors + 8 * l as u32);
        let kn = read_ptr(anc, o.cgroup_kn);
        let id = read::<u64>(kn, o.kernfs_node_id);
        if id != 0 {
            // SAFETY: plain u32 value copied out at once.
            if let Some(v) = unsafe { CGROUP_IDENTITY.get(id) } {
                found = *v;
            }
        }
        l += 1;
    }
    found
}

#[inline(always)]
pub fn task_tgid(o: &KernelOffsets, task: u64) -> u32 {
    read::<i32>(task, o.task_tgid) as u32
}
