//! Corral's own ground on the file system, refused to every identity (with
//! or without `[files]`, in every mode) where BPF LSM runs: one list of
//! protected paths, compiled into each identity's ruleset above every
//! written or granted rule ([`Protected::enforce`]).
//!
//! - the state dir (lease signing key, lease store, tokens): no access at
//!   all — a root agent that read the key could forge tokens; an identity
//!   that rotates a lease token may read its own token file;
//! - the policy dir and Corral's binary: no writes (an agent must not
//!   change its own rules or replace the program that enforces them;
//!   reading and running `corral` stays allowed).
//!
//! The kernel refuses a deny whose rule id is in
//! `agent_common::file::BUILTIN_RULE_MIN..BUILTIN_RULE_END` as
//! self-protection. A custom `[leases.rotate] path` outside the state dir
//! is protected by its owner and mode (0600 root, or 0400 to the `owner`).

use std::path::{Path, PathBuf};

use agent_common::{
    file::{
        ACCESS_ALL, ACCESS_IDX_EXEC, ACCESS_IDX_READ, ACCESS_IDX_WRITE, ACCESS_READ, ACCESS_WRITE,
        BUILTIN_RULE_MIN, FILE_KEY_PATH_LEN, FILE_VALUE_PROTECTED_BELOW, FileDecision,
    },
    net::{ACTION_ALLOW, ACTION_DENY},
};
use serde::Serialize;

use crate::policy::IdentityPolicy;
use crate::policy::files::compile::{FileEntry, RuleIn};

/// Rule ids above every written rule and below lease grants
/// (`policy::leases::GRANT_RULE_BASE`), so an event names them.
pub const TOKEN_DIR_RULE: u32 = BUILTIN_RULE_MIN;
pub const OWN_TOKEN_RULE: u32 = BUILTIN_RULE_MIN + 1;
pub const SIGNING_KEY_RULE: u32 = BUILTIN_RULE_MIN + 2;
pub const STATE_DIR_RULE: u32 = BUILTIN_RULE_MIN + 3;
pub const POLICY_DIR_RULE: u32 = BUILTIN_RULE_MIN + 4;
pub const BINARY_RULE: u32 = BUILTIN_RULE_MIN + 5;

/// How an event and `corral policy show` describe these rules.
pub fn describe(rule_id: u32) -> Option<&'static str> {
    Some(match rule_id {
        TOKEN_DIR_RULE => "built-in: lease token files are readable by their identity only",
        OWN_TOKEN_RULE => "built-in: an identity reads its own rotated lease token",
        SIGNING_KEY_RULE => "built-in: the lease signing key (tokens could be forged with it)",
        STATE_DIR_RULE => "built-in: Corral's state dir (lease store, keys, tokens)",
        POLICY_DIR_RULE => "built-in: the policy dir (an agent must not write its own rules)",
        BINARY_RULE => "built-in: Corral's binary (must not be replaced)",
        _ => return None,
    })
}

/// One protected path: a directory (ends with `/`: it and everything
/// beneath) or a file, and the access refused there.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ProtectedPath {
    pub path: String,
    /// `ACCESS_*` bits refused.
    #[serde(skip)]
    pub denied: u32,
    /// `read,write,exec` of `denied`, for `corral policy show`.
    pub refused: String,
    pub rule_id: u32,
    pub why: &'static str,
}

/// The daemon's protected paths (real paths, fixed at start-up).
#[derive(Debug, Clone, Default)]
pub struct Protected {
    list: Vec<ProtectedPath>,
    tokens_dir: PathBuf,
}

fn dir_of(p: &Path) -> Option<String> {
    let s = p.to_str()?.trim_end_matches('/');
    s.starts_with('/').then(|| format!("{s}/"))
}

impl Protected {
    /// `state_dir`, `policy_dir`, `binary`: real paths (symlinks resolved:
    /// the kernel judges resolved paths).
    pub fn new(state_dir: &Path, policy_dir: &Path, binary: Option<&Path>) -> Protected {
        let mut list = Vec::new();
        let mut add = |path: Option<String>, denied: u32, rule_id: u32| {
            let Some(path) = path.filter(|p| p.len() <= FILE_KEY_PATH_LEN && p.starts_with('/'))
            else {
                return;
            };
            list.push(ProtectedPath {
                path,
                denied,
                refused: crate::event::access_str(denied),
                rule_id,
                why: describe(rule_id).unwrap_or_default(),
            });
        };
        let key = state_dir.join(crate::daemon::state_files::KEY_FILE);
        add(dir_of(state_dir), ACCESS_ALL, STATE_DIR_RULE);
        add(
            dir_of(&state_dir.join(crate::daemon::state_files::TOKENS_DIR)),
            ACCESS_ALL,
            TOKEN_DIR_RULE,
        );
        add(
            key.to_str().map(str::to_string),
            ACCESS_ALL,
            SIGNING_KEY_RULE,
        );
        add(dir_of(policy_dir), ACCESS_WRITE, POLICY_DIR_RULE);
        add(
            binary.and_then(|b| b.to_str()).map(str::to_string),
            ACCESS_WRITE,
            BINARY_RULE,
        );
        Protected {
            list,
            tokens_dir: state_dir.join(crate::daemon::state_files::TOKENS_DIR),
        }
    }

