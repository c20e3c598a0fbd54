//! Push-down compiler tests: list contents, the per-prefix limit, scale.

use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};

use agent_common::identity::Mode;
use agent_common::net::{ACTION_ALLOW, ACTION_DENY, CLASS_TCP, MAX_PORT_RULES, PortRule};

use super::*;

fn policy(network: &str) -> IdentityPolicy {
    let text = format!("[identity]\nname = \"t\"\n[network]\n{network}");
    parse_str(Path::new("p/t.toml"), &text, &|h| {
        Err(std::io::Error::other(format!("no DNS in tests ({h})")))
    })
    .unwrap_or_else(|e| panic!("{e}"))
}

fn compile_errors(network: &str) -> Vec<PolicyError> {
    let text = format!("[identity]\nname = \"t\"\n[network]\n{network}");
    match parse_str(Path::new("p/t.toml"), &text, &|_| Ok(Vec::new())) {
        Ok(_) => panic!("compiled:\n{network}"),
        Err(PolicyErrors(es)) => es,
    }
}

fn rules_of(list: &agent_common::net::NetRuleList) -> Vec<(u16, u16, u32, u32)> {
    list.rules[..list.count as usize]
        .iter()
        .map(|r| (r.port_lo, r.port_hi, r.action, r.rule_id))
        .collect()
}

#[test]
fn rules_are_pushed_down_most_specific_first() {
    let p = policy(
        "allow = [\"tcp://10.0.0.0/8:443\", \"tcp://10.20.0.0/16:80-90\", \"tcp://192.0.2.0/24:22\"]\n\
         deny = [\"tcp://10.20.0.0/16:*\", \"tcp://0.0.0.0/0:25\"]\n",
    );
    let t = compile_network(&p).expect("compiles");
    assert!(t.v6.is_empty());
    let entries: Vec<(u32, u32, [u8; 4])> =
        t.v4.iter()
            .map(|e| (e.class, e.prefix_len, e.addr))
            .collect();
    assert_eq!(
        entries,
        [
            (CLASS_TCP, 0, [0, 0, 0, 0]),
            (CLASS_TCP, 8, [10, 0, 0, 0]),
            (CLASS_TCP, 16, [10, 20, 0, 0]),
            (CLASS_TCP, 24, [192, 0, 2, 0]),
        ]
    );
    assert_eq!(rules_of(&t.v4[0].list), [(25, 25, ACTION_DENY, 5)]);
    assert_eq!(
        rules_of(&t.v4[1].list),
        [(443, 443, ACTION_ALLOW, 1), (25, 25, ACTION_DENY, 5)]
    );
    // The /16's own `*` deny shadows the inherited /8 and /0 rules: the
    // kernel could never reach them, so they are not written.
    assert_eq!(
        rules_of(&t.v4[2].list),
        [(80, 90, ACTION_ALLOW, 2), (0, 65535, ACTION_DENY, 4)]
    );
    assert_eq!(
        rules_of(&t.v4[3].list),
        [(22, 22, ACTION_ALLOW, 3), (25, 25, ACTION_DENY, 5)]
    );
    // Unused slots are zeroed, and nothing expires.
    let list = &t.v4[3].list;
    assert!(list.rules[2..].iter().all(|r| *r == PortRule::default()));
    assert!(list.rules.iter().all(|r| r.expires_ns == 0 && r._pad == 0));
    assert_eq!(list._pad, 0);
}

#[test]
fn exact_duplicates_collapse() {
    let p = policy(
        "allow = [\"tcp://10.0.0.1:443\", \"tcp://10.0.0.1:443\", \"tcp://10.0.0.1:443\"]\n",
    );
    let t = compile_network(&p).expect("compiles");
    assert_eq!(rules_of(&t.v4[0].list), [(443, 443, ACTION_ALLOW, 1)]);
}

/// `n` single-port rules on `prefix`, ports `base`, `base + 2`, ...
fn ports(n: u16, prefix: &str, base: u16) -> String {
    (0..n)
        .map(|i| format!("\"tcp://{prefix}:{}\"", base + 2 * i))
        .collect::<Vec<_>>()
        .join(", ")
}

#[test]
fn sixteen_candidates_fit() {
    let p = policy(&format!("allow = [{}]\n", ports(16, "10.0.0.0/8", 1000)));
    let t = compile_network(&p).expect("compiles");
    assert_eq!(t.v4[0].list.count as usize, MAX_PORT_RULES);
}

