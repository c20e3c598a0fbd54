//! Putting processes and cgroups under an identity.

use std::{
    collections::{HashMap, HashSet},
    path::{Path, PathBuf},
};

use agent_common::maps;
use tracing::{info, warn};

use super::{EnforceError, Enforcer, Live, assigned_file, merr};
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
            self.caps.files_lsm(),
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
        // Recorded before it is tagged: a tag the daemon could not name
        // after a restart could not be frozen, attested or orphaned.
        let l = self.live.get_mut(name).expect("known");
        if !l.assigned.iter().any(|a| a == path) {
            l.assigned.push(path.to_path_buf());
        }
        if let Err(e) = self.save_assigned() {
            let l = self.live.get_mut(name).expect("known");
            l.assigned.retain(|a| a != path);
            return Err(e);
        }
        self.cgroup_map()?
            .insert(cg_id, id, 0)
            .map_err(merr(maps::CGROUP_IDENTITY))?;
        let l = self.live.get(name).expect("known");
        info!(identity = %name, cgroup = %path.display(), "cgroup assigned");
        fileobs::warn_assign(
            name,
            l.policy.as_deref(),
            &format!("cgroup {}", path.display()),
            self.caps.files_lsm(),
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

/// Most cgroups searched for a tagged cgroup id whose recorded path is
/// missing or stale (a host has hundreds, not hundreds of thousands).
const FIND_LIMIT: usize = 100_000;

impl Enforcer {
    /// Rebuilds which cgroups were assigned to each adopted identity: the
    /// tags come from the pinned `CGROUP_IDENTITY` map, their paths from
    /// `<state_dir>/assigned.json` (checked against the cgroup id), or, for
    /// a tag the file does not name (a crash between the two writes, a lost
    /// file), from a search of the cgroup tree by id. Then rewrites the file
    /// to match.
    pub fn adopt_assigned(&mut self, state_dir: &Path, cg_root: &Path) {
        let file = state_dir.join(assigned_file::FILE_NAME);
        let recorded = assigned_file::load(&file).unwrap_or_else(|e| {
            warn!("{e}: finding assigned cgroups by their ids instead");
            Vec::new()
        });
        self.assigned_file = Some(file);
        let names: HashMap<u32, String> =
            self.live.iter().map(|(n, l)| (l.id, n.clone())).collect();
        let own: HashSet<u64> = self
            .live
            .values()
            .filter_map(|l| cgroup::id(&l.cgroup).ok())
            .collect();
        let tags: Vec<(u64, u32)> = match self.cgroup_map() {
            Ok(m) => m.iter().filter_map(Result::ok).collect(),
            Err(e) => {
                warn!("reading tagged cgroups: {e}");
                Vec::new()
            }
        };
        let attached: HashSet<u64> = loader::attached_cgroups(&self.pin_dir)
            .into_iter()
            .collect();
        for (cg_id, id) in tags {
            // Tags of identities that are gone are the GC's.
            let Some(name) = names.get(&id).filter(|_| !own.contains(&cg_id)) else {
                continue;
            };
            let path = recorded
                .iter()
                .filter(|e| e.cgroup_id == cg_id)
                .map(|e| e.path.clone())
                .find(|p| cgroup::id(p).ok() == Some(cg_id))
                .or_else(|| cgroup::find_by_id(cg_root, cg_id, FIND_LIMIT));
            let Some(path) = path else {
                warn!(identity = %name, cgroup_id = cg_id, "an assigned cgroup was not found (removed while no daemon ran?)");
                continue;
            };
            // Tagged after its programs were attached, so they should be
            // there; a cgroup outside the parent without them would be
            // tagged but unjudged.
            if !path.starts_with(&self.parent) && !attached.contains(&cg_id) {
                let links = loader::links_dir(&self.pin_dir, cg_id);
                if let Err(e) = loader::attach_sock_addr(&mut self.ebpf, &path, &links) {
                    warn!(cgroup = %path.display(), "attaching at an assigned cgroup: {e}");
                }
                if let Ok(u) = &self.unix
                    && let Err(e) = u.attach(&path, &links)
                {
                    warn!(cgroup = %path.display(), "attaching unix programs at an assigned cgroup: {e}");
                }
            }
            info!(identity = %name, cgroup = %path.display(), "assigned cgroup adopted");
            let l = self.live.get_mut(name).expect("named above");
            if !l.assigned.contains(&path) {
                l.assigned.push(path);
            }
        }
        if let Err(e) = self.save_assigned() {
            warn!("{e}");
        }
        self.publish();
    }

    /// Writes `assigned.json` when the assigned cgroups changed.
    pub(super) fn save_assigned(&mut self) -> Result<(), EnforceError> {
        let Some(file) = &self.assigned_file else {
            return Ok(());
        };
        let mut entries: Vec<assigned_file::Entry> = self
            .live
            .iter()
            .flat_map(|(name, l)| {
                l.assigned.iter().filter_map(move |p| {
                    Some(assigned_file::Entry {
                        identity: name.clone(),
                        cgroup_id: cgroup::id(p).ok()?,
                        path: p.clone(),
                    })
                })
            })
            .collect();
        entries.sort();
        if entries == self.assigned_saved && file.exists() {
            return Ok(());
        }
        assigned_file::save(file, &entries)?;
        self.assigned_saved = entries;
        Ok(())
    }
}