    /// Every protected path (for `corral policy show`).
    pub fn list(&self) -> &[ProtectedPath] {
        &self.list
    }

    /// The identity's own token file, if it rotates one.
    fn own_token(&self, identity: &str, policy: Option<&IdentityPolicy>) -> Option<String> {
        let r = policy?.leases.as_ref()?.rotate.as_ref()?;
        let own = r
            .path
            .clone()
            .unwrap_or_else(|| self.tokens_dir.join(format!("{identity}.jwt")));
        own.to_str()
            .filter(|p| p.len() <= FILE_KEY_PATH_LEN)
            .map(str::to_string)
    }

    /// The rules to add to `identity`'s compiled `[files]` rules (all of
    /// them for an identity without `[files]`; `policy` None: an identity
    /// whose policy is gone).
    pub fn rules(&self, identity: &str, policy: Option<&IdentityPolicy>) -> Vec<RuleIn> {
        let mut out: Vec<RuleIn> = self
            .list
            .iter()
            .map(|p| RuleIn {
                path: p.path.clone(),
                access: p.denied,
                deny: true,
                id: p.rule_id,
                expires_ns: 0,
            })
            .collect();
        if let Some(path) = self.own_token(identity, policy) {
            out.push(RuleIn {
                path,
                access: ACCESS_READ,
                deny: false,
                id: OWN_TOKEN_RULE,
                expires_ns: 0,
            });
        }
        out
    }

    /// Makes the built-in rules win over every written or granted rule on
    /// and beneath their paths (a more specific `read` of another
    /// identity's token, or `write` of a policy file, would otherwise beat
    /// the built-in deny): the refused accesses are denied there, whatever
    /// else applies, except reading the identity's own token.
    pub fn enforce(
        &self,
        entries: &mut [FileEntry],
        identity: &str,
        policy: Option<&IdentityPolicy>,
    ) {
        let own = self.own_token(identity, policy);
        // Shorter paths first, so a more specific protected path decides
        // beneath it (the token dir inside the state dir).
        let mut list: Vec<&ProtectedPath> = self.list.iter().collect();
        list.sort_by_key(|p| p.path.len());
        for p in list {
            let deny = FileDecision {
                action: ACTION_DENY,
                rule_id: p.rule_id,
                ..FileDecision::default()
            };
            let dir = p.path.ends_with('/');
            for e in entries.iter_mut() {
                let on = e.path == p.path.as_bytes();
                let beneath = dir && e.path.starts_with(p.path.as_bytes());
                if !(on || beneath) {
                    continue;
                }
                for (bit, idx) in [
                    (ACCESS_READ, ACCESS_IDX_READ),
                    (ACCESS_WRITE, ACCESS_IDX_WRITE),
                    (agent_common::file::ACCESS_EXEC, ACCESS_IDX_EXEC),
                ] {
                    if p.denied & bit == 0 {
                        continue;
                    }
                    e.value.exact[idx] = deny;
                    // A file's entry also prefixes longer names
                    // (`corral.bak`): those keep their own decisions.
                    if dir {
                        e.value.beneath[idx] = deny;
                    }
                }
            }
        }
        // Directories above a protected path (every ancestor is an entry):
        // renaming one would carry the protected path elsewhere.
        for e in entries.iter_mut() {
            if e.path.ends_with(b"/")
                && self
                    .list
                    .iter()
                    .any(|p| p.path.len() > e.path.len() && p.path.as_bytes().starts_with(&e.path))
            {
                e.value.flags |= FILE_VALUE_PROTECTED_BELOW;
            }
        }
        if let Some(own) = own {
            for e in entries.iter_mut().filter(|e| e.path == own.as_bytes()) {
                e.value.exact[ACCESS_IDX_READ] = FileDecision {
                    action: ACTION_ALLOW,
                    rule_id: OWN_TOKEN_RULE,
                    ..FileDecision::default()
                };
            }
        }
    }
}

impl crate::policy::compiled::FileGuard for Protected {
    fn rules(&self, identity: &str, policy: Option<&IdentityPolicy>) -> Vec<RuleIn> {
        Protected::rules(self, identity, policy)
    }
    fn enforce(&self, entries: &mut [FileEntry], identity: &str, policy: Option<&IdentityPolicy>) {
        Protected::enforce(self, entries, identity, policy)
    }
}

#[cfg(test)]
mod tests {
    use agent_common::file::ACCESS_EXEC;

    use super::*;
    use crate::policy::files::compile::{compile, decide, rules_of};

    fn policy(name: &str, files: &str, extra: &str) -> IdentityPolicy {
        let text =
            format!("[identity]\nname = \"{name}\"\n{files}\n[leases]\nscopes = [\"a\"]\n{extra}");
        let no_dns = |_: &str| -> std::io::Result<Vec<std::net::IpAddr>> { Ok(vec![]) };
        crate::policy::parse_str(Path::new("t.toml"), &text, &no_dns).expect("policy")
    }

