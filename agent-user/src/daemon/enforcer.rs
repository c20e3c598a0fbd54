//! The actor that owns the `aya::Ebpf` object and every map handle. Other
//! tasks send it `Command`s; it publishes a `Snapshot` after each change.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    path::{Path, PathBuf},
    sync::Arc,
};

use agent_common::{
    identity::{
        IDENTITY_NAME_LEN, IdentityState, IdentityStats, MAX_IDENTITIES, MODE_ENFORCE, Mode,
    },
    maps,
    net::{KEY_FIXED_BITS, Net4Key, Net6Key, NetRuleList},
    unix::UnixKey,
};
use aya::{
    Ebpf,
    maps::{HashMap as BpfHashMap, LpmTrie, MapData, PerCpuArray, lpm_trie::Key},
};
use serde::Serialize;
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{info, warn};

use super::{
    loader,
    snapshot::{IdentityView, Snapshot},
    unix::Unix,
};
use crate::{
    cgroup,
    policy::{IdentityPolicy, NetTables},
};

#[derive(Debug, thiserror::Error)]
pub enum EnforceError {
    #[error("map {0}: {1}")]
    Map(&'static str, aya::maps::MapError),
    #[error("{0}")]
    Cgroup(#[from] cgroup::CgroupError),
    #[error("{0}")]
    Load(#[from] loader::LoadError),
    #[error("no free identity id (at most {MAX_IDENTITIES} identities)")]
    NoIds,
    #[error("unknown identity `{name}`; known: {known}")]
    UnknownIdentity { name: String, known: String },
    #[error("refusing to assign pid {0}: {1}")]
    BadPid(u32, &'static str),
    #[error("lease grants of {0}: {1}")]
    Grants(String, String),
    #[error("file rules of {0}: {1}")]
    Files(String, super::lsm::CompileError),
}

fn merr(name: &'static str) -> impl FnOnce(aya::maps::MapError) -> EnforceError {
    move |e| EnforceError::Map(name, e)
}

/// One identity of a validated policy set, compiled.
pub struct Compiled {
    pub policy: Arc<IdentityPolicy>,
    pub tables: NetTables,
}

#[derive(Debug, Default, Serialize)]
pub struct ApplyReport {
    pub changed: Vec<String>,
    pub unchanged: Vec<String>,
    pub removed: Vec<String>,
    /// Identities whose policy file is gone but whose cgroup still has
    /// processes: kept tagged, denied by default.
    pub orphaned: Vec<String>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Counters {
    pub allowed: u64,
    pub denied: u64,
    pub audited: u64,
}

pub enum Command {
    Apply {
        set: Vec<Compiled>,
        reply: oneshot::Sender<Result<ApplyReport, EnforceError>>,
    },
    AssignPid {
        identity: String,
        pid: u32,
        reply: oneshot::Sender<Result<PathBuf, EnforceError>>,
    },
    AssignCgroup {
        identity: String,
        path: PathBuf,
        reply: oneshot::Sender<Result<PathBuf, EnforceError>>,
    },
    Counters {
        reply: oneshot::Sender<HashMap<u32, Counters>>,
    },
    /// The live leases of an identity changed: apply its policy with their
    /// grants (see `lease::GrantTable`).
    Grants {
        identity: String,
        live: Vec<crate::policy::LiveGrant>,
        reply: oneshot::Sender<Result<(), EnforceError>>,
    },
}

struct Live {
    id: u32,
    ruleset: u32,
    digest: Option<u64>,
    policy: Option<Arc<IdentityPolicy>>,
    keys4: Vec<Key<Net4Key>>,
    keys6: Vec<Key<Net6Key>>,
    unix_keys: Vec<UnixKey>,
    /// `FILE_RULES` entries (only while BPF LSM enforces `[files]`).
    file_keys: Vec<super::lsm::FileKeyOf>,
    cgroup: PathBuf,
    assigned: Vec<PathBuf>,
}

pub struct Enforcer {
    ebpf: Ebpf,
    parent: PathBuf,
    pin_dir: PathBuf,
    daemon_pid: u32,
    live: BTreeMap<String, Live>,
    next_ruleset: u32,
    snapshot: watch::Sender<Arc<Snapshot>>,
    /// AF_UNIX programs and rule map, or why unix rules are not enforced.
    unix: Result<Unix, String>,
    /// Lease grants added to each identity's written rules.
    grants: super::lease::GrantTable,
    /// BPF LSM `file_open` is attached: `[files]` rules go to `FILE_RULES`.
    files_lsm: bool,
    /// The lease token directory, refused to every identity but for its
    /// own token (`lsm::tokens`).
    tokens_dir: Option<PathBuf>,
    /// `[syscalls]`: the pinned `SYSCALL_POLICY` values and the observers.
    syscalls: super::syscalls::Syscalls,
}

impl Enforcer {
    /// Takes over a loaded object; identities left in pinned maps by a
    /// previous daemon are adopted (same ids, rules kept until replaced).
    pub fn new(
        ebpf: Ebpf,
        parent: PathBuf,
        pin_dir: PathBuf,
        snapshot: watch::Sender<Arc<Snapshot>>,
    ) -> Result<Self, EnforceError> {
        let mut ebpf = ebpf;
        let syscalls = super::syscalls::Syscalls::new(&mut ebpf, &pin_dir);
        let mut me = Enforcer {
            syscalls,
            ebpf,
            parent,
            pin_dir,
            daemon_pid: std::process::id(),
            live: BTreeMap::new(),
            next_ruleset: 1,
            snapshot,
            unix: Err("unix socket programs not loaded".into()),
            grants: Default::default(),
            files_lsm: false,
            tokens_dir: None,
        };
        let adopted: Vec<(u32, IdentityState)> =
            me.identities()?.iter().filter_map(|r| r.ok()).collect();
        for (id, st) in adopted {
            let name = name_of(&st);
            me.next_ruleset = me.next_ruleset.max(st.ruleset + 1);
            info!(identity = %name, id, ruleset = st.ruleset, "adopted identity from pinned maps");
            let cgroup = me.parent.join(&name);
            me.live.insert(
                name,
                Live {
                    id,
                    ruleset: st.ruleset,
                    digest: None,
                    policy: None,
                    keys4: Vec::new(),
                    keys6: Vec::new(),
                    unix_keys: Vec::new(),
                    file_keys: Vec::new(),
                    cgroup,
                    assigned: Vec::new(),
                },
            );
        }
        Ok(me)
    }

    pub async fn run(mut self, mut rx: mpsc::Receiver<Command>) {
        while let Some(cmd) = rx.recv().await {
            match cmd {
                Command::Apply { set, reply } => {
                    let r = self
                        .apply(set)
                        .and_then(|rep| self.sync_syscalls().map(|()| rep));
                    self.publish();
                    let _ = reply.send(r);
                }
                Command::AssignPid {
                    identity,
                    pid,
                    reply,
                } => {
                    let _ = reply.send(self.assign_pid(&identity, pid));
                }
                Command::AssignCgroup {
                    identity,
                    path,
                    reply,
                } => {
                    let r = self.assign_cgroup(&identity, &path);
                    self.syscalls.tags_changed(&mut self.ebpf);
                    self.publish();
                    let _ = reply.send(r);
                }
                Command::Counters { reply } => {
                    let _ = reply.send(self.counters());
                }
                Command::Grants {
                    identity,
                    live,
                    reply,
                } => {
                    let live_digest = self
                        .live
                        .get(&identity)
                        .filter(|l| l.policy.is_some())
                        .map(|l| l.digest);
                    let known = live_digest.is_some();
                    let r = match self.grants.set(&identity, live) {
                        // Scopes without network grants change nothing here.
                        Some(Ok(c)) if live_digest == Some(Some(c.policy.digest)) => Ok(()),
                        Some(Ok(c)) if known => self.apply_one(c),
                        Some(Err(e)) if known => Err(e),
                        _ => Ok(()),
                    };
                    self.publish();
                    let _ = reply.send(r);
                }
            }
        }
    }

    /// `SYSCALL_POLICY` and the syscall observers follow the live set (one
    /// map update per changed identity), after every apply.
    fn sync_syscalls(&mut self) -> Result<(), EnforceError> {
        let live: Vec<super::syscalls::LiveIdentity> = self
            .live
            .iter()
            .map(|(name, l)| super::syscalls::LiveIdentity {
                id: l.id,
                name: name.clone(),
                ruleset: l.ruleset,
                policy: l.policy.clone(),
            })
            .collect();
        self.syscalls
            .sync(&mut self.ebpf, &live)
            .map_err(merr(maps::SYSCALL_POLICY))
    }

    /// What `corral status` lists for `[syscalls]`.
    pub fn syscall_mechanisms(&self) -> Vec<super::status::Mechanism> {
        self.syscalls.mechanisms()
    }

    fn identities(&mut self) -> Result<BpfHashMap<&mut MapData, u32, IdentityState>, EnforceError> {
        let m = self
            .ebpf
            .map_mut(maps::IDENTITIES)
            .expect("IDENTITIES in object");
        BpfHashMap::try_from(m).map_err(merr(maps::IDENTITIES))
    }

    fn cgroup_map(&mut self) -> Result<BpfHashMap<&mut MapData, u64, u32>, EnforceError> {
        let m = self
            .ebpf
            .map_mut(maps::CGROUP_IDENTITY)
            .expect("CGROUP_IDENTITY in object");
        BpfHashMap::try_from(m).map_err(merr(maps::CGROUP_IDENTITY))
    }

    fn net4(&mut self) -> Result<LpmTrie<&mut MapData, Net4Key, NetRuleList>, EnforceError> {
        let m = self
            .ebpf
            .map_mut(maps::NET4_RULES)
            .expect("NET4_RULES in object");
        LpmTrie::try_from(m).map_err(merr(maps::NET4_RULES))
    }

    fn net6(&mut self) -> Result<LpmTrie<&mut MapData, Net6Key, NetRuleList>, EnforceError> {
        let m = self
            .ebpf
            .map_mut(maps::NET6_RULES)
            .expect("NET6_RULES in object");
        LpmTrie::try_from(m).map_err(merr(maps::NET6_RULES))
    }

    /// Applies a whole validated set. Each identity flips atomically: its new
    /// rules are written under a fresh ruleset id beside the old ones, then
    /// one `IDENTITIES` update switches over, then the old rules go.
    fn apply(&mut self, set: Vec<Compiled>) -> Result<ApplyReport, EnforceError> {
        let mut report = ApplyReport::default();
        let wanted: HashSet<String> = set.iter().map(|c| c.policy.name.clone()).collect();
        for c in set {
            let c = self.grants.augment(c)?;
            let name = c.policy.name.clone();
            if let Some(l) = self
                .live
                .get_mut(&name)
                .filter(|l| l.digest == Some(c.policy.digest) && l.policy.is_some())
            {
                // The kernel is not touched; the policy is still refreshed
                // for where its rules are written (events, explain).
                l.policy = Some(c.policy);
                report.unchanged.push(name);
                continue;
            }
            self.apply_one(c)?;
            report.changed.push(name);
        }
        let gone: Vec<String> = self
            .live
            .keys()
            .filter(|n| !wanted.contains(*n))
            .cloned()
            .collect();
        for name in gone {
            if self.retire(&name)? {
                report.removed.push(name);
            } else {
                report.orphaned.push(name);
            }
        }
        self.collect_garbage()?;
        Ok(report)
    }

    fn apply_one(&mut self, c: Compiled) -> Result<(), EnforceError> {
        let name = c.policy.name.clone();
        let id = match self.live.get(&name) {
            Some(l) => l.id,
            None => self.free_id()?,
        };
        let cg = self.parent.join(&name);
        cgroup::ensure(&cg)?;
        let cg_id = cgroup::id(&cg)?;
        let ruleset = self.next_ruleset;
        self.next_ruleset += 1;

        let (keys4, keys6) = match self.write_rules(ruleset, &c.tables) {
            Ok(k) => k,
            Err(e) => {
                // Nothing points at the half-written ruleset; GC removes it.
                let _ = self.collect_garbage();
                return Err(e);
            }
        };
        let unix_keys = match &mut self.unix {
            Ok(u) => match u.write(ruleset, &c.policy.network.unix) {
                Ok(k) => k,
                Err(e) => {
                    let _ = self.collect_garbage();
                    return Err(EnforceError::Map(maps::UNIX_RULES, e));
                }
            },
            Err(_) => Vec::new(),
        };
        let file_keys = match self.write_files(ruleset, &c.policy) {
            Ok(k) => k,
            Err(e) => {
                let _ = self.collect_garbage();
                return Err(e);
            }
        };
        let state = IdentityState {
            ruleset,
            mode: c.policy.mode.into(),
            flags: if c.policy.files.confined {
                agent_common::file::IDENTITY_FLAG_FILES
            } else {
                0
            },
            _pad: 0,
            name: name_bytes(&name),
        };
        self.identities()?
            .insert(id, state, 0)
            .map_err(merr(maps::IDENTITIES))?;
        self.cgroup_map()?
            .insert(cg_id, id, 0)
            .map_err(merr(maps::CGROUP_IDENTITY))?;

        let old = self.live.remove(&name);
        let assigned = old.as_ref().map(|o| o.assigned.clone()).unwrap_or_default();
        if let Some(old) = old {
            // A program that read the old ruleset id just before the flip
            // may still look it up: let every such run finish first.
            rcu_grace_period();
            self.delete_rules(&old.keys4, &old.keys6);
            self.delete_unix(&old.unix_keys);
            super::lsm::delete_rules(&mut self.ebpf, &old.file_keys);
        }
        info!(
            identity = %name, id, ruleset, mode = ?c.policy.mode,
            v4 = keys4.len(), v6 = keys6.len(), "policy applied"
        );
        self.live.insert(
            name,
            Live {
                id,
                ruleset,
                digest: Some(c.policy.digest),
                policy: Some(c.policy),
                keys4,
                keys6,
                unix_keys,
                file_keys,
                cgroup: cg,
                assigned,
            },
        );
        Ok(())
    }

    #[allow(clippy::type_complexity, reason = "pair of key lists, used once")]
    fn write_rules(
        &mut self,
        ruleset: u32,
        t: &NetTables,
    ) -> Result<(Vec<Key<Net4Key>>, Vec<Key<Net6Key>>), EnforceError> {
        let mut keys4 = Vec::with_capacity(t.v4.len());
        let mut keys6 = Vec::with_capacity(t.v6.len());
        {
            let mut m = self.net4()?;
            for e in &t.v4 {
                let k = Key::new(
                    KEY_FIXED_BITS + e.prefix_len,
                    Net4Key {
                        ruleset_be: ruleset.to_be(),
                        class_be: e.class.to_be(),
                        addr: e.addr,
                    },
                );
                m.insert(&k, e.list, 0).map_err(merr(maps::NET4_RULES))?;
                keys4.push(k);
            }
        }
        let mut m = self.net6()?;
        for e in &t.v6 {
            let k = Key::new(
                KEY_FIXED_BITS + e.prefix_len,
                Net6Key {
                    ruleset_be: ruleset.to_be(),
                    class_be: e.class.to_be(),
                    addr: e.addr,
                },
            );
            m.insert(&k, e.list, 0).map_err(merr(maps::NET6_RULES))?;
            keys6.push(k);
        }
        Ok((keys4, keys6))
    }

    fn delete_rules(&mut self, k4: &[Key<Net4Key>], k6: &[Key<Net6Key>]) {
        if let Ok(mut m) = self.net4() {
            for k in k4 {
                let _ = m.remove(k);
            }
        }
        if let Ok(mut m) = self.net6() {
            for k in k6 {
                let _ = m.remove(k);
            }
        }
    }

    /// Deletes rule entries whose ruleset no identity points at (left by a
    /// previous daemon or a failed write).
    fn collect_garbage(&mut self) -> Result<(), EnforceError> {
        let active: HashSet<u32> = self.live.values().map(|l| l.ruleset).collect();
        let stale4: Vec<Key<Net4Key>> = self
            .net4()?
            .keys()
            .filter_map(Result::ok)
            .filter(|k| !active.contains(&u32::from_be(k.data().ruleset_be)))
            .collect();
        let stale6: Vec<Key<Net6Key>> = self
            .net6()?
            .keys()
            .filter_map(Result::ok)
            .filter(|k| !active.contains(&u32::from_be(k.data().ruleset_be)))
            .collect();
        if !stale4.is_empty() || !stale6.is_empty() {
            info!(
                v4 = stale4.len(),
                v6 = stale6.len(),
                "removing stale rule entries"
            );
            // Stale entries may be a ruleset flipped away from just now.
            rcu_grace_period();
        }
        self.delete_rules(&stale4, &stale6);
        if let Ok(u) = &mut self.unix {
            let stale = u.stale(&active);
            if !stale.is_empty() {
                info!(unix = stale.len(), "removing stale unix rule entries");
            }
            u.delete(&stale);
        }
        let stale_files = super::lsm::stale_rules(&mut self.ebpf, &active);
        if !stale_files.is_empty() {
            info!(
                files = stale_files.len(),
                "removing stale file rule entries"
            );
            rcu_grace_period();
            super::lsm::delete_rules(&mut self.ebpf, &stale_files);
        }
        let live_ids: HashSet<u32> = self.live.values().map(|l| l.id).collect();
        let stale_tags: Vec<u64> = self
            .cgroup_map()?
            .iter()
            .filter_map(Result::ok)
            .filter(|(_, id)| !live_ids.contains(id))
            .map(|(cg, _)| cg)
            .collect();
        let mut cm = self.cgroup_map()?;
        for cg in stale_tags {
            let _ = cm.remove(&cg);
        }
        Ok(())
    }

    /// An identity whose policy file is gone. Returns true when it was
    /// removed; false when processes remain and it stays, denied by default.
    fn retire(&mut self, name: &str) -> Result<bool, EnforceError> {
        let Some(l) = self.live.get(name) else {
            return Ok(true);
        };
        let (id, cg) = (l.id, l.cgroup.clone());
        let procs = cgroup::process_count(&cg)
            + l.assigned
                .iter()
                .map(|a| cgroup::process_count(a))
                .sum::<usize>();
        // File access that was confined stays confined: with no rules, denied.
        let files_confined = l.policy.as_ref().is_some_and(|p| p.files.confined);
        let empty = IdentityState {
            ruleset: 0,
            mode: MODE_ENFORCE,
            flags: if files_confined {
                agent_common::file::IDENTITY_FLAG_FILES
            } else {
                0
            },
            _pad: 0,
            name: name_bytes(name),
        };
        // First take every rule away (ruleset 0 has no entries), so there is
        // no moment with a stale allow.
        self.identities()?
            .insert(id, empty, 0)
            .map_err(merr(maps::IDENTITIES))?;
        let l = self.live.get_mut(name).expect("checked above");
        let (k4, k6) = (std::mem::take(&mut l.keys4), std::mem::take(&mut l.keys6));
        let ku = std::mem::take(&mut l.unix_keys);
        let kf = std::mem::take(&mut l.file_keys);
        l.ruleset = 0;
        l.policy = None;
        l.digest = None;
        self.delete_rules(&k4, &k6);
        self.delete_unix(&ku);
        super::lsm::delete_rules(&mut self.ebpf, &kf);
        if procs > 0 {
            warn!(
                identity = %name, processes = procs,
                "policy file removed but the identity still has processes: \
                 they stay tagged and everything is denied"
            );
            return Ok(false);
        }
        if let Ok(cg_id) = cgroup::id(&cg) {
            let _ = self.cgroup_map()?.remove(&cg_id);
        }
        let _ = cgroup::remove_tree(&cg);
        let _ = self.identities()?.remove(&id);
        self.live.remove(name);
        info!(identity = %name, "identity removed");
        Ok(true)
    }

    fn free_id(&mut self) -> Result<u32, EnforceError> {
        let used: HashSet<u32> = self.live.values().map(|l| l.id).collect();
        (1..MAX_IDENTITIES)
            .find(|i| !used.contains(i))
            .ok_or(EnforceError::NoIds)
    }

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

    fn assign_pid(&mut self, name: &str, pid: u32) -> Result<PathBuf, EnforceError> {
        if pid <= 1 {
            return Err(EnforceError::BadPid(pid, "pid 1 (init) cannot be an agent"));
        }
        if pid == self.daemon_pid {
            return Err(EnforceError::BadPid(pid, "that is the corral daemon"));
        }
        let cg = self.known(name)?.cgroup.clone();
        cgroup::move_pid(&cg, pid)?;
        info!(identity = %name, pid, "process assigned");
        super::fileobs::warn_assign(
            name,
            self.known(name)?.policy.as_deref(),
            &format!("pid {pid}"),
        );
        Ok(cg)
    }

    fn assign_cgroup(&mut self, name: &str, path: &Path) -> Result<PathBuf, EnforceError> {
        let id = self.known(name)?.id;
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
        super::fileobs::warn_assign(
            name,
            l.policy.as_deref(),
            &format!("cgroup {}", path.display()),
        );
        Ok(path.to_path_buf())
    }

    fn counters(&mut self) -> HashMap<u32, Counters> {
        let ids: Vec<u32> = self.live.values().map(|l| l.id).collect();
        let mut out = HashMap::new();
        let Some(m) = self.ebpf.map(maps::IDENTITY_STATS) else {
            return out;
        };
        let Ok(arr) = PerCpuArray::<_, IdentityStats>::try_from(m) else {
            return out;
        };
        for id in ids {
            if let Ok(vals) = arr.get(&id, 0) {
                let mut c = Counters::default();
                for v in vals.iter() {
                    c.allowed += v.allowed;
                    c.denied += v.denied;
                    c.audited += v.audited;
                }
                out.insert(id, c);
            }
        }
        out
    }

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
            super::unix::detach_all(&self.pin_dir);
        }
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

    /// Whether BPF LSM enforces `[files]` (set once at start-up): only then
    /// are file rules compiled into `FILE_RULES`.
    pub fn set_files_lsm(&mut self, on: bool) {
        self.files_lsm = on;
    }

    pub fn set_tokens_dir(&mut self, dir: PathBuf) {
        self.tokens_dir = Some(dir);
    }

    /// Compiles and writes an identity's `[files]` rules under `ruleset`.
    fn write_files(
        &mut self,
        ruleset: u32,
        policy: &IdentityPolicy,
    ) -> Result<Vec<super::lsm::FileKeyOf>, EnforceError> {
        if !self.files_lsm {
            return Ok(Vec::new());
        }
        let Some(mut rules) = super::lsm::compile::rules_of(&policy.files) else {
            return Ok(Vec::new());
        };
        if let Some(dir) = &self.tokens_dir {
            rules.extend(super::lsm::tokens::rules(dir, &policy.name, policy));
        }
        let entries =
            super::lsm::compile(&rules).map_err(|e| EnforceError::Files(policy.name.clone(), e))?;
        super::lsm::write_rules(&mut self.ebpf, ruleset, &entries).map_err(merr(maps::FILE_RULES))
    }

    fn delete_unix(&mut self, keys: &[UnixKey]) {
        if let Ok(u) = &mut self.unix {
            u.delete(keys);
        }
    }

    fn publish(&self) {
        let mut s = Snapshot::default();
        for (name, l) in &self.live {
            let mode = l.policy.as_ref().map(|p| p.mode).unwrap_or(Mode::Enforce);
            s.by_id.insert(
                l.id,
                Arc::new(IdentityView {
                    id: l.id,
                    name: name.clone(),
                    mode,
                    cgroup: l.cgroup.clone(),
                    assigned: l.assigned.clone(),
                    policy: l.policy.clone(),
                    ruleset: l.ruleset,
                    v4_entries: l.keys4.len(),
                    v6_entries: l.keys6.len(),
                    unix_entries: l.unix_keys.len(),
                    file_entries: l.file_keys.len(),
                    unix_enforced: self.unix.is_ok(),
                }),
            );
        }
        self.snapshot.send_replace(Arc::new(s));
    }
}

/// Waits until every BPF program run that started before the call has
/// finished (`membarrier(MEMBARRIER_CMD_GLOBAL)` is `synchronize_rcu()`;
/// programs run under the RCU read lock). Falls back to a sleep far longer
/// than any program run where membarrier is unavailable.
fn rcu_grace_period() {
    const MEMBARRIER_CMD_GLOBAL: libc::c_long = 1;
    // SAFETY: plain syscall without pointer arguments.
    let r = unsafe { libc::syscall(libc::SYS_membarrier, MEMBARRIER_CMD_GLOBAL, 0, 0) };
    if r != 0 {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

fn name_bytes(name: &str) -> [u8; IDENTITY_NAME_LEN] {
    let mut b = [0u8; IDENTITY_NAME_LEN];
    let n = name.len().min(IDENTITY_NAME_LEN - 1);
    b[..n].copy_from_slice(&name.as_bytes()[..n]);
    b
}

fn name_of(st: &IdentityState) -> String {
    crate::event::comm_str(&st.name)
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
