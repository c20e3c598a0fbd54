//! Corral's own file rules for lease token files: "only that identity may
//! read it". Every identity whose opens the BPF LSM judges (it has a
//! `[files]` section) is refused the daemon's token directory, whatever its
//! written rules allow there, and an identity that rotates a token may read
//! its own token file. A custom `[leases.rotate] path` outside that
//! directory is protected by its owner and mode (0600 root, or 0400 to the
//! `owner`), not by these rules.

use std::path::Path;

use agent_common::file::{ACCESS_ALL, ACCESS_READ, FILE_KEY_PATH_LEN};

use super::compile::RuleIn;
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
    let rotate = policy.leases.as_ref().and_then(|l| l.rotate.as_ref());
    if let Some(r) = rotate {
        let own = r
            .path
            .clone()
            .unwrap_or_else(|| tokens_dir.join(format!("{identity}.jwt")));
        if let Some(p) = own.to_str().filter(|p| p.len() <= FILE_KEY_PATH_LEN) {
            out.push(RuleIn {
                path: p.to_string(),
                access: ACCESS_READ,
                deny: false,
                id: OWN_TOKEN_RULE,
                expires_ns: 0,
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use agent_common::{
        file::ACCESS_WRITE,
        net::{ACTION_ALLOW, ACTION_DENY},
    };

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
            compile(&r).expect("compile")
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
        // Everything else is as written.
        assert_eq!(decide(&eb, "/var/lib/x", ACCESS_WRITE).0, ACTION_ALLOW);
        assert_eq!(
            decide(&eb, "/var/lib/corral/tokensx", ACCESS_READ).0,
            ACTION_ALLOW
        );
    }
}
