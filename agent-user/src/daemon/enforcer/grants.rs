//! Lease grant changes, written in place: only the LPM entries whose rule
//! list changes are written (added, replaced, removed) under the identity's
//! current ruleset; no new ruleset, no flip, no RCU grace period. An issue
//! or revoke then costs a few map updates, not a rewrite of the identity.
//!
//! The entries come from comparing the tables compiled with the old and the
//! new grant set. An entry the written policy has too is replaced by its
//! value without the grant (the policy's own value is the fallback), never
//! removed; only entries that exist for a grant alone are removed.
//!
//! Between two updates the kernel sees each entry either before or after
//! the change. Grants only add allow rules, and a prefix's list holds the
//! lists of the prefixes containing it, so every mix allows no more than the
//! old or the new set would: a revoke never widens anything on its way, and
//! the caller is answered only after the last write. Each rule keeps its
//! lease's `expires_ns`, so expiry stays the kernel's job.
//!
//! What only a new ruleset can change falls back to the full apply: file
//! grants under BPF LSM (`FILE_RULES` is written as one set per ruleset),
//! a changed mode or socket flags, or an identity not applied yet.

use std::{collections::HashMap, sync::Arc};

use agent_common::{
    maps,
    net::{KEY_FIXED_BITS, Net4Key, Net6Key, NetRuleList},
};
use aya::maps::lpm_trie::Key;
use tracing::debug;

use super::{Compiled, EnforceError, Enforcer, merr};
use crate::policy::{LpmEntry, compile_network};

/// An LPM entry's place: (class, prefix length, address).
type Place<const N: usize> = (u32, u32, [u8; N]);

/// The entries of `new` to write (absent from `old` or with another list),
/// and the (class, prefix length, address) of entries of `old` to remove.
fn diff<'a, const N: usize>(
    old: &[LpmEntry<N>],
    new: &'a [LpmEntry<N>],
) -> (Vec<&'a LpmEntry<N>>, Vec<Place<N>>) {
    let before: HashMap<Place<N>, &NetRuleList> = old
        .iter()
        .map(|e| ((e.class, e.prefix_len, e.addr), &e.list))
        .collect();
    let write = new
        .iter()
        .filter(|e| before.get(&(e.class, e.prefix_len, e.addr)) != Some(&&e.list))
        .collect();
    let after: std::collections::HashSet<Place<N>> = new
        .iter()
        .map(|e| (e.class, e.prefix_len, e.addr))
        .collect();
    let remove = before.into_keys().filter(|k| !after.contains(k)).collect();
    (write, remove)
}

fn key4(ruleset: u32, class: u32, len: u32, addr: [u8; 4]) -> Key<Net4Key> {
    Key::new(
        KEY_FIXED_BITS + len,
        Net4Key {
            ruleset_be: ruleset.to_be(),
            class_be: class.to_be(),
            addr,
        },
    )
}

fn key6(ruleset: u32, class: u32, len: u32, addr: [u8; 16]) -> Key<Net6Key> {
    Key::new(
        KEY_FIXED_BITS + len,
        Net6Key {
            ruleset_be: ruleset.to_be(),
            class_be: class.to_be(),
            addr,
        },
    )
}

impl Enforcer {
    /// Brings the kernel to `c` (an identity's policy with a new set of
    /// live grants), in place when only network grants changed.
    pub(super) fn apply_grants(&mut self, c: Compiled) -> Result<(), EnforceError> {
        let name = c.policy.name.clone();
        let Some((ruleset, Some(digest), Some(old))) = self
            .live
            .get(&name)
            .map(|l| (l.ruleset, l.digest, l.policy.clone()))
        else {
            return self.apply_one(c);
        };
        let files_differ = self.caps.files_lsm() && old.files != c.policy.files;
        if files_differ
            || old.mode != c.policy.mode
            || old.network.socket_flags() != c.policy.network.socket_flags()
        {
            return self.apply_one(c);
        }
        let before = match self.grants.written(&name, ruleset, digest) {
            Some(t) => t,
            // Written by a full apply: its tables are those of its policy.
            None => match compile_network(&old) {
                Ok(t) => Arc::new(t),
                Err(_) => return self.apply_one(c),
            },
        };
        let (w4, r4) = diff(&before.v4, &c.network.v4);
        let (w6, r6) = diff(&before.v6, &c.network.v6);
        debug!(
            identity = %name, ruleset, write = w4.len() + w6.len(),
            remove = r4.len() + r6.len(), "lease grants in place"
        );
        let written = self.write_in_place(ruleset, (&w4, &r4), (&w6, &r6));
        let keys4: Vec<Key<Net4Key>> = c
            .network
            .v4
            .iter()
            .map(|e| key4(ruleset, e.class, e.prefix_len, e.addr))
            .collect();
        let keys6: Vec<Key<Net6Key>> = c
            .network
            .v6
            .iter()
            .map(|e| key6(ruleset, e.class, e.prefix_len, e.addr))
            .collect();
        let l = self.live.get_mut(&name).expect("looked up above");
        if let Err(e) = written {
            // Half written: every key that may exist goes with the ruleset
            // the full apply replaces.
            for k in keys4 {
                if !l
                    .keys4
                    .iter()
                    .any(|o| o.data() == k.data() && o.prefix_len() == k.prefix_len())
                {
                    l.keys4.push(k);
                }
            }
            for k in keys6 {
                if !l
                    .keys6
                    .iter()
                    .any(|o| o.data() == k.data() && o.prefix_len() == k.prefix_len())
                {
                    l.keys6.push(k);
                }
            }
            debug!(identity = %name, "in-place grant write failed ({e}); applying in full");
            return self.apply_one(c);
        }
        l.keys4 = keys4;
        l.keys6 = keys6;
        l.digest = Some(c.policy.digest);
        l.policy = Some(c.policy.clone());
        self.grants
            .wrote(&name, ruleset, c.policy.digest, Arc::new(c.network));
        Ok(())
    }

