//! Lease grants in the kernel's rules: each live lease gets a slot of rule
//! ids, and its grants are added to the identity's written rules with the
//! lease's expiry.

use std::collections::HashMap;

use super::{GRANT_IDS_PER_LEASE, GRANT_RULE_BASE, Grant, MAX_LIVE_LEASES};
use crate::policy::compile::{compile_network, compile_worst_case, digest};
use crate::policy::error::PolicyErrors;
use crate::policy::files::{FileList, FileRule};
use crate::policy::{Action, FilePolicy, IdentityPolicy, NetTables};

/// Every grant active at once must compile: the kernel's per-prefix limit
/// is checked here, at load time, rather than when a lease is issued. Grant
/// rules are compiled as expiring rules that never hide one another, the
/// largest lists any set of live leases can produce (several leases of one
/// scope collapse to one entry per rule: the later-expiring hides the rest).
pub(crate) fn check_fit(p: &IdentityPolicy) -> Result<(), PolicyErrors> {
    let Some(lp) = &p.leases else {
        return Ok(());
    };
    if lp.grants.iter().all(|g| g.network.is_empty()) {
        return Ok(());
    }
    let all = LiveGrant {
        lease: "check".into(),
        scopes: lp.scopes.clone(),
        expires_ns: u64::MAX,
    };
    let probe = add_grants(p, std::slice::from_ref(&all), 0);
    compile_worst_case(&probe)
        .map(|_| ())
        .map_err(|PolicyErrors(es)| {
            PolicyErrors(
                es.into_iter()
                    .map(|mut e| {
                        e.message = format!("with every [[leases.grant]] active: {}", e.message);
                        e
                    })
                    .collect(),
            )
        })
}

/// One live lease of an identity, as the kernel rules need it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LiveGrant {
    pub lease: String,
    pub scopes: Vec<String>,
    /// `CLOCK_BOOTTIME` nanoseconds at which the lease ends.
    pub expires_ns: u64,
}

/// The grant rule behind a rule id: (lease slot, rule index in the lease).
#[cfg(test)]
pub(super) fn grant_slot(rule_id: u32) -> Option<(u32, u32)> {
    let off = rule_id.checked_sub(GRANT_RULE_BASE)?;
    Some((off / GRANT_IDS_PER_LEASE, off % GRANT_IDS_PER_LEASE))
}

fn add_grants(base: &IdentityPolicy, live: &[LiveGrant], now_boot_ns: u64) -> IdentityPolicy {
    let mut p = base.clone();
    let Some(lp) = &base.leases else {
        return p;
    };
    let live = live.iter().filter(|g| g.expires_ns > now_boot_ns);
    for (slot, g) in live.take(MAX_LIVE_LEASES).enumerate() {
        let first = GRANT_RULE_BASE + slot as u32 * GRANT_IDS_PER_LEASE;
        let mut next = 0u32;
        for scope in &g.scopes {
            for grant in lp.grants_of(scope) {
                // Rules written once but expanded (`*`, host names) share an id.
                let mut ids: HashMap<u32, u32> = HashMap::new();
                for r in &grant.network {
                    let id = *ids.entry(r.id).or_insert_with(|| {
                        next += 1;
                        first + next.min(GRANT_IDS_PER_LEASE - 1)
                    });
                    let mut r = r.clone();
                    r.id = id;
                    r.text = format!("{} [lease {} scope {}]", r.text, g.lease, scope);
                    p.network.expires.insert(id, g.expires_ns);
                    p.network.rules.push(r);
                }
                if p.files.confined {
                    for rule in file_grants(grant, &p.files, &g.lease, scope) {
                        next += 1;
                        let id = first + next.min(GRANT_IDS_PER_LEASE - 1);
                        p.files.expires.insert(id, g.expires_ns);
                        p.files.rules.push(FileRule { id, ..rule });
                    }
                }
            }
        }
    }
    p
}

/// A grant's file paths as `[files]` rules (id 0: the caller numbers them),
/// with the access bits a written `read`/`write` rule would carry.
fn file_grants(grant: &Grant, files: &FilePolicy, lease: &str, scope: &str) -> Vec<FileRule> {
    let lists = [
        (&grant.files_read, FileList::Read),
        (&grant.files_write, FileList::Write),
    ];
    let mut out = Vec::new();
    for (paths, list) in lists {
        let access = list.access(files.exec_restricted);
        for path in paths {
            out.push(FileRule {
                id: 0,
                path: path.clone(),
                beneath: path.ends_with('/'),
                access,
                action: Action::Allow,
                list,
                text: format!("{path} [lease {lease} scope {scope}]"),
                origin: grant.origin.clone(),
            });
        }
    }
    out
}

/// `base` with the grants of the leases in `live` (those not yet ended at
/// `now_boot_ns`), compiled, with its digest updated. Lease slots follow the
/// order of `live`.
pub fn with_grants(
    base: &IdentityPolicy,
    live: &[LiveGrant],
    now_boot_ns: u64,
) -> Result<(IdentityPolicy, NetTables), PolicyErrors> {
    let mut p = add_grants(base, live, now_boot_ns);
    let tables = compile_network(&p)?;
    if p.network.expires.len() != base.network.expires.len()
        || p.files.expires.len() != base.files.expires.len()
    {
        // The written policy's digest covers every section; the grants
        // change the network tables and the file rules, which `digest`
        // covers.
        p.digest =
            base.digest.rotate_left(29) ^ digest(&p, &tables).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
    Ok((p, tables))
}
