//! cgroup v2: finding the mount, creating identity cgroups, reading ids.

use std::{
    fs, io,
    os::unix::fs::MetadataExt as _,
    path::{Component, Path, PathBuf},
};

#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("no cgroup v2 mount in /proc/self/mountinfo (Corral needs the unified hierarchy)")]
    NoCgroup2,
    #[error("reading /proc/self/mountinfo: {0}")]
    Mountinfo(io::Error),
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("cgroup path `{0}` must be relative to the cgroup v2 root, without `..`")]
    BadPath(String),
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> CgroupError + '_ {
    move |source| CgroupError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The cgroup v2 mount point, from mountinfo (it is `/sys/fs/cgroup` on
/// systemd hosts and `/sys/fs/cgroup/unified` on hybrid ones).
pub fn cgroup2_root() -> Result<PathBuf, CgroupError> {
    let info = fs::read_to_string("/proc/self/mountinfo").map_err(CgroupError::Mountinfo)?;
    find_cgroup2(&info).ok_or(CgroupError::NoCgroup2)
}

fn find_cgroup2(mountinfo: &str) -> Option<PathBuf> {
    mountinfo.lines().find_map(|line| {
        // Fields after " - " are: fstype, source, options.
        let (pre, post) = line.split_once(" - ")?;
        if post.split_whitespace().next()? != "cgroup2" {
            return None;
        }
        pre.split_whitespace()
            .nth(4)
            .map(|p| PathBuf::from(unescape(p)))
    })
}

/// mountinfo escapes spaces and friends as octal (`\040`).
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() && b[i + 1..i + 4].iter().all(u8::is_ascii_digit) {
            let v = (b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Joins a user-given relative cgroup path onto the root, refusing escapes.
pub fn join(root: &Path, rel: &str) -> Result<PathBuf, CgroupError> {
    let rel_path = Path::new(rel.trim_start_matches('/'));
    if rel_path
        .components()
        .any(|c| !matches!(c, Component::Normal(_)))
    {
        return Err(CgroupError::BadPath(rel.to_string()));
    }
    Ok(root.join(rel_path))
}

/// Creates the cgroup (and parents) if missing.
pub fn ensure(path: &Path) -> Result<(), CgroupError> {
    fs::create_dir_all(path).map_err(io_err(path))
}

/// The kernel's cgroup id is the inode number of the cgroup directory.
pub fn id(path: &Path) -> Result<u64, CgroupError> {
    fs::metadata(path).map(|m| m.ino()).map_err(io_err(path))
}

/// The cgroup with kernel id `id` at or below `under` (ids are inode
/// numbers, never reused while the cgroup exists), looking at `limit`
/// directories at most.
pub fn find_by_id(under: &Path, id: u64, limit: usize) -> Option<PathBuf> {
    let mut stack = vec![under.to_path_buf()];
    let mut seen = 0;
    while let Some(dir) = stack.pop() {
        seen += 1;
        if seen > limit {
            return None;
        }
        if fs::metadata(&dir).is_ok_and(|m| m.ino() == id) {
            return Some(dir);
        }
        if let Ok(rd) = fs::read_dir(&dir) {
            stack.extend(
                rd.flatten()
                    .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                    .map(|e| e.path()),
            );
        }
    }
    None
}

/// Moves a process into a cgroup.
pub fn move_pid(path: &Path, pid: u32) -> Result<(), CgroupError> {
    let procs = path.join("cgroup.procs");
    fs::write(&procs, pid.to_string()).map_err(io_err(&procs))
}

/// Processes in the cgroup and all its descendants.
pub fn process_count(path: &Path) -> usize {
    let mut n = fs::read_to_string(path.join("cgroup.procs"))
        .map(|s| s.lines().count())
        .unwrap_or(0);
    if let Ok(rd) = fs::read_dir(path) {
        for e in rd.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                n += process_count(&e.path());
            }
        }
    }
    n
}

/// The cgroup (relative to the v2 root) a process is in.
pub fn of_pid(pid: u32) -> io::Result<String> {
    let s = fs::read_to_string(format!("/proc/{pid}/cgroup"))?;
    s.lines()
        .find_map(|l| l.strip_prefix("0::"))
        .map(str::to_string)
        .ok_or_else(|| io::Error::other("process has no cgroup v2 entry"))
}

/// Removes a cgroup tree bottom-up; cgroups that still hold processes stay
/// (rmdir fails with EBUSY) and are reported back.
pub fn remove_tree(path: &Path) -> Vec<PathBuf> {
    let mut busy = Vec::new();
    if let Ok(rd) = fs::read_dir(path) {
        for e in rd.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                busy.extend(remove_tree(&e.path()));
            }
        }
    }
    if let Err(e) = fs::remove_dir(path)
        && e.kind() != io::ErrorKind::NotFound
    {
        busy.push(path.to_path_buf());
    }
    busy
}

/// Freezes (true) or thaws (false) a cgroup tree via `cgroup.freeze`.
pub fn set_frozen(path: &Path, frozen: bool) -> Result<(), CgroupError> {
    let f = path.join("cgroup.freeze");
    fs::write(&f, if frozen { "1" } else { "0" }).map_err(io_err(&f))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_unified_mount_in_hybrid_layout() {
        let mi = "31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755\n\
                  40 31 0:37 / /sys/fs/cgroup/systemd rw - cgroup cgroup rw,name=systemd\n\
                  41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw\n";
        assert_eq!(
            find_cgroup2(mi),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
    }

    #[test]
    fn unescapes_octal() {
        assert_eq!(unescape(r"/a\040b"), "/a b");
    }

    #[test]
    fn join_refuses_escape() {
        assert!(join(Path::new("/cg"), "../x").is_err());
        assert_eq!(
            join(Path::new("/cg"), "/corral/a").unwrap(),
            PathBuf::from("/cg/corral/a")
        );
    }
}
