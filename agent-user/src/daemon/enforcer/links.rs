//! Programs attached at cgroups: handed over from a previous daemon at
//! start-up, and the AF_UNIX programs that may be missing.

use std::path::{Path, PathBuf};

use tracing::warn;

use super::{EnforceError, Enforcer};
use crate::{
    cgroup,
    daemon::{
        loader,
        unix::{self, Unix},
    },
};

impl Enforcer {
    /// Re-attaches programs at cgroups a previous daemon attached to
    /// (handing the links over without a gap).
    pub fn readopt_links(&mut self, cg_root: &Path) -> Result<(), EnforceError> {
        let parent_id = cgroup::id(&self.parent)?;
        for cg_id in loader::attached_cgroups(&self.pin_dir) {
            if cg_id == parent_id {
                continue;
            }
            if let Some(path) = find_cgroup_by_id(cg_root, cg_id) {
                let links = loader::links_dir(&self.pin_dir, cg_id);
                loader::attach_sock_addr(&mut self.ebpf, &path, &links)?;
                self.attach_unix(&path, &links);
            }
        }
        let links = loader::links_dir(&self.pin_dir, parent_id);
        loader::attach_sock_addr(&mut self.ebpf, &self.parent.clone(), &links)?;
        self.attach_unix(&self.parent.clone(), &links);
        Ok(())
    }

    /// Unix rules unavailable means no unix program of ours stays attached
    /// (one left by a previous daemon would judge against rules nobody
    /// updates any more).
    pub fn set_unix(&mut self, unix: Result<Unix, String>) {
        if let Err(why) = &unix {
            warn!("unix socket rules are NOT ENFORCED: {why}");
            unix::detach_all(&self.pin_dir);
        }
        self.syscalls.set_unix_enforced(unix.is_ok());
        self.unix = unix;
    }

    /// Why `unix = [...]` rules are not enforced; `None` when they are.
    pub fn unix_unavailable(&self) -> Option<String> {
        self.unix.as_ref().err().cloned()
    }

    /// Start-up attach of the unix programs. A failure leaves unix rules
    /// unenforced and says so (status, doctor), rather than stopping the
    /// network enforcement that did attach.
    fn attach_unix(&mut self, cgroup: &Path, links: &Path) {
        if let Ok(u) = &self.unix
            && let Err(e) = u.attach(cgroup, links)
        {
            self.set_unix(Err(format!("attaching at {}: {e}", cgroup.display())));
        }
    }
}

fn find_cgroup_by_id(root: &Path, id: u64) -> Option<PathBuf> {
    if cgroup::id(root).ok() == Some(id) {
        return Some(root.to_path_buf());
    }
    for e in std::fs::read_dir(root).ok()?.flatten() {
        if e.file_type().is_ok_and(|t| t.is_dir())
            && let Some(p) = find_cgroup_by_id(&e.path(), id)
        {
            return Some(p);
        }
    }
    None
}