#[test]
fn overflow_at_one_prefix_is_an_error_not_a_truncation() {
    let es = compile_errors(&format!(
        "allow = [\n  {}]\n",
        ports(17, "10.0.0.0/8", 1000)
    ));
    assert_eq!(es.len(), 1, "{es:?}");
    let e = es[0].to_string();
    assert!(
        e.starts_with("p/t.toml:5:4: too many rules for 10.0.0.0/8 (tcp): an address there can match more than the kernel's 16 candidate port rules per prefix"),
        "{e}"
    );
    assert!(
        e.contains("allow tcp://10.0.0.0/8:1000 (t.toml:5:4)"),
        "{e}"
    );
    assert!(e.contains("allow tcp://10.0.0.0/8:1032 (t.toml:5:"), "{e}");
}

#[test]
fn overflow_by_inheritance_is_reported_at_the_longer_prefix_once() {
    // 12 rules on the /8 fit; 5 more on a /24 under it do not. A /32 under
    // the /24 overflows too, but only the /24 is reported.
    let es = compile_errors(&format!(
        "allow = [{}]\ndeny = [{}, \"tcp://10.1.2.3:3000\"]\n",
        ports(12, "10.0.0.0/8", 1000),
        ports(5, "10.1.2.0/24", 2000),
    ));
    assert_eq!(es.len(), 1, "{es:?}");
    let e = es[0].to_string();
    assert!(
        e.starts_with("p/t.toml:5:10: too many rules for 10.1.2.0/24 (tcp)"),
        "{e}"
    );
    assert!(
        e.contains("(t.toml:4:11)"),
        "inherited rules are named too: {e}"
    );
}

#[test]
fn mode_does_not_change_tables() {
    let mut p = policy("allow = [\"tcp://10.0.0.0/8:443\"]\n");
    let enforce = compile_network(&p).expect("compiles");
    p.mode = Mode::Audit;
    assert_eq!(compile_network(&p).expect("compiles"), enforce);
}

fn many_rules(n: u32) -> IdentityPolicy {
    let rules = (0..n)
        .map(|i| NetRule {
            id: i + 1,
            action: if i % 7 == 0 {
                Action::Deny
            } else {
                Action::Allow
            },
            direction: Direction::Connect,
            proto: Proto::Tcp,
            addr: IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i * 3)),
            prefix_len: 32,
            port_lo: 443,
            port_hi: 443,
            host: None,
            text: format!("rule {i}"),
            origin: Origin {
                file: PathBuf::from("big.toml"),
                line: i as usize + 1,
                col: 1,
            },
        })
        .chain(["10.0.0.0", "0.0.0.0"].into_iter().map(|net| NetRule {
            id: n + 1,
            action: Action::Deny,
            direction: Direction::Connect,
            proto: Proto::Tcp,
            addr: net.parse().expect("addr"),
            prefix_len: if net == "0.0.0.0" { 0 } else { 8 },
            port_lo: 0,
            port_hi: u16::MAX,
            host: None,
            text: format!("deny {net}"),
            origin: Origin {
                file: PathBuf::from("big.toml"),
                line: 1,
                col: 1,
            },
        }))
        .collect();
    IdentityPolicy {
        name: "big".into(),
        mode: Mode::Enforce,
        source: PathBuf::from("big.toml"),
        network: NetworkPolicy {
            rules,
            unix: Vec::new(),
            sockets: Vec::new(),
            expires: Default::default(),
        },
        files: Default::default(),
        leases: None,
        anomaly: None,
        syscalls: None,
        digest: 0,
    }
}

/// ~100k distinct /32s under two containing prefixes. How long it takes is
/// measured by `cargo xtask bench` (policy apply), never asserted here.
#[test]
fn hundred_thousand_rules_compile() {
    let n = 100_000;
    let p = many_rules(n);
    let t = compile_network(&p).expect("compiles");
    assert_eq!(t.v4.len(), n as usize + 2);
    let d = |a: u32, port| decide(&t, CLASS_TCP, IpAddr::V4(Ipv4Addr::from(a)), port);
    assert_eq!(d(0x0a00_0000 + 3, 443), Some((Action::Allow, 2)));
    assert_eq!(d(0x0a00_0000, 443), Some((Action::Deny, 1)));
    assert_eq!(d(0x0a00_0000 + 1, 443), Some((Action::Deny, n + 1)));
}
