//! The `[files]` rules enforced with Landlock, where BPF LSM is not
//! available: `corral run` builds the ruleset before fork and the child
//! restricts itself just before exec.
//!
//! Landlock grants access beneath directory objects and cannot take any
//! back. A `deny` under an allowed directory is therefore compiled by
//! *expansion*: the allowed directory is not granted itself; each of its
//! entries is granted instead, except the denied one, and the directories
//! on the way down to the deny are expanded the same way. The listing is
//! taken at launch, so an entry created later directly in an expanded
//! directory is unreachable, and the expanded directories themselves can be
//! entered but not listed or written into. Rules name real paths (as the
//! BPF LSM layer sees them): a rule path through a symlink grants nothing,
//! and symlinks met during expansion are not followed.
//!
//! The ruleset is fixed for the life of the process tree: a policy change
//! reaches new launches only.

use std::{
    ffi::CString,
    io,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    path::{Path, PathBuf},
};

use crate::policy::{ACCESS_EXEC, ACCESS_READ, ACCESS_WRITE, Action, FilePolicy, FileRule};

// Landlock ABI (include/uapi/linux/landlock.h).
const CREATE_RULESET_VERSION: u32 = 1;
const RULE_PATH_BENEATH: u32 = 1;

const FS_EXECUTE: u64 = 1 << 0;
const FS_WRITE_FILE: u64 = 1 << 1;
const FS_READ_FILE: u64 = 1 << 2;
const FS_READ_DIR: u64 = 1 << 3;
const FS_REMOVE_DIR: u64 = 1 << 4;
const FS_REMOVE_FILE: u64 = 1 << 5;
const FS_MAKE_DIR: u64 = 1 << 7;
const FS_MAKE_REG: u64 = 1 << 8;
const FS_MAKE_SOCK: u64 = 1 << 9;
const FS_MAKE_FIFO: u64 = 1 << 10;
const FS_MAKE_SYM: u64 = 1 << 12;
/// ABI 2: link/rename across directories; without it they always fail.
const FS_REFER: u64 = 1 << 13;
/// ABI 3.
const FS_TRUNCATE: u64 = 1 << 14;
/// ABI 5: ioctl on device files opened after the restriction.
const FS_IOCTL_DEV: u64 = 1 << 15;

/// Rights Landlock accepts on a non-directory.
const FILE_RIGHTS: u64 = FS_EXECUTE | FS_WRITE_FILE | FS_READ_FILE | FS_TRUNCATE | FS_IOCTL_DEV;

/// Every filesystem right of an ABI: all of them are handled, so whatever
/// no rule grants is refused (EACCES; EXDEV for link/rename without REFER).
/// MAKE_CHAR and MAKE_BLOCK are handled and never granted.
pub fn handled_rights(abi: i32) -> u64 {
    let mut h = (1u64 << 13) - 1;
    if abi >= 2 {
        h |= FS_REFER;
    }
    if abi >= 3 {
        h |= FS_TRUNCATE;
    }
    if abi >= 5 {
        h |= FS_IOCTL_DEV;
    }
    h
}

/// Landlock rights for policy access bits on a directory object (a file
/// object keeps the `FILE_RIGHTS` part).
pub fn rights_for(access: u32) -> u64 {
    let mut r = 0;
    if access & ACCESS_READ != 0 {
        r |= FS_READ_FILE | FS_READ_DIR;
    }
    if access & ACCESS_WRITE != 0 {
        r |= FS_WRITE_FILE
            | FS_TRUNCATE
            | FS_IOCTL_DEV
            | FS_REMOVE_DIR
            | FS_REMOVE_FILE
            | FS_MAKE_DIR
            | FS_MAKE_REG
            | FS_MAKE_SOCK
            | FS_MAKE_FIFO
            | FS_MAKE_SYM
            | FS_REFER;
    }
    if access & ACCESS_EXEC != 0 {
        r |= FS_EXECUTE;
    }
    r
}

/// The ABI version this kernel offers; 0 without Landlock.
pub fn abi() -> i32 {
    // SAFETY: landlock_create_ruleset(NULL, 0, VERSION) only returns the ABI.
    let v = unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            std::ptr::null::<u8>(),
            0usize,
            CREATE_RULESET_VERSION,
        )
    };
    if v < 0 { 0 } else { v as i32 }
}