    /// Writes the changed entries first, then removes the gone ones.
    #[allow(
        clippy::type_complexity,
        reason = "two (write, remove) pairs, used once"
    )]
    fn write_in_place(
        &mut self,
        ruleset: u32,
        (w4, r4): (&[&LpmEntry<4>], &[(u32, u32, [u8; 4])]),
        (w6, r6): (&[&LpmEntry<16>], &[(u32, u32, [u8; 16])]),
    ) -> Result<(), EnforceError> {
        if !w4.is_empty() || !r4.is_empty() {
            let mut m = self.net4()?;
            for e in w4 {
                m.insert(&key4(ruleset, e.class, e.prefix_len, e.addr), e.list, 0)
                    .map_err(merr(maps::NET4_RULES))?;
            }
            for &(class, len, addr) in r4 {
                let _ = m.remove(&key4(ruleset, class, len, addr));
            }
        }
        if !w6.is_empty() || !r6.is_empty() {
            let mut m = self.net6()?;
            for e in w6 {
                m.insert(&key6(ruleset, e.class, e.prefix_len, e.addr), e.list, 0)
                    .map_err(merr(maps::NET6_RULES))?;
            }
            for &(class, len, addr) in r6 {
                let _ = m.remove(&key6(ruleset, class, len, addr));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use agent_common::net::{MAX_PORT_RULES, PortRule};

    use super::*;

    fn entry(len: u32, a: u8, ids: &[u32]) -> LpmEntry<4> {
        let mut list = NetRuleList {
            count: ids.len() as u32,
            _pad: 0,
            rules: [PortRule::default(); MAX_PORT_RULES],
        };
        for (s, id) in list.rules.iter_mut().zip(ids) {
            s.rule_id = *id;
        }
        LpmEntry {
            class: 1,
            prefix_len: len,
            addr: [10, 0, 0, a],
            list,
        }
    }

    #[test]
    fn diff_writes_changed_and_new_entries_and_removes_only_grant_only_ones() {
        // Policy entries /32 .1 and /32 .2; a grant adds /32 .3 and one
        // rule to .1 (a prefix the policy has too).
        let old = vec![
            entry(32, 1, &[1, 0x8000_0001]),
            entry(32, 2, &[2]),
            entry(32, 3, &[0x8000_0002]),
        ];
        let new = vec![entry(32, 1, &[1]), entry(32, 2, &[2])];
        let (w, r) = diff(&old, &new);
        // .1 falls back to the policy's own list; .2 is untouched.
        assert_eq!(w.len(), 1);
        assert_eq!(w[0].addr[3], 1);
        assert_eq!(w[0].list.count, 1);
        assert_eq!(r, vec![(1, 32, [10, 0, 0, 3])]);
        // And back: only the grant's entries are written, nothing removed.
        let (w, r) = diff(&new, &old);
        assert_eq!(w.iter().map(|e| e.addr[3]).collect::<Vec<_>>(), vec![1, 3]);
        assert!(r.is_empty());
        // No change, no write.
        let (w, r) = diff(&old, &old);
        assert!(w.is_empty() && r.is_empty());
    }

    #[test]
    fn compiled_tables_differ_only_where_the_grant_lands() {
        use crate::policy::{LiveGrant, with_grants};
        let text = "[identity]\nname = \"g\"\n[network]\nallow = [\"tcp://10.0.0.0/8:443\", \
                    \"tcp://192.168.1.1:22\"]\n[leases]\nscopes = [\"db\"]\n\
                    [[leases.grant]]\nscope = \"db\"\nnetwork = [\"tcp://10.1.2.3:5432\"]\n";
        let no_dns = |h: &str| -> std::io::Result<Vec<std::net::IpAddr>> {
            panic!("no DNS in this test (asked for {h})")
        };
        let p = crate::policy::parse_str(std::path::Path::new("g.toml"), text, &no_dns)
            .expect("policy");
        let base = compile_network(&p).expect("compile");
        let live = [LiveGrant {
            lease: "l1".into(),
            scopes: vec!["db".into()],
            expires_ns: u64::MAX - 1,
        }];
        let (_, with) = with_grants(&p, &live, 0).expect("grants");
        let (w, r) = diff(&base.v4, &with.v4);
        // One new /32 entry for the grant (holding the /8 rule beneath it);
        // the policy's own entries stay as they are.
        assert_eq!(w.len(), 1, "{w:?}");
        assert_eq!(w[0].addr, [10, 1, 2, 3]);
        assert_eq!(w[0].list.count, 2);
        assert!(r.is_empty());
        let (w, r) = diff(&with.v4, &base.v4);
        assert!(w.is_empty());
        assert_eq!(r, vec![(agent_common::net::CLASS_TCP, 32, [10, 1, 2, 3])]);
    }
}
