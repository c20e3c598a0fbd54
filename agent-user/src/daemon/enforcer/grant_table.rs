//! The enforcer's view of lease grants: which leases live per identity, and
//! each identity's policy as written, so its rules can be compiled again
//! with the grants whenever either changes. A policy apply writes the
//! result under a new ruleset; a grant change alone is written in place
//! (`enforcer/grants.rs`), from the tables remembered here.

use std::{collections::HashMap, sync::Arc};

use super::{Compiled, EnforceError};
use crate::policy::{IdentityPolicy, LiveGrant, NetTables, with_grants};

use crate::clock::boot_ns;

#[derive(Default)]
pub struct GrantTable {
    /// Each identity's policy as compiled from its file (without grants).
    base: HashMap<String, Arc<IdentityPolicy>>,
    live: HashMap<String, Vec<LiveGrant>>,
    /// The network tables last written in place per identity, with the
    /// ruleset and policy digest they were written for: the "before" of
    /// the next in-place change (without it, compiled again).
    written: HashMap<String, (u32, u64, Arc<NetTables>)>,
}

impl GrantTable {
    /// Records `c` as the identity's written policy and returns what the
    /// kernel should hold: `c` itself, or `c` with the live grants added.
    ///
    /// `files_lsm`: BPF LSM judges opens. Without it file grants are withheld
    /// here too, not only by Landlock: what the daemon serves as the policy
    /// in force must never carry a file rule that cannot end with its lease.
    pub fn augment(&mut self, c: Compiled, files_lsm: bool) -> Result<Compiled, EnforceError> {
        let name = c.policy.name.clone();
        self.base.insert(name.clone(), c.policy.clone());
        let Some(live) = self.live.get(&name).filter(|l| !l.is_empty()) else {
            return Ok(c);
        };
        let (mut policy, tables) = with_grants(&c.policy, live, boot_ns())
            .map_err(|e| EnforceError::Grants(name.clone(), e.to_string()))?;
        if !files_lsm {
            let files = &mut policy.files;
            files.rules.retain(|r| !files.expires.contains_key(&r.id));
            files.expires.clear();
        }
        Ok(Compiled {
            policy: Arc::new(policy),
            tables,
        })
    }

    /// Sets the live leases of `identity`; returns its policy compiled with
    /// them when the identity is known (to be applied).
    pub fn set(
        &mut self,
        identity: &str,
        live: Vec<LiveGrant>,
        files_lsm: bool,
    ) -> Option<Result<Compiled, EnforceError>> {
        let any = !live.is_empty();
        self.live.insert(identity.to_string(), live);
        let base = self.base.get(identity)?.clone();
        let tables = if any {
            // `augment` compiles with the grants; the base alone is unused.
            NetTables::default()
        } else {
            match crate::policy::compile_network(&base) {
                Ok(t) => t,
                Err(e) => return Some(Err(EnforceError::Grants(identity.into(), e.to_string()))),
            }
        };
        Some(self.augment(
            Compiled {
                tables,
                policy: base,
            },
            files_lsm,
        ))
    }

    /// The tables written for `identity` under `ruleset` with `digest`, if
    /// they are the ones recorded by [`GrantTable::wrote`].
    pub fn written(&self, identity: &str, ruleset: u32, digest: u64) -> Option<Arc<NetTables>> {
        self.written
            .get(identity)
            .filter(|(r, d, _)| *r == ruleset && *d == digest)
            .map(|(_, _, t)| t.clone())
    }

    pub fn wrote(&mut self, identity: &str, ruleset: u32, digest: u64, t: Arc<NetTables>) {
        self.written
            .insert(identity.to_string(), (ruleset, digest, t));
    }
}