/// One path to grant, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    pub path: PathBuf,
    /// `ACCESS_*` bits.
    pub access: u32,
    /// The allow rule it comes from.
    pub rule_id: u32,
}

/// What the policy becomes under Landlock on this filesystem right now.
#[derive(Debug, Default)]
pub struct Plan {
    pub grants: Vec<Grant>,
    /// Directories expanded because of a deny beneath them.
    pub expanded: Vec<PathBuf>,
    /// Rules Landlock cannot express here, for the user (one line each).
    pub notes: Vec<String>,
}

/// Most grants one launch may add; a deny under a huge directory tree
/// should be an error, not minutes of rule building.
const MAX_GRANTS: usize = 200_000;

/// Compiles the allow rules into path grants, expanding allowed
/// directories around the denies that are more specific than them.
pub fn plan(files: &FilePolicy) -> io::Result<Plan> {
    let mut plan = Plan::default();
    let denies: Vec<&FileRule> = files
        .rules
        .iter()
        .filter(|r| r.action == Action::Deny)
        .collect();
    // Lease grants (`expires`) end on time only in the BPF LSM layer; a
    // Landlock ruleset lives as long as the process, so they are withheld.
    let allows = files
        .rules
        .iter()
        .filter(|r| r.action == Action::Allow && !files.expires.contains_key(&r.id));
    for a in allows {
        let base = a.base();
        // A deny at the same path and kind ties, and deny wins ties.
        if denies.iter().any(|d| d.path == a.path) {
            continue;
        }
        if !a.beneath {
            match kind(Path::new(base)) {
                Kind::Missing => {}
                Kind::Symlink => plan.notes.push(symlink_note(a)),
                Kind::Dir => plan.notes.push(format!(
                    "{}: an exact rule on a directory cannot be expressed with Landlock (it \
                     would cover everything beneath); skipped — write `{base}/` to mean the \
                     directory and its contents",
                    a.describe()
                )),
                Kind::Other => plan.grants.push(Grant {
                    path: base.into(),
                    access: a.access,
                    rule_id: a.id,
                }),
            }
            continue;
        }
        match kind(Path::new(base)) {
            Kind::Missing => continue,
            Kind::Symlink => {
                plan.notes.push(symlink_note(a));
                continue;
            }
            _ => {}
        }
        // Denies more specific than this rule, under (or exactly at) it.
        let blocks: Vec<Block> = denies
            .iter()
            .filter(|d| {
                let db = d.base();
                if a.path == "/" {
                    db != "/" || !d.beneath
                } else {
                    db.starts_with(a.path.as_str()) || (!d.beneath && db == base)
                }
            })
            .map(|d| Block {
                path: PathBuf::from(d.base()),
                beneath: d.beneath,
            })
            .collect();
        if blocks.is_empty() {
            plan.grants.push(Grant {
                path: base.into(),
                access: a.access,
                rule_id: a.id,
            });
        } else {
            expand(Path::new(base), a, &blocks, &mut plan)?;
        }
    }
    Ok(plan)
}

fn symlink_note(r: &FileRule) -> String {
    let real = std::fs::canonicalize(r.base())
        .map(|p| p.display().to_string())
        .unwrap_or_else(|_| "?".into());
    format!(
        "{}: the path goes through a symlink (real path {real}); rules match real paths, so it \
         grants nothing",
        r.describe()
    )
}

/// A deny that cuts into an expanded directory.
struct Block {
    path: PathBuf,
    beneath: bool,
}

