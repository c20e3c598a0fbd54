//! Corral's own file rules for lease token files: "only that identity may
//! read it". Every identity whose opens the BPF LSM judges (it has a
//! `[files]` section) is refused the daemon's token directory, whatever its
//! written rules allow there ([`enforce`] puts them above every more specific
//! rule), and an identity that rotates a token may read
//! its own token file. A custom `[leases.rotate] path` outside that
//! directory is protected by its owner and mode (0600 root, or 0400 to the
//! `owner`), not by these rules.

use std::path::Path;

use agent_common::{
    file::{ACCESS_ALL, ACCESS_IDX_READ, ACCESS_READ, FILE_KEY_PATH_LEN, FileDecision},
    net::{ACTION_ALLOW, ACTION_DENY},
};

use super::compile::{FileEntry, RuleIn};
use crate::policy::IdentityPolicy;

/// Rule ids above every written rule and below lease grants
/// (`policy::leases::GRANT_RULE_BASE`), so an event names them.
pub const TOKEN_DIR_RULE: u32 = 0x7fff_ff00;
pub const OWN_TOKEN_RULE: u32 = 0x7fff_ff01;

/// How an event describes these rules.
pub fn describe(rule_id: u32) -> Option<&'static str> {
    match rule_id {
        TOKEN_DIR_RULE => Some("built-in: lease token files are readable by their identity only"),
        OWN_TOKEN_RULE => Some("built-in: an identity reads its own rotated lease token"),
        _ => None,
    }
}

/// The identity's own token file, if it rotates one.
fn own_token(tokens_dir: &Path, identity: &str, policy: &IdentityPolicy) -> Option<String> {
    let r = policy.leases.as_ref()?.rotate.as_ref()?;
    let own = r
        .path
        .clone()
        .unwrap_or_else(|| tokens_dir.join(format!("{identity}.jwt")));
    own.to_str()
        .filter(|p| p.len() <= FILE_KEY_PATH_LEN)
        .map(str::to_string)
}

/// Makes the built-in rules win over every written or granted rule inside
/// the token directory (a more specific `read` of another identity's token
/// would otherwise beat the directory's deny): everything there is refused
/// but reading the identity's own token.
pub fn enforce(
    entries: &mut [FileEntry],
    tokens_dir: &Path,
    identity: &str,
    policy: &IdentityPolicy,
) {
    let Some(dir) = tokens_dir.to_str() else {
        return;
    };
    let prefix = format!("{}/", dir.trim_end_matches('/'));
    let own = own_token(tokens_dir, identity, policy);
    let deny = FileDecision {
        action: ACTION_DENY,
        rule_id: TOKEN_DIR_RULE,
        ..FileDecision::default()
    };
    for e in entries
        .iter_mut()
        .filter(|e| e.path.starts_with(prefix.as_bytes()))
    {
        e.value.exact = [deny; 3];
        e.value.beneath = [deny; 3];
        if own
            .as_deref()
            .is_some_and(|o| o.as_bytes() == e.path.as_slice())
        {
            e.value.exact[ACCESS_IDX_READ] = FileDecision {
                action: ACTION_ALLOW,
                rule_id: OWN_TOKEN_RULE,
                ..FileDecision::default()
            };
        }
    }
}

/// The rules to add to `identity`'s compiled `[files]` rules.
pub fn rules(tokens_dir: &Path, identity: &str, policy: &IdentityPolicy) -> Vec<RuleIn> {
    let Some(dir) = tokens_dir.to_str().filter(|d| d.starts_with('/')) else {
        return Vec::new();
    };
    let dir = format!("{}/", dir.trim_end_matches('/'));
    let mut out = Vec::new();
    if dir.len() <= FILE_KEY_PATH_LEN {
        out.push(RuleIn {
            path: dir,
            access: ACCESS_ALL,
            deny: true,
            id: TOKEN_DIR_RULE,
            expires_ns: 0,
        });
    }
    if let Some(path) = own_token(tokens_dir, identity, policy) {
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

#[cfg(test)]
mod tests {
    use agent_common::file::ACCESS_WRITE;

    use super::super::compile::{compile, decide, rules_of};
    use super::*;

    fn policy(name: &str, extra: &str) -> IdentityPolicy {
        let text = format!(
            "[identity]\nname = \"{name}\"\n[files]\nread = [\"/\"]\nwrite = [\"/var/\"]\n\
             [leases]\nscopes = [\"a\"]\n{extra}"
        );
        let no_dns = |_: &str| -> std::io::Result<Vec<std::net::IpAddr>> { Ok(vec![]) };
        crate::policy::parse_str(Path::new("t.toml"), &text, &no_dns).expect("policy")
    }

    #[test]
    fn others_are_refused_the_token_dir_and_each_reads_its_own() {
        let dir = Path::new("/var/lib/corral/tokens");
        let a = policy("a", "[leases.rotate]\nscopes = [\"a\"]\n");
        let b = policy("b", "");
        let entries = |p: &IdentityPolicy, name: &str| {
            let mut r = rules_of(&p.files).expect("confined");
            r.extend(rules(dir, name, p));
            let mut e = compile(&r).expect("compile");
            enforce(&mut e, dir, name, p);
            e
        };
        let ea = entries(&a, "a");
        let eb = entries(&b, "b");
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
        let c = policy("c", "[leases.rotate]\nscopes = [\"a\"]\n");
        let mut c = c;
        c.files.rules[0].path = "/var/lib/corral/tokens/a.jwt".into();
        c.files.rules[0].beneath = false;
        let ec = entries(&c, "c");
        assert_eq!(decide(&ec, own, ACCESS_READ), (ACTION_DENY, TOKEN_DIR_RULE));
        assert_eq!(
            decide(&ec, "/var/lib/corral/tokens/c.jwt", ACCESS_READ),
            (ACTION_ALLOW, OWN_TOKEN_RULE)
        );
        // Everything else is as written.
        assert_eq!(decide(&eb, "/var/lib/x", ACCESS_WRITE).0, ACTION_ALLOW);
        assert_eq!(
            decide(&eb, "/var/lib/corral/tokensx", ACCESS_READ).0,
            ACTION_ALLOW
        );
    }
}
