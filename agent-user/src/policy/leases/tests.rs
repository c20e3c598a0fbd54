//! `[leases]` parsing, grants and their kernel tables.

use std::path::Path;

use agent_common::net::{ACTION_ALLOW, CLASS_TCP};

use super::super::compile::compile_network;
use super::super::error::PolicyErrors;
use super::super::{Action, decide, parse_str};
use super::grants::grant_slot;
use super::*;

fn parse(text: &str) -> Result<IdentityPolicy, PolicyErrors> {
    parse_str(Path::new("p/t.toml"), text, &|h| {
        Err(std::io::Error::other(format!("no DNS in tests ({h})")))
    })
}

const BASE: &str = "[identity]\nname = \"t\"\n[network]\n\
    allow = [\"tcp://10.0.0.0/8:443\"]\ndeny = [\"tcp://10.30.0.0/16:*\"]\n";

fn leased(extra: &str) -> IdentityPolicy {
    parse(&format!("{BASE}{extra}")).unwrap_or_else(|e| panic!("{e}"))
}

const LEASES: &str = "[leases]\nmax_ttl = \"15m\"\n\
    scopes = [\"tickets:read\", \"refunds:issue\"]\napproval = [\"refunds:issue\"]\n\
    [[leases.grant]]\nscope = \"refunds:issue\"\nnetwork = [\"tcp://10.30.0.5:8443\"]\n\
    files = { write = [\"/srv/refunds/\"] }\n\
    [anomaly]\nmax_denials = 50\nwindow = \"60s\"\nactions = [\"alert\", \"revoke-leases\", \"freeze\"]\n";

#[test]
fn parses_the_issue_example() {
    let p = leased(LEASES);
    let l = p.leases.as_ref().expect("leases");
    assert_eq!(l.max_ttl_s, 900);
    assert_eq!(l.scopes, ["tickets:read", "refunds:issue"]);
    assert!(l.needs_approval("refunds:issue"));
    assert_eq!(l.grants[0].network.len(), 1);
    assert_eq!(l.grants[0].files_write, ["/srv/refunds/"]);
    assert_eq!((l.grants[0].origin.line, l.grants[0].origin.col), (11, 10));
    let a = p.anomaly.as_ref().expect("anomaly");
    assert_eq!((a.max_denials, a.window_ms), (50, 60_000));
    assert_eq!(a.actions.len(), 3);
}

#[test]
fn token_owner_and_file_grants_are_checked_at_load() {
    let rotate = |owner: &str| {
        parse(&format!(
            "{BASE}[leases]\nscopes = [\"a\"]\n[leases.rotate]\nscopes = [\"a\"]\nowner = \"{owner}\"\n"
        ))
    };
    let p = rotate("root").expect("root exists");
    let o = p
        .leases
        .and_then(|l| l.rotate)
        .and_then(|r| r.owner)
        .expect("owner");
    assert_eq!((o.uid, o.gid), (0, 0));
    let p = rotate("1234:5678").expect("numbers need no lookup");
    let o = p
        .leases
        .and_then(|l| l.rotate)
        .and_then(|r| r.owner)
        .expect("owner");
    assert_eq!((o.uid, o.gid), (1234, 5678));
    let e = rotate("no-such-user-here")
        .expect_err("unknown")
        .to_string();
    assert!(
        e.starts_with("p/t.toml:10:10: token owner `no-such-user-here` is not a user"),
        "{e}"
    );
    assert!(rotate("1:x").is_err());
    let e = parse(&format!(
        "{BASE}[leases]\nscopes = [\"a\"]\n[[leases.grant]]\nscope = \"a\"\n\
         files = {{ write = [\"/srv//x/\", \"/{}\"] }}\n",
        "y/".repeat(150)
    ))
    .expect_err("bad paths")
    .to_string();
    assert!(
        e.contains("file grant: file path `/srv//x/` is not normalised"),
        "{e}"
    );
    assert!(e.contains("file grant: file rule is 301 bytes"), "{e}");
}

#[test]
fn errors_point_at_the_value() {
    let e = parse(&format!(
        "{BASE}[leases]\nscopes = [\"a\"]\napproval = [\"b\"]\nmax_ttl = \"2x\"\n\
         [[leases.grant]]\nscope = \"a\"\nnetwork = [\"tcp://10.0.0.1/33:1\"]\n\
         [anomaly]\nmax_denials = 0\nwindow = \"1m\"\nactions = [\"nuke\"]\n"
    ))
    .expect_err("bad");
    let shown: Vec<String> = e.0.iter().map(|e| e.to_string()).collect();
    assert!(
        shown
            .iter()
            .any(|s| s.starts_with("p/t.toml:8:14: `approval` names scope `b`")),
        "{shown:#?}"
    );
    assert!(
        shown
            .iter()
            .any(|s| s.starts_with("p/t.toml:9:12: bad max_ttl `2x`")),
        "{shown:#?}"
    );
    assert!(
        shown
            .iter()
            .any(|s| s.starts_with("p/t.toml:12:") && s.contains("33")),
        "{shown:#?}"
    );
    assert!(
        shown
            .iter()
            .any(|s| s.starts_with("p/t.toml:14:15: max_denials 0")),
        "{shown:#?}"
    );
    assert!(
        shown
            .iter()
            .any(|s| s.starts_with("p/t.toml:16:13: bad action `nuke`")),
        "{shown:#?}"
    );
    let unknown =
        parse(&format!("{BASE}[leases]\nscopes = []\nmaxttl = \"1m\"\n")).expect_err("bad");
    assert!(
        unknown.0[0]
            .to_string()
            .starts_with("p/t.toml:8:1: unknown field `maxttl`"),
        "{unknown}"
    );
}

