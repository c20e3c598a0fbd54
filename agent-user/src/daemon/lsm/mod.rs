//! The BPF LSM half: `[files]` rules in the kernel (`file_open`,
//! `path_link`, `path_rename`) and self-protection (`bpf`, `task_kill`,
//! `file_send_sigiotask`/`file_fcntl`/`file_ioctl`, `ptrace_access_check`,
//! `sb_mount`, `move_mount`, `sb_pivotroot`, `userns_create`; cgroupfs
//! writes, bpffs opens and Corral's protected paths (`builtin`) in
//! `file_open` and the path hooks).
//!
//! The programs are optional: many kernels cannot run them (BPF LSM not in
//! the boot `lsm=` list, or no BPF trampolines, as on our PVM dev machines).
//! `load_and_attach` tries, and the daemon reports what it got in its log,
//! `corral status` and `corral doctor`. Links are pinned under
//! `<pin_dir>/links/lsm` and handed over without a gap on restart.

pub mod builtin;
pub use crate::policy::files::compile;

use crate::daemon::mechanism::{Mechanism, MechanismState};
use std::{
    collections::HashSet,
    fs,
    path::{Path, PathBuf},
    sync::OnceLock,
};

use agent_common::{
    file::{FILE_KEY_FIXED_BITS, FILE_KEY_PATH_LEN, FileKey, FileRuleValue, KernelOffsets},
    maps,
};
use aya::{
    Ebpf,
    maps::{LpmTrie, MapData, MapError, lpm_trie::Key},
    programs::{Lsm, ProgramError, links::FdLink},
};
use tracing::{info, warn};

use super::kernel::btf::{Btf, BtfError};

pub use compile::{FileEntry, compile};

/// What the LSM programs could do on this kernel, decided at start-up.
#[derive(Debug, Clone)]
pub struct LsmReport {
    /// `Ok` when `file_open` (and the link/rename closers) are attached;
    /// otherwise why `[files]` rules are not enforced in the kernel.
    pub files: Result<(), String>,
    /// `Ok` when every self-protection hook is attached; otherwise which
    /// are not, and why.
    pub protect: Result<(), String>,
    /// Hooks this kernel does not have that only narrow what is already
    /// closed another way (see [`OPTIONAL_HOOKS`]), and what that means.
    pub missing: Vec<String>,
}

/// Hooks newer than the kernels Corral runs on: without them the class
/// stays closed another way, so self-protection still reads `enforcing`,
/// with a note. `userns_create` (6.7+): the views a user namespace allows
/// are still judged by host path or refused (no host path).
const OPTIONAL_HOOKS: [&str; 1] = ["userns_create"];

impl LsmReport {
    pub fn unavailable(why: String) -> LsmReport {
        LsmReport {
            files: Err(why.clone()),
            protect: Err(why),
            missing: Vec::new(),
        }
    }

    pub fn files_enforced(&self) -> bool {
        self.files.is_ok()
    }
}

/// Kernel struct offsets from BTF, read once per process.
pub fn offsets() -> Result<KernelOffsets, String> {
    static CELL: OnceLock<Result<KernelOffsets, String>> = OnceLock::new();
    CELL.get_or_init(|| {
        Btf::from_sys_fs()
            .and_then(|b| kernel_offsets(&b))
            .map_err(|e| e.to_string())
    })
    .clone()
}