/// Grants every entry of `dir` (not `dir` itself) except what `blocks`
/// deny, descending towards deeper blocks.
fn expand(dir: &Path, a: &FileRule, blocks: &[Block], plan: &mut Plan) -> io::Result<()> {
    plan.expanded.push(dir.to_path_buf());
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => {
            plan.notes.push(format!(
                "{}: cannot list {} to expand it around a deny ({e}); nothing under it is granted",
                a.describe(),
                dir.display()
            ));
            return Ok(());
        }
    };
    let mut names: Vec<_> = entries.flatten().collect();
    names.sort_by_key(|e| e.file_name());
    for e in names {
        let child = dir.join(e.file_name());
        let ft = match e.file_type() {
            Ok(t) => t,
            Err(_) => continue,
        };
        if ft.is_symlink() {
            // Judged by its target's own rules, never granted through here.
            continue;
        }
        let at = |b: &Block| b.path == child;
        if blocks.iter().any(|b| at(b) && b.beneath) {
            continue;
        }
        let exact_here = blocks.iter().any(|b| at(b) && !b.beneath);
        let deeper: Vec<Block> = blocks
            .iter()
            .filter(|b| b.path.starts_with(&child) && b.path != child)
            .map(|b| Block {
                path: b.path.clone(),
                beneath: b.beneath,
            })
            .collect();
        if exact_here && !ft.is_dir() {
            continue;
        }
        if (exact_here || !deeper.is_empty()) && ft.is_dir() {
            expand(&child, a, &deeper, plan)?;
        } else {
            if plan.grants.len() >= MAX_GRANTS {
                return Err(io::Error::other(format!(
                    "{}: expanding around its denies needs more than {MAX_GRANTS} Landlock \
                     rules; deny a narrower path or allow narrower directories",
                    a.describe()
                )));
            }
            plan.grants.push(Grant {
                path: child,
                access: a.access,
                rule_id: a.id,
            });
        }
    }
    Ok(())
}

enum Kind {
    Missing,
    Symlink,
    Dir,
    Other,
}

/// What a rule path is, without following symlinks anywhere on it.
fn kind(path: &Path) -> Kind {
    match open_real(path) {
        Ok(fd) => {
            if is_dir_fd(&fd) {
                Kind::Dir
            } else {
                Kind::Other
            }
        }
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => Kind::Symlink,
        Err(_) => Kind::Missing,
    }
}