#[test]
fn approval_scopes_cannot_rotate() {
    let e = parse(&format!(
        "{BASE}[leases]\nscopes = [\"a\"]\napproval = [\"a\"]\n[leases.rotate]\nscopes = [\"a\"]\n"
    ))
    .expect_err("bad");
    assert!(e.to_string().contains("needs approval"), "{e}");
}

#[test]
fn digest_covers_leases_not_positions() {
    let a = leased(LEASES);
    let moved = leased(&format!("\n\n{LEASES}"));
    assert_eq!(a.digest, moved.digest);
    let other = leased(&LEASES.replace("8443", "8444"));
    assert_ne!(a.digest, other.digest);
    let ttl = leased(&LEASES.replace("15m", "10m"));
    assert_ne!(a.digest, ttl.digest);
}

#[test]
fn grants_get_lease_ids_and_expiry() {
    let p = leased(LEASES);
    let live = [LiveGrant {
        lease: "abc".into(),
        scopes: vec!["refunds:issue".into()],
        expires_ns: 5_000,
    }];
    let (g, t) = with_grants(&p, &live, 1_000).expect("compiles");
    assert_ne!(g.digest, p.digest);
    let r = g.network.rules.last().expect("grant rule");
    assert_eq!(r.id, GRANT_RULE_BASE + 1);
    assert_eq!(grant_slot(r.id), Some((0, 1)));
    assert!(
        r.describe().contains("[lease abc scope refunds:issue]"),
        "{}",
        r.describe()
    );
    // The /32 grant beats the /16 deny while it lives.
    let ip = "10.30.0.5".parse().expect("ip");
    assert_eq!(
        decide(&t, CLASS_TCP, ip, 8443),
        Some((Action::Allow, GRANT_RULE_BASE + 1))
    );
    let e = t.v4.iter().find(|e| e.prefix_len == 32).expect("/32");
    assert_eq!(e.list.rules[0].expires_ns, 5_000);
    assert_eq!(e.list.rules[0].action, ACTION_ALLOW);
    // An ended lease adds nothing.
    let (same, _) = with_grants(&p, &live, 6_000).expect("compiles");
    assert_eq!(same.digest, p.digest);
}

/// Rules of the /32 entry for 10.0.0.1 as (ports, rule id, expiry).
fn list_for_host(p: &IdentityPolicy) -> Vec<(u16, u16, u32, u64)> {
    let t = compile_network(p).expect("compiles");
    let e = t.v4.iter().find(|e| e.prefix_len == 32).expect("/32 entry");
    e.list.rules[..e.list.count as usize]
        .iter()
        .map(|r| (r.port_lo, r.port_hi, r.rule_id, r.expires_ns))
        .collect()
}

#[test]
fn expiring_rules_hide_only_what_they_outlive() {
    let p = parse(
        "[identity]\nname = \"t\"\n[network]\nallow = [\"tcp://10.0.0.1:*\", \"tcp://10.0.0.0/24:80\", \"tcp://10.0.0.0/24:443\"]\n"
    )
    .expect("parses");
    // Without expiry, the /32 `*` hides both /24 rules pushed under it.
    assert_eq!(list_for_host(&p), [(0, 65535, 1, 0)]);
    // An expiring /32 grant hides nothing that outlives it: after it
    // ends, the /24 rules decide again.
    let mut g = p.clone();
    g.network.expires.insert(1, 100);
    assert_eq!(
        list_for_host(&g),
        [(0, 65535, 1, 100), (80, 80, 2, 0), (443, 443, 3, 0)]
    );
    // It hides a rule that ends no later than it does.
    g.network.expires.insert(2, 100);
    g.network.expires.insert(3, 200);
    assert_eq!(list_for_host(&g), [(0, 65535, 1, 100), (443, 443, 3, 200)]);
    // A rule that never expires hides expiring ones as before.
    let mut n = p.clone();
    n.network.expires.insert(2, 100);
    assert_eq!(list_for_host(&n), [(0, 65535, 1, 0)]);
}

#[test]
fn one_scope_held_by_several_leases_is_one_entry() {
    let p = leased(LEASES);
    let lease = |id: &str, exp| LiveGrant {
        lease: id.into(),
        scopes: vec!["refunds:issue".into()],
        expires_ns: exp,
    };
    let (_, t) = with_grants(&p, &[lease("a", 5_000), lease("b", 9_000)], 1_000).expect("compiles");
    let e = t.v4.iter().find(|e| e.prefix_len == 32).expect("/32");
    let grants: Vec<u64> = e.list.rules[..e.list.count as usize]
        .iter()
        .filter(|r| r.rule_id >= GRANT_RULE_BASE)
        .map(|r| r.expires_ns)
        .collect();
    assert_eq!(grants, [9_000], "the longest-lived copy stands for both");
}

#[test]
fn too_many_grants_for_a_prefix_is_a_load_error() {
    let grants: String = (0..20)
        .map(|i| {
            format!(
                "[[leases.grant]]\nscope = \"s{i}\"\nnetwork = [\"tcp://10.9.0.1:{}\"]\n",
                1000 + i
            )
        })
        .collect();
    let scopes: Vec<String> = (0..20).map(|i| format!("\"s{i}\"")).collect();
    let e = parse(&format!(
        "{BASE}[leases]\nscopes = [{}]\n{grants}",
        scopes.join(", ")
    ))
    .expect_err("overflow");
    assert!(
        e.to_string()
            .contains("with every [[leases.grant]] active: too many rules"),
        "{e}"
    );
}