/// Every offset the LSM programs read.
fn kernel_offsets(b: &Btf) -> Result<KernelOffsets, BtfError> {
    // Optional: without them, F_SETSIG/O_ASYNC on outside-owned files are
    // not judged (everything else is).
    let fown = || -> Option<(u32, u32, u32, u32, u32, u32)> {
        Some((
            b.offset("file", "f_owner").ok()?,
            u32::from(b.member_is_pointer("file", "f_owner")?),
            b.offset("fown_struct", "pid").ok()?,
            b.offset("fown_struct", "pid_type").ok()?,
            b.offset("pid", "tasks").ok()?,
            b.offset("task_struct", "pid_links").ok()?,
        ))
    };
    let (f_owner, f_owner_ptr, fown_pid, fown_pid_type, pid_tasks, task_pid_links, fown_ok) =
        match fown() {
            Some((a, b, c, d, e, f)) => (a, b, c, d, e, f, 1),
            None => (0, 0, 0, 0, 0, 0, 0),
        };
    Ok(KernelOffsets {
        file_f_owner: f_owner,
        f_owner_ptr,
        fown_pid,
        fown_pid_type,
        pid_tasks,
        task_pid_links,
        fown_ok,
        _pad: 0,
        file_f_path: b.offset("file", "f_path")?,
        file_f_inode: b.offset("file", "f_inode")?,
        file_f_mode: b.offset("file", "f_mode")?,
        file_f_flags: b.offset("file", "f_flags")?,
        path_mnt: b.offset("path", "mnt")?,
        path_dentry: b.offset("path", "dentry")?,
        dentry_d_parent: b.offset("dentry", "d_parent")?,
        dentry_d_name: b.offset("dentry", "d_name")?,
        dentry_d_inode: b.offset("dentry", "d_inode")?,
        qstr_name: b.offset("qstr", "name")?,
        qstr_len: b.offset("qstr", "len")?,
        inode_i_mode: b.offset("inode", "i_mode")?,
        inode_i_sb: b.offset("inode", "i_sb")?,
        sb_s_magic: b.offset("super_block", "s_magic")?,
        vfsmount_mnt_root: b.offset("vfsmount", "mnt_root")?,
        mount_mnt: b.offset("mount", "mnt")?,
        mount_mnt_parent: b.offset("mount", "mnt_parent")?,
        mount_mnt_mountpoint: b.offset("mount", "mnt_mountpoint")?,
        task_tgid: b.offset("task_struct", "tgid")?,
        task_cgroups: b.offset("task_struct", "cgroups")?,
        css_set_dfl_cgrp: b.offset("css_set", "dfl_cgrp")?,
        cgroup_level: b.offset("cgroup", "level")?,
        cgroup_kn: b.offset("cgroup", "kn")?,
        cgroup_ancestors: b.offset("cgroup", "ancestors")?,
        kernfs_node_id: b.offset("kernfs_node", "id")?,
        dentry_d_sb: b.offset("dentry", "d_sb")?,
        task_fs: b.offset("task_struct", "fs")?,
        fs_root: b.offset("fs_struct", "root")?,
        task_nsproxy: b.offset("task_struct", "nsproxy")?,
        nsproxy_mnt_ns: b.offset("nsproxy", "mnt_ns")?,
        mnt_ns_root: b.offset("mnt_namespace", "root")?,
        mount_mnt_ns: b.offset("mount", "mnt_ns")?,
    })
}

/// The values the loader passes as `CORRAL_KOFFSETS` / `CORRAL_F_PATH_OFF`
/// (zeros when BTF is unreadable: the programs are then not attached).
pub fn globals() -> (KernelOffsets, u32) {
    let o = offsets().unwrap_or_default();
    (o, o.file_f_path)
}

pub fn links_dir(pin_dir: &Path) -> PathBuf {
    pin_dir.join("links").join("lsm")
}

/// Removes LSM links a previous daemon pinned (used when this daemon cannot
/// run the programs: a leftover would judge with nobody maintaining it).
pub fn detach_all(pin_dir: &Path) {
    let dir = links_dir(pin_dir);
    if let Ok(rd) = fs::read_dir(&dir) {
        let mut removed = 0;
        for e in rd.flatten() {
            if fs::remove_file(e.path()).is_ok() {
                removed += 1;
            }
        }
        let _ = fs::remove_dir(&dir);
        if removed > 0 {
            info!(dir = %dir.display(), removed, "removed LSM links left by a previous daemon");
        }
    }
}

