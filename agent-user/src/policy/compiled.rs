//! The compile stage: a validated identity turned into every table the
//! enforcer writes, once, before anything is applied. Network tables come
//! from the load (its digest was computed from them); `[files]` rules and
//! the daemon's protected paths become `FILE_RULES` entries here, so a file
//! rule the kernel's table cannot hold refuses the whole reload instead of
//! surfacing mid-apply after other identities already changed. The enforcer
//! actor only writes what this stage produced; `corral policy check` runs
//! the same stage (without the daemon's protected paths, which it cannot
//! know).

use std::sync::Arc;

use super::{
    IdentityPolicy, NetTables, PolicyErrors, PolicySet, compile_network,
    error::PolicyError,
    files::compile::{self as files, FileEntry, RuleIn},
};

/// What the daemon adds to every identity's file rules: its protected
/// paths (`daemon::lsm::builtin::Protected`), refused whatever the rules
/// say.
pub trait FileGuard {
    /// Rules added to `identity`'s own (`policy` None: its file is gone).
    fn rules(&self, identity: &str, policy: Option<&IdentityPolicy>) -> Vec<RuleIn>;
    /// Makes the added rules win over every written or granted one.
    fn enforce(&self, entries: &mut [FileEntry], identity: &str, policy: Option<&IdentityPolicy>);
}

/// No protected paths (`corral policy check`, tests).
pub struct NoGuard;

impl FileGuard for NoGuard {
    fn rules(&self, _: &str, _: Option<&IdentityPolicy>) -> Vec<RuleIn> {
        Vec::new()
    }
    fn enforce(&self, _: &mut [FileEntry], _: &str, _: Option<&IdentityPolicy>) {}
}

/// One identity, ready to write.
pub struct CompiledIdentity {
    pub policy: Arc<IdentityPolicy>,
    /// `NET4`/`NET6` LPM entries.
    pub network: NetTables,
    /// `FILE_RULES` entries: the identity's `[files]` rules (and lease file
    /// grants, when the enforcer compiles them in) with the protected paths
    /// on top. Written only where BPF LSM enforces files.
    pub files: Vec<FileEntry>,
}

impl CompiledIdentity {
    /// Hash of everything that reaches the kernel: equal digests, nothing
    /// to write.
    pub fn digest(&self) -> u64 {
        self.policy.digest
    }
}

/// The identity's file rules plus `guard`'s, compiled; the error names the
/// identity's file.
pub fn file_entries(
    policy: Option<&IdentityPolicy>,
    identity: &str,
    guard: &dyn FileGuard,
) -> Result<Vec<FileEntry>, PolicyError> {
    let mut rules = policy
        .and_then(|p| files::rules_of(&p.files))
        .unwrap_or_default();
    rules.extend(guard.rules(identity, policy));
    if rules.is_empty() {
        return Ok(Vec::new());
    }
    let mut entries = files::compile(&rules).map_err(|e| match policy {
        Some(p) => PolicyError::whole_file(&p.source, format!("[files]: {e}")),
        None => PolicyError::whole_file(
            std::path::Path::new(identity),
            format!("protected paths: {e}"),
        ),
    })?;
    guard.enforce(&mut entries, identity, policy);
    Ok(entries)
}

/// Compiles one identity; `network` are its tables when the load already
/// compiled them.
pub fn compile_identity(
    policy: Arc<IdentityPolicy>,
    network: Option<NetTables>,
    guard: &dyn FileGuard,
) -> Result<CompiledIdentity, PolicyErrors> {
    let network = match network {
        Some(t) => t,
        None => compile_network(&policy)?,
    };
    let files = file_entries(Some(&policy), &policy.name, guard).map_err(PolicyErrors::single)?;
    Ok(CompiledIdentity {
        policy,
        network,
        files,
    })
}