    const ROOT_RW: &str = "[files]\nread = [\"/\"]\nwrite = [\"/\"]\nexec = [\"/\"]";

    fn protected() -> Protected {
        Protected::new(
            Path::new("/var/lib/corral"),
            Path::new("/etc/corral/policies"),
            Some(Path::new("/usr/bin/corral")),
        )
    }

    fn entries(pr: &Protected, p: &IdentityPolicy, name: &str) -> Vec<FileEntry> {
        let mut r = rules_of(&p.files).unwrap_or_default();
        r.extend(pr.rules(name, Some(p)));
        let mut e = compile(&r).expect("compile");
        pr.enforce(&mut e, name, Some(p));
        e
    }

    #[test]
    fn others_are_refused_the_token_dir_and_each_reads_its_own() {
        let pr = protected();
        let a = policy("a", ROOT_RW, "[leases.rotate]\nscopes = [\"a\"]\n");
        let b = policy("b", ROOT_RW, "");
        let ea = entries(&pr, &a, "a");
        let eb = entries(&pr, &b, "b");
        let own = "/var/lib/corral/tokens/a.jwt";
        assert_eq!(
            decide(&ea, own, ACCESS_READ),
            (ACTION_ALLOW, OWN_TOKEN_RULE)
        );
        assert_eq!(
            decide(&ea, own, ACCESS_WRITE),
            (ACTION_DENY, TOKEN_DIR_RULE)
        );
        assert_eq!(
            decide(&ea, "/var/lib/corral/tokens/b.jwt", ACCESS_READ),
            (ACTION_DENY, TOKEN_DIR_RULE)
        );
        assert_eq!(decide(&eb, own, ACCESS_READ), (ACTION_DENY, TOKEN_DIR_RULE));
        assert_eq!(
            decide(&eb, "/var/lib/corral/tokens/", ACCESS_READ),
            (ACTION_DENY, TOKEN_DIR_RULE)
        );
        // A more specific written rule does not beat the built-in ones.
        let mut c = policy("c", ROOT_RW, "[leases.rotate]\nscopes = [\"a\"]\n");
        c.files.rules[0].path = "/var/lib/corral/tokens/a.jwt".into();
        c.files.rules[0].beneath = false;
        let ec = entries(&pr, &c, "c");
        assert_eq!(decide(&ec, own, ACCESS_READ), (ACTION_DENY, TOKEN_DIR_RULE));
        assert_eq!(
            decide(&ec, "/var/lib/corral/tokens/c.jwt", ACCESS_READ),
            (ACTION_ALLOW, OWN_TOKEN_RULE)
        );
        // Everything else is as written.
        assert_eq!(decide(&eb, "/var/lib/x", ACCESS_WRITE).0, ACTION_ALLOW);
        assert_eq!(decide(&eb, "/var/lib/corralx", ACCESS_READ).0, ACTION_ALLOW);
    }

    #[test]
    fn key_state_policy_dir_and_binary_are_protected_from_a_root_agent() {
        let pr = protected();
        for (name, files) in [("root", ROOT_RW), ("nofiles", "")] {
            let p = policy(name, files, "");
            let e = entries(&pr, &p, name);
            let key = "/var/lib/corral/lease-signing-key.pem";
            for a in [ACCESS_READ, ACCESS_WRITE, ACCESS_EXEC] {
                assert_eq!(
                    decide(&e, key, a),
                    (ACTION_DENY, SIGNING_KEY_RULE),
                    "{name}"
                );
                assert_eq!(
                    decide(&e, "/var/lib/corral/leases.json", a),
                    (ACTION_DENY, STATE_DIR_RULE)
                );
            }
            assert_eq!(
                decide(&e, "/etc/corral/policies/x.toml", ACCESS_WRITE),
                (ACTION_DENY, POLICY_DIR_RULE)
            );
            assert_eq!(
                decide(&e, "/etc/corral/policies/", ACCESS_WRITE),
                (ACTION_DENY, POLICY_DIR_RULE)
            );
            assert_eq!(
                decide(&e, "/usr/bin/corral", ACCESS_WRITE),
                (ACTION_DENY, BINARY_RULE)
            );
            // Reading policies and running corral stay as written.
            let as_written = if files.is_empty() { 0 } else { ACTION_ALLOW };
            assert_eq!(
                decide(&e, "/etc/corral/policies/x.toml", ACCESS_READ).0,
                as_written
            );
            assert_eq!(decide(&e, "/usr/bin/corral", ACCESS_EXEC).0, as_written);
            assert_eq!(
                decide(&e, "/usr/bin/corral.new", ACCESS_WRITE).0,
                as_written
            );
        }
        assert_eq!(pr.list().len(), 5);
        // Every directory above a protected path is marked: it cannot be
        // renamed away.
        let p = policy("nofiles", "", "");
        let e = entries(&pr, &p, "nofiles");
        for dir in ["/", "/var/", "/var/lib/", "/etc/corral/", "/usr/bin/"] {
            let v = e.iter().find(|x| x.path == dir.as_bytes()).expect(dir);
            assert_ne!(v.value.flags & FILE_VALUE_PROTECTED_BELOW, 0, "{dir}");
        }
    }
}