/// Loads and attaches every LSM program. Never fails: what could not be
/// loaded is in the report (and the log), and the rest of Corral carries on.
pub fn load_and_attach(ebpf: &mut Ebpf, pin_dir: &Path) -> LsmReport {
    // The test suites' way to run the Landlock fallback where BPF LSM runs
    // (the QEMU guest): reported like any other reason it is unavailable.
    if std::env::var_os("CORRAL_NO_BPF_LSM").is_some() {
        detach_all(pin_dir);
        return LsmReport::unavailable(
            "switched off by CORRAL_NO_BPF_LSM (tests of the Landlock fallback)".into(),
        );
    }
    if let Err(e) = offsets() {
        let why = format!("kernel BTF unusable for the LSM programs: {e}");
        detach_all(pin_dir);
        return LsmReport::unavailable(why);
    }
    let btf = match aya::Btf::from_sys_fs() {
        Ok(b) => b,
        Err(e) => {
            detach_all(pin_dir);
            return LsmReport::unavailable(format!("kernel BTF: {e}"));
        }
    };
    let dir = links_dir(pin_dir);
    if let Err(e) = fs::create_dir_all(&dir) {
        return LsmReport::unavailable(format!("creating {}: {e}", dir.display()));
    }
    let mut failed: Vec<(&'static str, String)> = Vec::new();
    for (name, hook) in maps::LSM_PROGRAMS {
        if let Err(e) = load_one(ebpf, name, hook, &btf, &dir) {
            // The first failure is usually the kernel refusing BPF LSM as a
            // whole: do not try the others.
            let whole = name == maps::PROG_FILE_OPEN;
            failed.push((hook, e));
            if whole {
                break;
            }
        }
    }
    let why_all = failed
        .iter()
        .find(|(h, _)| *h == "file_open")
        .map(|(_, e)| e.clone());
    if let Some(why) = why_all {
        detach_all(pin_dir);
        return LsmReport::unavailable(why);
    }
    report_of(&failed)
}

/// The hooks that close `[files]` rules besides `file_open`.
const FILES_HOOKS: [&str; 10] = [
    "path_link",
    "path_rename",
    "path_mknod",
    "path_mkdir",
    "path_symlink",
    "path_unlink",
    "path_rmdir",
    "path_truncate",
    "path_chmod",
    "path_chown",
];

/// What the hooks that did not attach (`file_open` did) leave unenforced.
fn report_of(failed: &[(&'static str, String)]) -> LsmReport {
    let files_hooks = FILES_HOOKS;
    let files_failed: Vec<String> = failed
        .iter()
        .filter(|(h, _)| files_hooks.contains(h))
        .map(|(h, e)| format!("{h}: {e}"))
        .collect();
    let protect_failed: Vec<String> = failed
        .iter()
        .filter(|(h, _)| !files_hooks.contains(h) && !OPTIONAL_HOOKS.contains(h))
        .map(|(h, e)| format!("{h}: {e}"))
        .collect();
    let missing: Vec<String> = failed
        .iter()
        .filter(|(h, _)| OPTIONAL_HOOKS.contains(h))
        .map(|(h, e)| {
            format!(
                "{h} not attached ({e}): user namespaces are not refused; opens through the \
                 views they allow are still judged by host path or refused"
            )
        })
        .collect();
    LsmReport {
        files: if files_failed.is_empty() {
            Ok(())
        } else {
            Err(format!(
                "file_open attached but not every path closer ({})",
                files_failed.join("; ")
            ))
        },
        protect: if protect_failed.is_empty() {
            Ok(())
        } else {
            Err(format!("hooks not attached: {}", protect_failed.join("; ")))
        },
        missing,
    }
}

fn load_one(
    ebpf: &mut Ebpf,
    name: &'static str,
    hook: &'static str,
    btf: &aya::Btf,
    dir: &Path,
) -> Result<(), String> {
    let prog: &mut Lsm = ebpf
        .program_mut(name)
        .ok_or_else(|| format!("program {name} missing from the object"))?
        .try_into()
        .map_err(|e: ProgramError| e.to_string())?;
    let t = std::time::Instant::now();
    prog.load(hook, btf).map_err(|e| describe(&e))?;
    tracing::debug!(program = name, took = ?t.elapsed(), "LSM program verified and loaded");
    let id = prog.attach().map_err(|e| describe(&e))?;
    let link: FdLink = prog.take_link(id).map_err(|e| e.to_string())?.into();
    super::pins::pin_replacing(link, dir, name).map_err(|e| e.to_string())
}

/// A load error in one line, with the part of the verifier log that says
/// why (the kernel's EPERM for BPF LSM comes with an empty log).
fn describe(e: &ProgramError) -> String {
    match e {
        ProgramError::LoadError {
            io_error,
            verifier_log,
        } => {
            let log = verifier_log.to_string();
            if std::env::var_os("CORRAL_VERIFIER_LOG").is_some() {
                warn!("full verifier log:\n{log}");
            }
            let tail: Vec<&str> = log.lines().rev().take(6).collect();
            let mut s = format!("BPF_PROG_LOAD: {io_error}");
            if io_error.raw_os_error() == Some(libc::EPERM) && log.trim().is_empty() {
                let lsms = fs::read_to_string("/sys/kernel/security/lsm").unwrap_or_default();
                s.push_str(if lsms.split(',').any(|l| l.trim() == "bpf") {
                    " (BPF LSM is in the boot lsm= list, but this kernel refuses the programs: \
                     no BPF trampolines, e.g. a PVM or otherwise restricted guest)"
                } else {
                    " (BPF LSM is not active: boot with lsm=...,bpf)"
                });
            } else if !tail.is_empty() {
                s.push_str(": ");
                s.push_str(&tail.into_iter().rev().collect::<Vec<_>>().join(" | "));
            }
            s
        }
        other => {
            let mut s = other.to_string();
            let mut src = std::error::Error::source(other);
            while let Some(e) = src {
                s.push_str(&format!(": {e}"));
                src = e.source();
            }
            s
        }
    }
}

// --- rules ---------------------------------------------------------------------

pub type FileKeyOf = Key<FileKey>;

fn trie(ebpf: &mut Ebpf) -> Result<LpmTrie<&mut MapData, FileKey, FileRuleValue>, MapError> {
    let m = ebpf
        .map_mut(maps::FILE_RULES)
        .ok_or_else(|| MapError::InvalidName {
            name: maps::FILE_RULES.into(),
        })?;
    LpmTrie::try_from(m)
}

pub fn key(ruleset: u32, path: &[u8]) -> FileKeyOf {
    let mut data = FileKey {
        ruleset_be: ruleset.to_be(),
        path: [0; FILE_KEY_PATH_LEN],
    };
    let n = path.len().min(FILE_KEY_PATH_LEN);
    data.path[..n].copy_from_slice(&path[..n]);
    Key::new(FILE_KEY_FIXED_BITS + 8 * n as u32, data)
}

/// Writes compiled entries under `ruleset`; returns the keys (for deletion).
/// On error the keys written so far are returned in the error's place by
/// the caller's GC (they belong to a ruleset nothing points at).
pub fn write_rules(
    ebpf: &mut Ebpf,
    ruleset: u32,
    entries: &[FileEntry],
) -> Result<Vec<FileKeyOf>, MapError> {
    let mut m = trie(ebpf)?;
    let mut keys = Vec::with_capacity(entries.len());
    for e in entries {
        let k = key(ruleset, &e.path);
        m.insert(&k, e.value, 0)?;
        keys.push(k);
    }
    Ok(keys)
}

pub fn delete_rules(ebpf: &mut Ebpf, keys: &[FileKeyOf]) {
    if let Ok(mut m) = trie(ebpf) {
        for k in keys {
            let _ = m.remove(k);
        }
    }
}

/// Keys of rulesets no identity points at.
pub fn stale_rules(ebpf: &mut Ebpf, active: &HashSet<u32>) -> Vec<FileKeyOf> {
    let Ok(m) = trie(ebpf) else {
        return Vec::new();
    };
    m.keys()
        .filter_map(Result::ok)
        .filter(|k| !active.contains(&u32::from_be(k.data().ruleset_be)))
        .collect()
}

/// Logs what the LSM half does on this kernel, loudly when it cannot.
pub fn log_report(r: &LsmReport) {
    match &r.files {
        Ok(()) => info!(
            mechanism = "files (BPF LSM)",
            "file rules enforced in the kernel"
        ),
        Err(why) => warn!(
            mechanism = "files (BPF LSM)",
            "[files] rules are NOT ENFORCED IN THE KERNEL: {why}; `corral run` applies them with \
             Landlock where it can"
        ),
    }
    for m in &r.missing {
        warn!(mechanism = "self-protection (BPF LSM)", "{m}");
    }
    match &r.protect {
        Ok(()) => info!(mechanism = "self-protection (BPF LSM)", "enforced"),
        Err(why) => warn!(
            mechanism = "self-protection (BPF LSM)",
            "NOT ENFORCED: {why}"
        ),
    }
}

// --- reporting -------------------------------------------------------------------

/// `corral status` / daemon log entries for the BPF LSM half.
pub fn mechanisms(r: &LsmReport) -> Vec<Mechanism> {
    let lsms = fs::read_to_string("/sys/kernel/security/lsm").unwrap_or_default();
    vec![
        Mechanism {
            name: "bpf lsm: files",
            state: MechanismState::of(r.files.is_ok()),
            detail: match &r.files {
                Ok(()) => format!(
                    "file_open and the path hooks attached: [files] rules judged in the \
                     kernel on every open, exec, create, link, rename, unlink and truncate \
                     (active LSMs: {})",
                    lsms.trim()
                ),
                Err(why) => format!("NOT ENFORCED: {why}"),
            },
        },
        Mechanism {
            name: "bpf lsm: self-protection",
            state: MechanismState::of(r.protect.is_ok()),
            detail: match &r.protect {
                Ok(()) => {
                    "tagged processes: no bpf(), no signals (kill family, SIGIO \
                           through file owners) or ptrace outside their identity or to the \
                           daemon, no cgroupfs writes, no bpffs access, no mounts or \
                           pivot_root, no user namespaces with [files], Corral's protected \
                           paths (state dir, policy dir, binary) refused"
                        .to_string()
                        + &r.missing
                            .iter()
                            .map(|m| format!("; {m}"))
                            .collect::<String>()
                }
                Err(why) => format!("NOT ENFORCED: {why}"),
            },
        },
    ]
}

#[cfg(test)]
mod offset_tests {
    use super::*;

    /// The real kernel's BTF, where there is one: every offset resolves and
    /// the well-known ones have their well-known values.
    #[test]
    fn running_kernel_offsets() {
        let Ok(btf) = Btf::from_sys_fs() else {
            eprintln!("skipping: no {}", super::super::kernel::btf::VMLINUX);
            return;
        };
        let o = kernel_offsets(&btf).expect("offsets");
        assert_eq!((o.path_mnt, o.path_dentry), (0, 8));
        assert_eq!((o.qstr_len, o.qstr_name), (4, 8));
        assert_eq!(o.inode_i_mode, 0);
        assert!(o.file_f_path > 0 && o.mount_mnt > 0);
        assert_eq!(o.fown_ok, 1, "fown_struct fields");
    }
}
