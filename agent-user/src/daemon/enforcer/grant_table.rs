//! The enforcer's view of lease grants: which leases live per identity, and
//! each identity's policy as written, so its rules can be compiled again
//! with the grants whenever either changes. A policy apply writes the
//! result under a new ruleset; a grant change alone is written in place
//! (`enforcer/grants.rs`), from the tables remembered here.

use std::{collections::HashMap, sync::Arc};

use super::{Compiled, EnforceError};
use crate::{
    daemon::capabilities::Capabilities,
    policy::{IdentityPolicy, LiveGrant, NetTables, compiled, with_grants},
};

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
    /// What the kernel should hold for `c`: `c` itself, or `c` compiled
    /// again with the identity's live grants (the same stage a reload runs,
    /// `policy::compiled`). Records nothing: an apply augments every
    /// identity first and [`GrantTable::record`]s only once all succeeded.
    ///
    /// Without BPF LSM file grants are withheld here too, not only by
    /// Landlock: what the daemon serves as the policy in force must never
    /// carry a file rule that cannot end with its lease.
    pub fn augmented(&self, c: Compiled, caps: &Capabilities) -> Result<Compiled, EnforceError> {
        let name = c.policy.name.clone();
        let Some(live) = self.live.get(&name).filter(|l| !l.is_empty()) else {
            return Ok(c);
        };
        let grants = |e: String| EnforceError::Grants(name.clone(), e);
        let (mut policy, network) =
            with_grants(&c.policy, live, boot_ns()).map_err(|e| grants(e.to_string()))?;
        let files = if caps.files_lsm() {
            compiled::file_entries(Some(&policy), &name, &caps.protected)
                .map_err(|e| grants(e.to_string()))?
        } else {
            let files = &mut policy.files;
            files.rules.retain(|r| !files.expires.contains_key(&r.id));
            files.expires.clear();
            c.files
        };
        Ok(Compiled {
            policy: Arc::new(policy),
            network,
            files,
        })
    }

    /// Remembers `policy` as the identity's written policy (without
    /// grants): what a grant change compiles again.
    pub fn record(&mut self, policy: &Arc<IdentityPolicy>) {
        self.base.insert(policy.name.clone(), policy.clone());
    }

    /// Sets the live leases of `identity`; returns its policy compiled with
    /// them when the identity is known (to be applied).
    pub fn set(
        &mut self,
        identity: &str,
        live: Vec<LiveGrant>,
        caps: &Capabilities,
    ) -> Option<Result<Compiled, EnforceError>> {
        let any = !live.is_empty();
        self.live.insert(identity.to_string(), live);
        let base = self.base.get(identity)?.clone();
        if any {
            // `augmented` compiles the base with the grants: compiling the
            // base alone first would double a large policy's cost per grant.
            let c = Compiled {
                policy: base,
                network: NetTables::default(),
                files: Vec::new(),
            };
            return Some(self.augmented(c, caps));
        }
        Some(
            compiled::compile_identity(base, None, &caps.protected)
                .map_err(|e| EnforceError::Grants(identity.into(), e.to_string())),
        )
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
