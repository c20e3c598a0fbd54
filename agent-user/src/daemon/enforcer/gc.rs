//! Taking rules away: entries of rulesets no identity points at, and
//! identities whose policy file is gone.

use std::collections::HashSet;

use agent_common::{
    identity::{IdentityState, MODE_ENFORCE},
    maps,
    net::{Net4Key, Net6Key},
};
use aya::maps::lpm_trie::Key;
use tracing::{info, warn};

use super::{EnforceError, Enforcer, merr, name_bytes, rcu_grace_period};
use crate::{cgroup, daemon::lsm};

impl Enforcer {
    /// Deletes rule entries whose ruleset no identity points at (left by a
    /// previous daemon or a failed write).
    pub(super) fn collect_garbage(&mut self) -> Result<(), EnforceError> {
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
        let stale_files = lsm::stale_rules(&mut self.ebpf, &active);
        if !stale_files.is_empty() {
            info!(
                files = stale_files.len(),
                "removing stale file rule entries"
            );
            rcu_grace_period();
            lsm::delete_rules(&mut self.ebpf, &stale_files);
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
        // File access that was confined stays confined: with no rules, denied.
        let files_confined = l.policy.as_ref().is_some_and(|p| p.files.confined);
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