/// `O_PATH` fd of `path`, refusing symlinks in any component (so the
/// object is the one at the real path the rule names).
fn open_real(path: &Path) -> io::Result<OwnedFd> {
    use std::os::unix::ffi::OsStrExt as _;
    let c = CString::new(path.as_os_str().as_bytes()).map_err(io::Error::other)?;
    // SAFETY: open_how is plain data; all zeroes is valid.
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    how.flags = (libc::O_PATH | libc::O_CLOEXEC) as u64;
    how.resolve = libc::RESOLVE_NO_SYMLINKS;
    // SAFETY: valid NUL-terminated path and open_how for the call.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            libc::AT_FDCWD,
            c.as_ptr(),
            &how as *const libc::open_how,
            size_of::<libc::open_how>(),
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh fd nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

fn is_dir_fd(fd: &OwnedFd) -> bool {
    // SAFETY: stat is plain data; fstat fills it.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: valid fd and buffer.
    unsafe {
        libc::fstat(fd.as_raw_fd(), &mut st) == 0 && st.st_mode & libc::S_IFMT == libc::S_IFDIR
    }
}

#[repr(C)]
struct RulesetAttr {
    handled_access_fs: u64,
}

#[repr(C, packed)]
struct PathBeneathAttr {
    allowed_access: u64,
    parent_fd: i32,
}

/// A built ruleset, ready for the child to restrict itself with.
#[derive(Debug)]
pub struct Landlock {
    ruleset: OwnedFd,
    pub notes: Vec<String>,
    /// The daemon's launch token (`daemon::llaudit`), set as the child's
    /// name before `landlock_restrict_self` so the domain's audit records
    /// name the identity; `None` where the daemon reads no audit records.
    audit_token: Option<std::ffi::CString>,
}

/// `LANDLOCK_RESTRICT_SELF_LOG_NEW_EXEC_ON`: denials after `execve` are
/// logged too (by default only the image that restricted itself is).
pub const LOG_NEW_EXEC_ON: u32 = 2;

/// A ruleset that refuses every file read (the daemon's self-test).
pub fn empty_ruleset() -> io::Result<OwnedFd> {
    create_ruleset(1 << 2)
}

/// `landlock_create_ruleset` handling `handled` file rights, no rule yet.
fn create_ruleset(handled: u64) -> io::Result<OwnedFd> {
    let attr = RulesetAttr {
        handled_access_fs: handled,
    };
    // SAFETY: a valid attr of the size given.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            &attr as *const RulesetAttr,
            size_of::<RulesetAttr>(),
            0u32,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh fd (O_CLOEXEC) nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// `landlock_restrict_self` for the calling thread. No allocation.
pub fn restrict_thread(ruleset: &OwnedFd, flags: u32) -> io::Result<()> {
    // SAFETY: plain syscall on a valid fd.
    let rc = unsafe { libc::syscall(libc::SYS_landlock_restrict_self, ruleset.as_raw_fd(), flags) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

impl Landlock {
    /// Builds the ruleset for `files` (before fork: it allocates and opens).
    pub fn build(files: &FilePolicy) -> anyhow::Result<Landlock> {
        let abi = abi();
        if abi < 1 {
            anyhow::bail!(
                "this identity has [files] rules, BPF LSM does not enforce them here and \
                 Landlock is not available either: refusing to run unconfined"
            );
        }
        let handled = handled_rights(abi);
        let ruleset =
            create_ruleset(handled).map_err(|e| anyhow::anyhow!("landlock_create_ruleset: {e}"))?;
        let plan = plan(files)?;
        for g in &plan.grants {
            let Ok(obj) = open_real(&g.path) else {
                // Gone since planning (or a symlink): nothing to grant.
                continue;
            };
            let mut allowed = rights_for(g.access) & handled;
            if !is_dir_fd(&obj) {
                allowed &= FILE_RIGHTS;
            }
            if allowed == 0 {
                continue;
            }
            let rule = PathBeneathAttr {
                allowed_access: allowed,
                parent_fd: obj.as_raw_fd(),
            };
            // SAFETY: valid ruleset fd and attr for the call.
            let rc = unsafe {
                libc::syscall(
                    libc::SYS_landlock_add_rule,
                    ruleset.as_raw_fd(),
                    RULE_PATH_BENEATH,
                    &rule as *const PathBeneathAttr,
                    0u32,
                )
            };
            if rc != 0 {
                let e = io::Error::last_os_error();
                anyhow::bail!("landlock_add_rule {}: {e}", g.path.display());
            }
        }
        Ok(Landlock {
            ruleset,
            notes: plan.notes,
            audit_token: None,
        })
    }

    /// In the child, after `no_new_privs`: no allocation.
    pub fn restrict_self(&self) -> io::Result<()> {
        let Some(token) = &self.audit_token else {
            return restrict_thread(&self.ruleset, 0);
        };
        // SAFETY: a valid C string; the name is reset by the execve that
        // follows.
        unsafe { libc::prctl(libc::PR_SET_NAME, token.as_ptr()) };
        restrict_thread(&self.ruleset, LOG_NEW_EXEC_ON)
    }
}

/// The Landlock part of `corral run`, from the policy the daemon serves
/// (`GET /v1/policy/NAME`, its `files` section). `None` when the identity
/// has no `[files]` section, or when the daemon says another layer handles
/// it (`enforced_by`: `lsm`) or nothing can (`none`: audit mode, which
/// Landlock cannot do — it only refuses).
pub fn prepare(files: &crate::views::LaunchFiles) -> anyhow::Result<Option<Landlock>> {
    if !files.policy.confined || files.enforced_by != crate::views::FilesLayer::Landlock {
        return Ok(None);
    }
    let mut ll = Landlock::build(&files.policy)?;
    // The log flags need ABI 7; the daemon offers a token only then.
    ll.audit_token = files
        .audit
        .as_ref()
        .filter(|_| abi() >= 7)
        .and_then(|a| std::ffi::CString::new(a.token.as_str()).ok());
    for n in &ll.notes {
        eprintln!("corral: files: {n}");
    }
    Ok(Some(ll))
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::policy::parse_str;

    fn files(dir: &Path, body: &str) -> FilePolicy {
        let text = format!(
            "[identity]\nname = \"t\"\n[files]\n{}",
            body.replace("$D", &dir.display().to_string())
        );
        parse_str(Path::new("t.toml"), &text, &|_| Ok(Vec::new()))
            .unwrap_or_else(|e| panic!("{e}"))
            .files
    }

    fn tree(root: &Path) {
        for d in ["a/b/vip", "a/b/pub", "a/c", "kb", "kbx"] {
            std::fs::create_dir_all(root.join(d)).expect("mkdir");
        }
        for f in [
            "a/b/vip/x",
            "a/b/pub/y",
            "a/b/t1",
            "a/c/z",
            "a/top",
            "kb/doc",
            "kbx/doc",
        ] {
            std::fs::write(root.join(f), "x").expect("write");
        }
        std::os::unix::fs::symlink(root.join("a/b/vip/x"), root.join("a/link")).expect("symlink");
    }

    fn granted(p: &Plan, root: &Path) -> Vec<String> {
        let mut v: Vec<String> = p
            .grants
            .iter()
            .map(|g| {
                g.path
                    .strip_prefix(root)
                    .expect("under root")
                    .display()
                    .to_string()
            })
            .collect();
        v.sort();
        v
    }

    #[test]
    fn deny_under_allow_expands_the_way_down() {
        let t = tempfile::tempdir().expect("tmp");
        let root = std::fs::canonicalize(t.path()).expect("real");
        tree(&root);
        let f = files(&root, "read = [\"$D/a/\"]\ndeny = [\"$D/a/b/vip/\"]\n");
        let p = plan(&f).expect("plan");
        assert_eq!(granted(&p, &root), ["a/b/pub", "a/b/t1", "a/c", "a/top"]);
        assert_eq!(p.expanded, [root.join("a"), root.join("a/b")]);
        // An exact deny of a file leaves its siblings; of a directory, its
        // contents (not the directory itself).
        let f = files(
            &root,
            "read = [\"$D/a/\"]\ndeny = [\"$D/a/top\", \"$D/a/b\"]\n",
        );
        let p = plan(&f).expect("plan");
        assert_eq!(granted(&p, &root), ["a/b/pub", "a/b/t1", "a/b/vip", "a/c"]);
    }

    #[test]
    fn no_deny_no_expansion_and_ties_go_to_deny() {
        let t = tempfile::tempdir().expect("tmp");
        let root = std::fs::canonicalize(t.path()).expect("real");
        tree(&root);
        let f = files(
            &root,
            "read = [\"$D/kb/\", \"$D/a/top\", \"$D/a/c\", \"$D/missing/\"]\nwrite = [\"$D/kbx/\"]\n\
             deny = [\"$D/kbx/\"]\n",
        );
        let p = plan(&f).expect("plan");
        assert_eq!(granted(&p, &root), ["a/top", "kb"]);
        assert!(p.expanded.is_empty());
        assert_eq!(p.notes.len(), 1, "{:?}", p.notes);
        assert!(
            p.notes[0].contains("exact rule on a directory"),
            "{:?}",
            p.notes
        );
        // A deeper allow under a deny is its own grant.
        let f = files(&root, "deny = [\"$D/a/\"]\nread = [\"$D/a/b/pub/\"]\n");
        assert_eq!(granted(&plan(&f).expect("plan"), &root), ["a/b/pub"]);
    }

    #[test]
    fn symlinks_grant_nothing() {
        let t = tempfile::tempdir().expect("tmp");
        let root = std::fs::canonicalize(t.path()).expect("real");
        tree(&root);
        let f = files(&root, "read = [\"$D/a/link\"]\n");
        let p = plan(&f).expect("plan");
        assert!(p.grants.is_empty());
        assert!(p.notes[0].contains("symlink"), "{:?}", p.notes);
    }

    #[test]
    fn rights() {
        assert_eq!(handled_rights(1), 0x1fff);
        assert_eq!(handled_rights(2), 0x3fff);
        assert_eq!(handled_rights(7), 0xffff);
        assert_eq!(rights_for(ACCESS_READ), FS_READ_FILE | FS_READ_DIR);
        assert_eq!(rights_for(ACCESS_EXEC) & FILE_RIGHTS, FS_EXECUTE);
        assert_ne!(rights_for(ACCESS_WRITE) & FS_REFER, 0);
        assert_eq!(rights_for(ACCESS_WRITE) & (1 << 6 | 1 << 11), 0);
    }
}
