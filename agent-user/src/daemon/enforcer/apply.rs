//! Writing policies into the kernel: each identity's network, unix and
//! file rules under a fresh ruleset id, then one `IDENTITIES` update that
//! flips it over.

use std::collections::HashSet;

use agent_common::{
    identity::{IdentityState, MAX_IDENTITIES},
    maps,
    net::{KEY_FIXED_BITS, Net4Key, Net6Key},
    unix::UnixKey,
};
use aya::maps::lpm_trie::Key;
use tracing::info;

use super::{
    ApplyReport, Compiled, EnforceError, Enforcer, Live, merr, name_bytes, rcu_grace_period,
};
use crate::{
    cgroup,
    daemon::lsm,
    policy::{NetTables, compiled},
};

/// The keys a ruleset was written under: NET4, NET6, UNIX_RULES, FILE_RULES.
struct Written(
    Vec<Key<Net4Key>>,
    Vec<Key<Net6Key>>,
    Vec<UnixKey>,
    Vec<lsm::FileKeyOf>,
);

impl Enforcer {
    /// Applies a whole validated set. Each identity flips atomically: its new
    /// rules are written under a fresh ruleset id beside the old ones, then
    /// one `IDENTITIES` update switches over, then the old rules go.
    pub(super) fn apply(&mut self, set: Vec<Compiled>) -> Result<ApplyReport, EnforceError> {
        if !self.swept {
            // Before anything is written: entries a daemon killed mid-apply
            // left under an id nothing points at go first.
            self.collect_garbage()?;
        }
        let mut report = ApplyReport::default();
        let wanted: HashSet<String> = set.iter().map(|c| c.policy.name.clone()).collect();
        // Every identity with its live grants first: a grant that cannot be
        // compiled refuses the apply before anything is written.
        let mut ready = Vec::with_capacity(set.len());
        for c in set {
            let base = c.policy.clone();
            ready.push((base, self.grants.augmented(c, &self.caps)?));
        }
        for (base, c) in ready {
            self.grants.record(&base);
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
        // Only prunes removed identities' cgroups: an entry the kernel no
        // longer tags is ignored at adoption anyway.
        if let Err(e) = self.save_assigned() {
            tracing::warn!("{e}");
        }
        Ok(report)
    }

    pub(super) fn apply_one(&mut self, c: Compiled) -> Result<(), EnforceError> {
        let name = c.policy.name.clone();
        let id = match self.live.get(&name) {
            Some(l) => l.id,
            None => self.free_id()?,
        };
        let cg = self.parent.join(&name);
        cgroup::ensure(&cg)?;
        let cg_id = cgroup::id(&cg)?;
        let ruleset = self.new_ruleset()?;
        let written = match self.write_ruleset(ruleset, &c) {
            Ok(w) => w,
            Err(e) => {
                // Nothing points at the half-written ruleset; GC removes it.
                let _ = self.collect_garbage();
                return Err(e);
            }
        };
        let state = IdentityState {
            ruleset,
            mode: c.policy.mode.into(),
            flags: c.policy.network.socket_flags()
                | if c.policy.files.confined {
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
            lsm::delete_rules(&mut self.ebpf, &old.file_keys);
        }
        let Written(keys4, keys6, unix_keys, file_keys) = written;
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

    /// Every table of `c` under `ruleset`, nothing pointing at it yet.
    fn write_ruleset(&mut self, ruleset: u32, c: &Compiled) -> Result<Written, EnforceError> {
        let (keys4, keys6) = self.write_rules(ruleset, &c.network)?;
        let unix_keys = match &mut self.unix {
            Ok(u) => u
                .write(ruleset, &c.policy.network.unix)
                .map_err(|e| EnforceError::Map(maps::UNIX_RULES, e))?,
            Err(_) => Vec::new(),
        };
        let file_keys = self.write_files(ruleset, &c.files)?;
        Ok(Written(keys4, keys6, unix_keys, file_keys))
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

    pub(super) fn delete_rules(&mut self, k4: &[Key<Net4Key>], k6: &[Key<Net6Key>]) {
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

    pub(super) fn free_id(&mut self) -> Result<u32, EnforceError> {
        let used: HashSet<u32> = self.live.values().map(|l| l.id).collect();
        (1..MAX_IDENTITIES)
            .find(|i| !used.contains(i))
            .ok_or(EnforceError::NoIds)
    }

    /// Writes an identity's compiled `FILE_RULES` entries under `ruleset`
    /// (without `[files]`, only Corral's protected paths: the kernel then
    /// refuses only what they refuse).
    fn write_files(
        &mut self,
        ruleset: u32,
        entries: &[lsm::FileEntry],
    ) -> Result<Vec<lsm::FileKeyOf>, EnforceError> {
        if !self.caps.files_lsm() || entries.is_empty() {
            return Ok(Vec::new());
        }
        lsm::write_rules(&mut self.ebpf, ruleset, entries).map_err(merr(maps::FILE_RULES))
    }

    /// Corral's protected paths alone under a fresh ruleset, for an
    /// identity whose policy is gone while processes remain (without
    /// `[files]` they would otherwise meet no protected path). Ruleset 0
    /// when BPF LSM does not enforce files.
    pub(super) fn write_protected_only(
        &mut self,
        name: &str,
    ) -> Result<(u32, Vec<lsm::FileKeyOf>), EnforceError> {
        if !self.caps.files_lsm() {
            return Ok((0, Vec::new()));
        }
        let entries = compiled::file_entries(None, name, &self.caps.protected)
            .map_err(|e| EnforceError::Files(name.to_string(), e.message))?;
        let ruleset = self.new_ruleset()?;
        let keys =
            lsm::write_rules(&mut self.ebpf, ruleset, &entries).map_err(merr(maps::FILE_RULES))?;
        Ok((ruleset, keys))
    }

    pub(super) fn delete_unix(&mut self, keys: &[UnixKey]) {
        if let Ok(u) = &mut self.unix {
            u.delete(keys);
        }
    }
}
