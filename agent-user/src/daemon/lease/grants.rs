//! The enforcer's view of lease grants: which leases live per identity, and
//! each identity's policy as written, so its rules can be compiled again
//! with the grants whenever either changes. Every change goes through the
//! enforcer's atomic apply (new ruleset, flip, delete the old one).

use std::{collections::HashMap, sync::Arc};

use crate::{
    daemon::enforcer::{Compiled, EnforceError},
    policy::{IdentityPolicy, LiveGrant, with_grants},
};

use super::store::boot_ns;

#[derive(Default)]
pub struct GrantTable {
    /// Each identity's policy as compiled from its file (without grants).
    base: HashMap<String, Arc<IdentityPolicy>>,
    live: HashMap<String, Vec<LiveGrant>>,
    /// BPF LSM judges opens. Without it file grants are withheld here too,
    /// not only by Landlock: what the daemon serves as the policy in force
    /// must never carry a file rule that cannot end with its lease.
    pub files_lsm: bool,
}

impl GrantTable {
    /// Records `c` as the identity's written policy and returns what the
    /// kernel should hold: `c` itself, or `c` with the live grants added.
    pub fn augment(&mut self, c: Compiled) -> Result<Compiled, EnforceError> {
        let name = c.policy.name.clone();
        self.base.insert(name.clone(), c.policy.clone());
        let Some(live) = self.live.get(&name).filter(|l| !l.is_empty()) else {
            return Ok(c);
        };
        let (mut policy, tables) = with_grants(&c.policy, live, boot_ns())
            .map_err(|e| EnforceError::Grants(name.clone(), e.to_string()))?;
        if !self.files_lsm {
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
    ) -> Option<Result<Compiled, EnforceError>> {
        self.live.insert(identity.to_string(), live);
        let base = self.base.get(identity)?.clone();
        let c = Compiled {
            tables: match crate::policy::compile_network(&base) {
                Ok(t) => t,
                Err(e) => return Some(Err(EnforceError::Grants(identity.into(), e.to_string()))),
            },
            policy: base,
        };
        Some(self.augment(c))
    }
}
