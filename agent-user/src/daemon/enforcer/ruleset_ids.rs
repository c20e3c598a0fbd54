//! Ruleset ids: the generation every rule map entry is keyed by.
//!
//! An id is handed out only if no entry of any rule map may still carry it.
//! A daemon killed between writing a ruleset and flipping `IDENTITIES` to it
//! leaves entries nothing points at; reusing that id for another identity
//! would give it those rules. So every id handed out stays taken until a
//! full scan of the rule maps (`Enforcer::collect_garbage`) has found none of
//! its entries left, and the counter skips taken ids, also after it wraps.
//! Id 0 is never handed out: it is the ruleset with no entries, what an
//! orphaned identity points at.

use std::collections::BTreeSet;

pub(super) struct RulesetIds {
    next: u32,
    /// Ids that may have entries: live rulesets, ids handed out since the
    /// last sweep, and ids a sweep could not empty.
    taken: BTreeSet<u32>,
}

impl RulesetIds {
    /// Starting after `after` (the highest id adopted from a previous
    /// daemon), with `taken` possibly in use.
    pub(super) fn new(after: u32, taken: impl IntoIterator<Item = u32>) -> Self {
        RulesetIds {
            next: after.wrapping_add(1).max(1),
            taken: taken.into_iter().filter(|&i| i != 0).collect(),
        }
    }

    /// A fresh id, taken until a sweep releases it. `None` only when every
    /// id but 0 is taken.
    pub(super) fn take(&mut self) -> Option<u32> {
        if self.taken.len() >= u32::MAX as usize {
            return None;
        }
        let mut id = self.next;
        loop {
            if id != 0 && !self.taken.contains(&id) {
                break;
            }
            id = id.wrapping_add(1);
        }
        self.taken.insert(id);
        self.next = id.wrapping_add(1);
        Some(id)
    }

    /// After a full scan of every rule map: only `present` (live rulesets,
    /// and ids whose entries could not be deleted) stay taken.
    pub(super) fn swept(&mut self, present: impl IntoIterator<Item = u32>) {
        self.taken = present.into_iter().filter(|&i| i != 0).collect();
    }

    /// After an incomplete scan: the ids it found stay taken, with the rest.
    pub(super) fn hold(&mut self, found: impl IntoIterator<Item = u32>) {
        self.taken.extend(found.into_iter().filter(|&i| i != 0));
    }

    /// Ids handed out beyond `live` since the last sweep: grant-only
    /// applies do not sweep, so the caller sweeps when this grows.
    pub(super) fn unswept(&self, live: usize) -> usize {
        self.taken.len().saturating_sub(live)
    }

    #[cfg(test)]
    fn is_taken(&self, id: u32) -> bool {
        self.taken.contains(&id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_up_after_the_adopted_ids() {
        let mut ids = RulesetIds::new(7, [3, 7]);
        assert_eq!(ids.take(), Some(8));
        assert_eq!(ids.take(), Some(9));
        assert!(ids.is_taken(3) && ids.is_taken(8) && ids.is_taken(9));
    }

    #[test]
    fn skips_ids_that_may_still_have_entries() {
        // 5 and 6 were left by a killed apply (found by the start-up scan).
        let mut ids = RulesetIds::new(4, [4, 5, 6]);
        assert_eq!(ids.take(), Some(7));
        ids.swept([4, 7]);
        assert!(!ids.is_taken(5) && !ids.is_taken(6));
    }

    #[test]
    fn wraps_past_the_top_skipping_zero_and_ids_in_use() {
        let mut ids = RulesetIds::new(u32::MAX - 2, [u32::MAX, 1, 2]);
        assert_eq!(ids.take(), Some(u32::MAX - 1));
        // u32::MAX in use, 0 never handed out, 1 and 2 in use.
        assert_eq!(ids.take(), Some(3));
        assert_eq!(ids.take(), Some(4));
    }

    #[test]
    fn a_taken_id_is_skipped_until_a_sweep_found_it_empty() {
        let mut ids = RulesetIds::new(u32::MAX - 1, []);
        let a = ids.take().expect("id");
        assert_eq!(a, u32::MAX);
        // Wrapped, past 0.
        assert_eq!(ids.take(), Some(1));
        // A whole cycle later the counter is back at `a`, which no sweep
        // has seen empty yet (a grant-only apply, a failed delete).
        ids.next = a;
        assert_eq!(ids.take(), Some(2));
        ids.swept([2]);
        ids.next = a;
        assert_eq!(ids.take(), Some(a));
    }

    #[test]
    fn adopted_zero_is_not_taken_and_never_returned() {
        let mut ids = RulesetIds::new(u32::MAX, [0]);
        assert!(!ids.is_taken(0));
        assert_eq!(ids.take(), Some(1));
    }
}
