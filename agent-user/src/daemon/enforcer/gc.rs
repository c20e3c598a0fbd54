//! Taking rules away: entries of rulesets no identity points at, and
//! identities whose policy file is gone.

use std::collections::{BTreeSet, HashSet};

use agent_common::{
    identity::{IdentityState, MODE_ENFORCE},
    maps,
    net::{Net4Key, Net6Key},
    unix::UnixKey,
};
use aya::maps::lpm_trie::Key;
use tracing::{info, warn};

use super::{EnforceError, Enforcer, merr, name_bytes, rcu_grace_period};
use crate::{cgroup, daemon::lsm};

/// Rule map entries of rulesets no identity points at.
struct Stale {
    v4: Vec<Key<Net4Key>>,
    v6: Vec<Key<Net6Key>>,
    unix: Vec<UnixKey>,
    files: Vec<lsm::FileKeyOf>,
    /// A network map walk ended in an error: ids it did not reach may
    /// still have entries.
    partial: bool,
}

impl Stale {
    fn is_empty(&self) -> bool {
        self.v4.is_empty() && self.v6.is_empty() && self.unix.is_empty() && self.files.is_empty()
    }

    fn rulesets(&self) -> BTreeSet<u32> {
        let v4 = self.v4.iter().map(|k| u32::from_be(k.data().ruleset_be));
        let v6 = self.v6.iter().map(|k| u32::from_be(k.data().ruleset_be));
        let files = self.files.iter().map(|k| u32::from_be(k.data().ruleset_be));
        let unix = self.unix.iter().map(|k| k.ruleset);
        v4.chain(v6).chain(files).chain(unix).collect()
    }
}

/// Grant-only applies hand out ruleset ids without a sweep; after this many
/// the next id sweeps first, so ids in doubt stay few.
const UNSWEPT_MAX: usize = 64;

impl Enforcer {
    /// A ruleset id no rule map entry carries (see `ruleset_ids`).
    pub(super) fn new_ruleset(&mut self) -> Result<u32, EnforceError> {
        if !self.swept || self.rulesets.unswept(self.live.len()) > UNSWEPT_MAX {
            self.collect_garbage()?;
        }
        self.rulesets.take().ok_or(EnforceError::NoRulesets)
    }

    fn stale(&mut self, active: &HashSet<u32>) -> Result<Stale, EnforceError> {
        let mut partial = false;
        let mut v4 = Vec::new();
        for k in self.net4()?.keys() {
            match k {
                Ok(k) if !active.contains(&u32::from_be(k.data().ruleset_be)) => v4.push(k),
                Ok(_) => {}
                Err(_) => partial = true,
            }
        }
        let mut v6 = Vec::new();
        for k in self.net6()?.keys() {
            match k {
                Ok(k) if !active.contains(&u32::from_be(k.data().ruleset_be)) => v6.push(k),
                Ok(_) => {}
                Err(_) => partial = true,
            }
        }
        let unix = match &self.unix {
            Ok(u) => u.stale(active),
            Err(_) => Vec::new(),
        };
        let files = lsm::stale_rules(&mut self.ebpf, active);
        Ok(Stale {
            v4,
            v6,
            unix,
            files,
            partial,
        })
    }

    /// Deletes rule entries whose ruleset no identity points at (left by a
    /// previous daemon killed mid-apply, or a failed write), and tags of
    /// identities that are gone. Frees the ruleset ids it emptied: only a
    /// full scan can tell that no entry of an id is left.
    pub(super) fn collect_garbage(&mut self) -> Result<(), EnforceError> {
        let active: HashSet<u32> = self.live.values().map(|l| l.ruleset).collect();
        let stale = self.stale(&active)?;
        let mut partial = stale.partial;
        let mut left = BTreeSet::new();
        let ids = stale.rulesets();
        if !stale.is_empty() {
            info!(
                v4 = stale.v4.len(),
                v6 = stale.v6.len(),
                unix = stale.unix.len(),
                files = stale.files.len(),
                rulesets = ?ids,
                "removing stale rule entries"
            );
            // Stale entries may be a ruleset flipped away from just now.
            rcu_grace_period();
            self.delete_rules(&stale.v4, &stale.v6);
            self.delete_unix(&stale.unix);
            lsm::delete_rules(&mut self.ebpf, &stale.files);
            // Deletion errors are not reported one by one: what a second
            // scan still finds keeps its id taken.
            let again = self.stale(&active)?;
            partial |= again.partial;
            left = again.rulesets();
            if !left.is_empty() {
                warn!(rulesets = ?left, "stale rule entries could not all be removed; their ruleset ids stay unused");
            }
        }
        if partial {
            // Nothing is freed on an incomplete walk, and what it found is
            // held.
            warn!("walking the network rule maps failed part-way: no ruleset id is freed");
            self.rulesets.hold(ids);
        } else {
            self.rulesets.swept(active.iter().copied().chain(left));
            self.swept = true;
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
    pub(super) fn retire(&mut self, name: &str) -> Result<bool, EnforceError> {
        let Some(l) = self.live.get(name) else {
            return Ok(true);
        };
        let (id, cg) = (l.id, l.cgroup.clone());
        let procs = cgroup::process_count(&cg)
            + l.assigned
                .iter()
                .map(|a| cgroup::process_count(a))
                .sum::<usize>();
        // File access that was confined stays confined: with no rules,
        // denied. An identity adopted from a previous daemon has no policy
        // here yet: the kernel's flags say whether it was confined.
        let files_confined = match &l.policy {
            Some(p) => p.files.confined,
            None => self
                .identities()?
                .get(&id, 0)
                .is_ok_and(|st| st.flags & agent_common::file::IDENTITY_FLAG_FILES != 0),
        };
        // Without `[files]`, Corral's protected paths stay refused: their
        // rules alone, under a ruleset of their own (no network or unix
        // entries: those stay denied by default).
        let (ruleset, protected_keys) = if files_confined || procs == 0 {
            (0, Vec::new())
        } else {
            self.write_protected_only(name)?
        };
        let empty = IdentityState {
            ruleset,
            mode: MODE_ENFORCE,
            flags: if files_confined {
                agent_common::file::IDENTITY_FLAG_FILES
            } else {
                0
            },
            _pad: 0,
            name: name_bytes(name),
        };
        // First take every rule away (ruleset 0, or the protected paths'
        // own, has no allow entries), so there is
        // no moment with a stale allow.
        self.identities()?
            .insert(id, empty, 0)
            .map_err(merr(maps::IDENTITIES))?;
        let l = self.live.get_mut(name).expect("checked above");
        let (k4, k6) = (std::mem::take(&mut l.keys4), std::mem::take(&mut l.keys6));
        let ku = std::mem::take(&mut l.unix_keys);
        let kf = std::mem::replace(&mut l.file_keys, protected_keys);
        l.ruleset = ruleset;
        l.policy = None;
        l.digest = None;
        self.delete_rules(&k4, &k6);
        self.delete_unix(&ku);
        lsm::delete_rules(&mut self.ebpf, &kf);
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
}
