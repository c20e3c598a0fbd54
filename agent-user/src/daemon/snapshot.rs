//! What the actor publishes after every change, for readers that must not
//! wait on it (event enrichment, API listings).

use std::{collections::BTreeMap, path::PathBuf, sync::Arc};

use agent_common::identity::Mode;

use crate::policy::IdentityPolicy;

#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub by_id: BTreeMap<u32, Arc<IdentityView>>,
}

#[derive(Debug)]
pub struct IdentityView {
    pub id: u32,
    pub name: String,
    pub mode: Mode,
    /// Absolute path of the identity's own cgroup.
    pub cgroup: PathBuf,
    /// Other cgroups tagged with `corral assign --cgroup`.
    pub assigned: Vec<PathBuf>,
    /// `None` when the policy file was removed while processes remained: the
    /// identity stays tagged with no rules (denied by default).
    pub policy: Option<Arc<IdentityPolicy>>,
    pub ruleset: u32,
    pub v4_entries: usize,
    pub v6_entries: usize,
    pub unix_entries: usize,
    /// `FILE_RULES` entries written for this identity (BPF LSM only).
    pub file_entries: usize,
    /// Whether the kernel judges this identity's `unix = [...]` rules.
    pub unix_enforced: bool,
}

impl Snapshot {
    pub fn by_name(&self, name: &str) -> Option<&Arc<IdentityView>> {
        self.by_id.values().find(|v| v.name == name)
    }

    pub fn names(&self) -> Vec<String> {
        self.by_id.values().map(|v| v.name.clone()).collect()
    }

    /// The rule text behind a `rule_id` in an event, with its origin.
    pub fn rule_text(&self, identity: u32, rule_id: u32) -> Option<String> {
        let view = self.by_id.get(&identity)?;
        let policy = view.policy.as_ref()?;
        policy
            .network
            .rules
            .iter()
            .find(|r| r.id == rule_id)
            .map(|r| r.describe())
            .or_else(|| {
                let u = policy.network.unix.iter().find(|u| u.id == rule_id)?;
                Some(u.describe())
            })
            .or_else(|| {
                let f = policy.files.rules.iter().find(|f| f.id == rule_id)?;
                Some(f.describe())
            })
            .or_else(|| super::lsm::builtin::describe(rule_id).map(str::to_string))
    }
}
