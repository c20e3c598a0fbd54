//! The actor that owns the `aya::Ebpf` object and every map handle. Other
//! tasks send it `Command`s; it publishes a `Snapshot` after each change.
//! Only this task touches the object, so its helpers are `&mut self`
//! methods, kept by job in `apply` (writing policies), `gc` (taking rules and
//! identities away), `assign` (processes and cgroups, and the assigned
//! cgroups a restart must not forget, kept in `assigned_file`), `links`
//! (program attachment at start-up) and `ruleset_ids` (which rule map
//! generations are free).

mod apply;
mod assign;
mod assigned_file;
mod gc;
mod grant_table;
mod grants;
mod links;
mod ruleset_ids;

use std::{
    collections::{BTreeMap, HashMap},
    path::PathBuf,
    sync::Arc,
};

use agent_common::{
    identity::{IDENTITY_NAME_LEN, IdentityState, IdentityStats, MAX_IDENTITIES, Mode},
    maps,
    net::{Net4Key, Net6Key, NetRuleList},
    unix::UnixKey,
};
use aya::{
    Ebpf,
    maps::{HashMap as BpfHashMap, LpmTrie, MapData, PerCpuArray, lpm_trie::Key},
};
use serde::Serialize;
use tokio::sync::{mpsc, oneshot, watch};
use tracing::info;

use super::{
    capabilities::Capabilities,
    loader,
    snapshot::{IdentityView, Snapshot},
    unix::Unix,
};
use crate::{cgroup, policy::IdentityPolicy};

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
    /// Nothing exempts the daemon by pid any more: it stays unjudged by
    /// staying untagged.
    #[error(
        "cgroup {} holds the corral daemon (which runs in {}): tagging it would put the daemon \
         under an identity's rules; run agents in a cgroup of their own",
        tagged.display(), own.display()
    )]
    OwnCgroup { tagged: PathBuf, own: PathBuf },
    #[error("lease grants of {0}: {1}")]
    Grants(String, String),
    #[error("file rules of {0}: {1}")]
    Files(String, String),
    #[error("no free ruleset id (every id may still have rule map entries)")]
    NoRulesets,
    #[error("recording assigned cgroups: {0}")]
    State(#[from] assigned_file::StateError),
}

fn merr(name: &'static str) -> impl FnOnce(aya::maps::MapError) -> EnforceError {
    move |e| EnforceError::Map(name, e)
}

/// One identity of a validated policy set, compiled by the compile stage
/// (`policy::compiled`): the enforcer only writes it.
pub use crate::policy::compiled::CompiledIdentity as Compiled;

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
    /// grants (see `grant_table::GrantTable`).
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
    rulesets: ruleset_ids::RulesetIds,
    /// Rule maps were swept since start-up: entries a killed daemon left
    /// under ids nothing points at are gone (see `ruleset_ids`).
    swept: bool,
    /// `<state-dir>/assigned.json` (`None` until `adopt_assigned`), and the
    /// entries last written there.
    assigned_file: Option<PathBuf>,
    assigned_saved: Vec<assigned_file::Entry>,
    snapshot: watch::Sender<Arc<Snapshot>>,
    /// AF_UNIX programs and rule map, or why unix rules are not enforced.
    unix: Result<Unix, String>,
    /// Lease grants added to each identity's written rules.
    grants: grant_table::GrantTable,
    /// Whether BPF LSM enforces `[files]` (then file rules go to
    /// `FILE_RULES`), and Corral's protected paths, written into every
    /// identity's file rules.
    caps: Arc<Capabilities>,
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
        caps: Arc<Capabilities>,
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
            rulesets: ruleset_ids::RulesetIds::new(0, []),
            swept: false,
            assigned_file: None,
            assigned_saved: Vec::new(),
            snapshot,
            unix: Err("unix socket programs not loaded".into()),
            grants: Default::default(),
            caps,
        };
        let adopted: Vec<(u32, IdentityState)> =
            me.identities()?.iter().filter_map(|r| r.ok()).collect();
        // Until the first sweep, only the adopted rulesets are known to be
        // in use; `new_ruleset` sweeps before it hands out any id.
        let top = adopted.iter().map(|(_, st)| st.ruleset).max().unwrap_or(0);
        me.rulesets = ruleset_ids::RulesetIds::new(top, adopted.iter().map(|(_, st)| st.ruleset));
        for (id, st) in adopted {
            let name = name_of(&st);
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
        // Before anything is applied: a daemon inside an identity would
        // judge itself.
        me.check_own_cgroup()?;
        Ok(me)
    }

    pub async fn run(mut self, mut rx: mpsc::Receiver<Command>) {
        // How soon an orphaned agent (its launcher died) gets the observers
        // that report its fail-closed calls.
        let mut tick = tokio::time::interval(std::time::Duration::from_millis(50));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let cmd = tokio::select! {
                c = rx.recv() => match c {
                    Some(c) => c,
                    None => break,
                },
                _ = tick.tick() => {
                    self.refresh_syscall_observers();
                    continue;
                }
            };
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
                    let r = self.assign_pid(&identity, pid);
                    self.refresh_syscall_observers();
                    let _ = reply.send(r);
                }
                Command::AssignCgroup {
                    identity,
                    path,
                    reply,
                } => {
                    let r = self.assign_cgroup(&identity, &path);
                    self.syscalls.tags_changed(&mut self.ebpf);
                    self.refresh_syscall_observers();
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
                    let r = match self.grants.set(&identity, live, &self.caps) {
                        // Scopes without network grants change nothing here.
                        Some(Ok(c)) if live_digest == Some(Some(c.policy.digest)) => Ok(()),
                        Some(Ok(c)) if known => self.apply_grants(c),
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
        let live = self.live_syscalls(false);
        self.syscalls
            .sync(&mut self.ebpf, &live)
            .map_err(merr(maps::SYSCALL_POLICY))
    }

    /// Re-checks whether the syscall observers are needed (after an
    /// assign, and periodically: launchers and assigned processes come and
    /// go without telling the daemon).
    fn refresh_syscall_observers(&mut self) {
        let live = self.live_syscalls(true);
        self.syscalls.refresh(&mut self.ebpf, &live);
    }

    /// The live identities as the syscall layer sees them (only those with
    /// a `[syscalls]` section when `confined_only`).
    fn live_syscalls(&self, confined_only: bool) -> Vec<super::syscalls::LiveIdentity> {
        self.live
            .iter()
            .filter(|(_, l)| {
                !confined_only || l.policy.as_ref().is_some_and(|p| p.syscalls.is_some())
            })
            .map(|(name, l)| super::syscalls::LiveIdentity {
                id: l.id,
                name: name.clone(),
                ruleset: l.ruleset,
                policy: l.policy.clone(),
                cgroups: std::iter::once(l.cgroup.clone())
                    .chain(l.assigned.iter().cloned())
                    .collect(),
            })
            .collect()
    }

    /// What `corral status` lists for `[syscalls]`.
    pub fn syscall_mechanisms(&self) -> Vec<super::mechanism::Mechanism> {
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
