//! The rotated token file. The daemon (root) writes into a directory the
//! policy names, so it must not be steerable by the agent the token is for:
//! every directory on the way must be root's and not writable by others
//! (sticky directories such as /tmp excepted: their entries cannot be
//! replaced by others), the new file is created exclusively under a fresh
//! name with its final owner and mode before it holds the token, and a
//! rename puts it in place (a symlink planted at the token's own name is
//! replaced, never followed).

use std::{
    fs,
    io::Write as _,
    os::unix::fs::{DirBuilderExt as _, MetadataExt as _, OpenOptionsExt as _},
    path::{Path, PathBuf},
    sync::atomic::{AtomicU64, Ordering},
};

use tracing::warn;

use crate::policy::TokenOwner;

/// Writes `token` to `path`: root's (0600), or the owner's (0400) when the
/// policy names the user the agent runs as. A directory Corral creates for
/// it is 0700, or 0711 (traversable, not listable) with an owner.
pub fn write(path: &Path, token: &str, owner: Option<&TokenOwner>) -> Result<(), String> {
    if token.is_empty() {
        return Err("no token".into());
    }
    let name = path
        .file_name()
        .ok_or_else(|| format!("{}: not a file path", path.display()))?;
    let parent = path.parent().unwrap_or(Path::new("/"));
    if !parent.exists() {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(if owner.is_some() { 0o711 } else { 0o700 })
            .create(parent)
            .map_err(|e| format!("creating {}: {e}", parent.display()))?;
    }
    let dir = fs::canonicalize(parent).map_err(|e| format!("{}: {e}", parent.display()))?;
    check_dir(&dir)?;
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let tmp = dir.join(format!(
        ".{}.{}.{}.tmp",
        name.to_string_lossy(),
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    ));
    let mode = if owner.is_some() { 0o400 } else { 0o600 };
    let done = (|| -> std::io::Result<()> {
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&tmp)?;
        if let Some(o) = owner {
            std::os::unix::fs::fchown(&f, Some(o.uid), Some(o.gid))?;
        }
        f.write_all(format!("{token}\n").as_bytes())?;
        f.sync_all()?;
        fs::rename(&tmp, dir.join(name))
    })();
    if let Err(e) = done {
        let _ = fs::remove_file(&tmp);
        return Err(format!("{}: {e}", path.display()));
    }
    if let Some(o) = owner
        && let Some((blocked, m)) = unreachable_for(&dir, o.uid, o.gid)
    {
        // Written and kept (root-side tools may read it), but said loudly:
        // the agent it is for cannot open it.
        warn!(
            path = %path.display(),
            "user `{}` cannot reach its token: {} (mode {m:o}) is not traversable for it; set \
             `[leases.rotate] path` under a directory it can traverse (e.g. /run/corral/tokens/)",
            o.name,
            blocked.display()
        );
    }
    Ok(())
}

/// Refuses a directory someone other than root could change under us.
fn check_dir(dir: &Path) -> Result<(), String> {
    for d in dir.ancestors() {
        let m = fs::metadata(d).map_err(|e| format!("{}: {e}", d.display()))?;
        let sticky = m.mode() & 0o1000 != 0;
        if m.uid() != 0 || (m.mode() & 0o022 != 0 && !sticky) {
            return Err(format!(
                "refusing to write a token under {}: {} is {} (owner uid {}, mode {:o}); \
                 token directories must be root's and writable by root only",
                dir.display(),
                d.display(),
                if m.uid() != 0 {
                    "not root's"
                } else {
                    "writable by others"
                },
                m.uid(),
                m.mode() & 0o7777
            ));
        }
    }
    Ok(())
}

/// The first directory from `dir` up that `uid`/`gid` cannot traverse.
fn unreachable_for(dir: &Path, uid: u32, gid: u32) -> Option<(PathBuf, u32)> {
    if uid == 0 {
        return None;
    }
    dir.ancestors().find_map(|d| {
        let m = fs::metadata(d).ok()?;
        let mode = m.mode() & 0o777;
        let x = if m.uid() == uid {
            mode & 0o100
        } else if m.gid() == gid {
            mode & 0o010
        } else {
            mode & 0o001
        };
        (x == 0).then(|| (d.to_path_buf(), mode))
    })
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;

    fn is_root() -> bool {
        // SAFETY: plain syscall.
        unsafe { libc::geteuid() == 0 }
    }

    #[test]
    fn writes_with_owner_and_mode_and_replaces_a_planted_symlink() {
        if !is_root() {
            return;
        }
        let t = tempfile::tempdir().expect("tmp");
        let dir = t.path().join("tokens");
        let path = dir.join("a.jwt");
        let owner = TokenOwner {
            name: "65534:65534".into(),
            uid: 65534,
            gid: 65534,
        };
        write(&path, "tok1", Some(&owner)).expect("write");
        let m = fs::metadata(&path).expect("meta");
        assert_eq!((m.uid(), m.gid(), m.mode() & 0o777), (65534, 65534, 0o400));
        assert_eq!(fs::metadata(&dir).expect("dir").mode() & 0o777, 0o711);
        // A symlink at the token's name is replaced, its target untouched.
        let victim = t.path().join("victim");
        fs::write(&victim, "keep").expect("victim");
        fs::remove_file(&path).expect("rm");
        std::os::unix::fs::symlink(&victim, &path).expect("symlink");
        write(&path, "tok2", None).expect("write");
        assert_eq!(fs::read_to_string(&victim).expect("victim"), "keep");
        assert_eq!(fs::read_to_string(&path).expect("token"), "tok2\n");
        let m = fs::symlink_metadata(&path).expect("meta");
        assert!(m.is_file() && m.mode() & 0o777 == 0o600 && m.uid() == 0);
    }

    #[test]
    fn refuses_directories_others_can_change() {
        if !is_root() {
            return;
        }
        let t = tempfile::tempdir().expect("tmp");
        let open = t.path().join("open");
        fs::create_dir(&open).expect("mkdir");
        fs::set_permissions(&open, fs::Permissions::from_mode(0o777)).expect("chmod");
        let e = write(&open.join("a.jwt"), "tok", None).expect_err("group/other writable");
        assert!(e.contains("writable by others"), "{e}");
        let theirs = t.path().join("theirs");
        fs::create_dir(&theirs).expect("mkdir");
        std::os::unix::fs::chown(&theirs, Some(65534), Some(65534)).expect("chown");
        let e = write(&theirs.join("a.jwt"), "tok", None).expect_err("not root's");
        assert!(e.contains("not root's"), "{e}");
        assert!(!theirs.join("a.jwt").exists());
    }
}