/// Compiles every identity of a loaded set, collecting every error: either
/// all of them compile, or nothing is returned to apply.
pub fn compile_set(
    set: PolicySet,
    guard: &dyn FileGuard,
) -> Result<Vec<CompiledIdentity>, PolicyErrors> {
    let PolicySet {
        identities,
        mut network,
        ..
    } = set;
    let mut out = Vec::with_capacity(identities.len());
    let mut errors = Vec::new();
    for (name, p) in identities {
        match compile_identity(Arc::new(p), network.remove(&name), guard) {
            Ok(c) => out.push(c),
            Err(e) => errors.extend(e.0),
        }
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(PolicyErrors(errors))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{FileRule, load_sources};

    fn set(files: &[(&str, &str)]) -> PolicySet {
        let sources: Vec<_> = files
            .iter()
            .map(|(name, text)| crate::policy::PolicySource {
                path: format!("/p/{name}.toml").into(),
                text: text.to_string(),
            })
            .collect();
        load_sources("/p".as_ref(), &sources, &|_| Ok(Vec::new())).expect("loads")
    }

    /// The load refuses an over-long file rule with its line; the stage is
    /// the second line of defence for models built any other way (lease
    /// grants, future inputs): one identity whose file rules cannot be
    /// compiled refuses the whole set, so nothing reaches the enforcer and
    /// every identity keeps what it had.
    #[test]
    fn a_file_rule_that_cannot_compile_refuses_the_whole_set() {
        let mut s = set(&[
            (
                "a",
                "[identity]\nname = \"a\"\n[files]\nread = [\"/srv/a/\"]\n",
            ),
            (
                "b",
                "[identity]\nname = \"b\"\n[files]\nread = [\"/srv/b/\"]\n",
            ),
        ]);
        let ok = compile_set(
            PolicySet {
                dir: s.dir.clone(),
                identities: s.identities.clone(),
                network: s.network.clone(),
            },
            &NoGuard,
        )
        .expect("both compile");
        assert_eq!(ok.len(), 2);
        assert!(ok.iter().all(|c| !c.files.is_empty()));

        let b = s.identities.get_mut("b").unwrap();
        let long = format!("/{}/", "x".repeat(agent_common::file::FILE_KEY_PATH_LEN));
        let mut rule: FileRule = b.files.rules[0].clone();
        rule.path = long.clone();
        b.files.rules.push(rule);
        let err = compile_set(s, &NoGuard).err().expect("refused");
        assert_eq!(err.0.len(), 1, "{err}");
        assert!(err.0[0].file.ends_with("b.toml"), "{err}");
        assert!(err.0[0].message.contains("longer than"), "{err}");
    }

    #[test]
    fn the_guard_is_compiled_in_and_wins() {
        struct Deny;
        impl FileGuard for Deny {
            fn rules(&self, _: &str, _: Option<&IdentityPolicy>) -> Vec<RuleIn> {
                vec![RuleIn {
                    path: "/srv/a/secret/".into(),
                    access: agent_common::file::ACCESS_ALL,
                    deny: true,
                    id: 9_999,
                    expires_ns: 0,
                }]
            }
            fn enforce(&self, _: &mut [FileEntry], _: &str, _: Option<&IdentityPolicy>) {}
        }
        let s = set(&[(
            "a",
            "[identity]\nname = \"a\"\n[files]\nread = [\"/srv/a/\"]\n",
        )]);
        let c = compile_set(s, &Deny).expect("compiles");
        let (action, rule) = files::decide(
            &c[0].files,
            "/srv/a/secret/k",
            agent_common::file::ACCESS_READ,
        );
        assert_eq!(
            (action, rule),
            (agent_common::net::ACTION_DENY, 9_999),
            "the guard's deny decides beneath its path"
        );
        let (action, _) = files::decide(&c[0].files, "/srv/a/ok", agent_common::file::ACCESS_READ);
        assert_eq!(action, agent_common::net::ACTION_ALLOW);
    }
}
