//! Putting processes and cgroups under an identity.

use std::path::{Path, PathBuf};

use agent_common::maps;
use tracing::info;

use super::{EnforceError, Enforcer, Live, merr};
use crate::{
    cgroup,
    daemon::{fileobs, loader},
};

impl Enforcer {
    fn known(&self, name: &str) -> Result<&Live, EnforceError> {
        self.live
            .get(name)
            .filter(|l| l.policy.is_some())
            .ok_or_else(|| EnforceError::UnknownIdentity {
                name: name.to_string(),
                known: self
                    .live
                    .iter()
                    .filter(|(_, l)| l.policy.is_some())
                    .map(|(n, _)| n.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            })
    }

    pub(super) fn assign_pid(&mut self, name: &str, pid: u32) -> Result<PathBuf, EnforceError> {
        if pid <= 1 {
            return Err(EnforceError::BadPid(pid, "pid 1 (init) cannot be an agent"));
        }
        // A thread id moves its whole process: compare the thread group.
        if pid == self.daemon_pid || tgid_of(pid) == Some(self.daemon_pid) {
            return Err(EnforceError::BadPid(pid, "that is the corral daemon"));
        }
        let cg = self.known(name)?.cgroup.clone();
        cgroup::move_pid(&cg, pid)?;
        info!(identity = %name, pid, "process assigned");
        fileobs::warn_assign(
            name,
            self.known(name)?.policy.as_deref(),
            &format!("pid {pid}"),
        );
        Ok(cg)
    }

    pub(super) fn assign_cgroup(
        &mut self,
        name: &str,
        path: &Path,
    ) -> Result<PathBuf, EnforceError> {
        let id = self.known(name)?.id;
        // By its real path: `corral/../system.slice` must not pass for a
        // cgroup under the corral parent, nor hide that it holds the daemon.
        let real = std::fs::canonicalize(path).map_err(|source| cgroup::CgroupError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let path = real.as_path();
        if let Some(own) = own_cgroup()
            && own.starts_with(path)
        {
            return Err(EnforceError::OwnCgroup {
                tagged: path.to_path_buf(),
                own,
            });
        }
        let cg_id = cgroup::id(path)?;
        // Programs attached at the corral parent already cover its subtree;
        // a cgroup elsewhere (a systemd unit, a container) needs its own.
        if !path.starts_with(&self.parent) {
            let links = loader::links_dir(&self.pin_dir, cg_id);
            loader::attach_sock_addr(&mut self.ebpf, path, &links)?;
            if let Ok(u) = &self.unix {
                u.attach(path, &links)?;
            }
        }
        self.cgroup_map()?
            .insert(cg_id, id, 0)
            .map_err(merr(maps::CGROUP_IDENTITY))?;
        let l = self.live.get_mut(name).expect("known");
        if !l.assigned.iter().any(|a| a == path) {
            l.assigned.push(path.to_path_buf());
        }
        info!(identity = %name, cgroup = %path.display(), "cgroup assigned");
        fileobs::warn_assign(
            name,
            l.policy.as_deref(),
            &format!("cgroup {}", path.display()),
        );
        Ok(path.to_path_buf())
    }
}

/// The thread group a pid (or thread id) belongs to.
fn tgid_of(pid: u32) -> Option<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("Tgid:"))?
        .trim()
        .parse()
        .ok()
}

/// The daemon's own cgroup, absolute (`None` when it cannot be read).
fn own_cgroup() -> Option<PathBuf> {
    let rel = cgroup::of_pid(std::process::id()).ok()?;
    Some(
        cgroup::cgroup2_root()
            .ok()?
            .join(rel.trim_start_matches('/')),
    )
}

impl Enforcer {
    /// Refuses to run inside a tagged cgroup (left tagged by an earlier
    /// daemon, or a unit started inside an agent's cgroup).
    pub(super) fn check_own_cgroup(&mut self) -> Result<(), EnforceError> {
        let Some(own) = own_cgroup() else {
            return Ok(());
        };
        let map = self.cgroup_map()?;
        for dir in own.ancestors() {
            let Ok(id) = cgroup::id(dir) else { break };
            if map.get(&id, 0).is_ok() {
                return Err(EnforceError::OwnCgroup {
                    tagged: dir.to_path_buf(),
                    own,
                });
            }
        }
        Ok(())
    }
}
