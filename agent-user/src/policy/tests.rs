//! Loading, error reporting and decision tests, end to end from TOML text.

use std::io;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use agent_common::identity::Mode;
use agent_common::net::{CLASS_BIND_TCP, CLASS_TCP, CLASS_UDP};

use super::*;

/// Knows one host; every other name fails, as offline machines do.
fn resolver(host: &str) -> io::Result<Vec<IpAddr>> {
    match host {
        "api.internal.example" => Ok(["10.1.2.3", "::ffff:10.1.2.4", "2001:db8::5", "10.1.2.3"]
            .iter()
            .map(|a| a.parse().expect("test address"))
            .collect()),
        "empty.example" => Ok(Vec::new()),
        _ => Err(io::Error::new(io::ErrorKind::NotFound, "no such host")),
    }
}

fn no_resolver(host: &str) -> io::Result<Vec<IpAddr>> {
    panic!("bundled policies must not need DNS (asked for {host})")
}

fn parse(text: &str) -> Result<IdentityPolicy, PolicyErrors> {
    parse_str(Path::new("p/t.toml"), text, &resolver)
}

fn policy(network: &str) -> IdentityPolicy {
    let text = format!("[identity]\nname = \"t\"\n[network]\n{network}");
    parse(&text).unwrap_or_else(|e| panic!("{e}"))
}

/// The single error of a policy, as displayed.
fn error(text: &str) -> String {
    match parse(text) {
        Ok(_) => panic!("parsed:\n{text}"),
        Err(PolicyErrors(es)) => {
            assert_eq!(es.len(), 1, "{es:?}");
            es[0].to_string()
        }
    }
}

fn tables(network: &str) -> NetTables {
    compile_network(&policy(network)).unwrap_or_else(|e| panic!("{e}"))
}

fn ip(s: &str) -> IpAddr {
    s.parse().expect("test address")
}

const HEAD: &str = "[identity]\nname = \"t\"\n[network]\n";

#[test]
fn bundled_policies_load_and_compile() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../policies");
    let set = load_dir_with(&dir, &no_resolver).unwrap_or_else(|e| panic!("{e}"));
    let names: Vec<&str> = set.identities.keys().map(String::as_str).collect();
    assert_eq!(names, ["billing-agent", "ops-agent", "support-agent"]);
    for p in set.identities.values() {
        let t = compile_network(p).unwrap_or_else(|e| panic!("{e}"));
        assert!(!t.v4.is_empty() && !t.v6.is_empty(), "{}", p.name);
        assert!(p.network.rules.iter().all(|r| r.host.is_none()));
        assert_eq!(load_file(&p.source).map(|q| q.digest).ok(), Some(p.digest));
    }
    let support = compile_network(&set.identities["support-agent"]).expect("compiles");
    let d = |class, a, port| decide(&support, class, ip(a), port).map(|(action, _)| action);
    assert_eq!(d(CLASS_TCP, "10.20.1.1", 443), Some(Action::Allow));
    assert_eq!(d(CLASS_TCP, "10.20.9.7", 443), Some(Action::Deny));
    assert_eq!(d(CLASS_TCP, "10.20.1.1", 80), None);
    assert_eq!(d(CLASS_UDP, "127.0.0.53", 53), Some(Action::Allow));
    assert_eq!(d(CLASS_TCP, "192.0.2.1", 443), None);
    assert_eq!(set.identities["billing-agent"].mode, Mode::Audit);
    let ops = &set.identities["ops-agent"];
    assert_eq!(ops.mode, Mode::Enforce);
    assert_eq!(ops.network.unix.len(), 1);
    let ops = compile_network(ops).expect("compiles");
    assert!(decide(&ops, CLASS_BIND_TCP, ip("127.0.0.1"), 9464).is_some());
    assert_eq!(decide(&ops, CLASS_TCP, ip("127.0.0.1"), 9464), None);
}

#[test]
fn rules_keep_their_text_origin_and_ids() {
    let p = policy(
        "allow = [\"tcp://10.0.0.0/8:443\", \"tcp://*:80\"]\n\
         deny = [\"tcp://10.9.0.0/16:*\"]\n\
         bind = [\"udp://127.0.0.1:5353\"]\n\
         unix = [\"/run/nscd/socket\"]\n",
    );
    let summary: Vec<(u32, String, usize, usize)> = p
        .network
        .rules
        .iter()
        .map(|r| (r.id, r.addr.to_string(), r.origin.line, r.origin.col))
        .collect();
    assert_eq!(
        summary,
        [
            (1, "10.0.0.0".to_string(), 4, 11),
            (2, "0.0.0.0".to_string(), 4, 35),
            (2, "::".to_string(), 4, 35),
            (3, "10.9.0.0".to_string(), 5, 10),
            (4, "127.0.0.1".to_string(), 6, 10),
        ]
    );
    assert_eq!(
        p.network.rules[3].describe(),
        "deny tcp://10.9.0.0/16:* (t.toml:5:10)"
    );
    assert_eq!(
        p.network.rules[4].class(),
        agent_common::net::CLASS_BIND_UDP
    );
    assert_eq!(p.network.unix[0].id, 5);
    assert_eq!(
        p.network.rule_by_id(2).map(|r| r.text.as_str()),
        Some("tcp://*:80")
    );
    assert_eq!(p.mode, Mode::Enforce);
    assert_eq!(p.source, Path::new("p/t.toml"));
}

#[test]
fn host_names_resolve_to_one_rule_per_address() {
    let p = policy("allow = [\"tcp://api.internal.example:443\"]\n");
    let addrs: Vec<(String, u8)> = p
        .network
        .rules
        .iter()
        .map(|r| (r.addr.to_string(), r.prefix_len))
        .collect();
    // Duplicates collapsed, the mapped address turned into IPv4.
    assert_eq!(
        addrs,
        [
            ("10.1.2.3".to_string(), 32),
            ("10.1.2.4".to_string(), 32),
            ("2001:db8::5".to_string(), 128)
        ]
    );
    assert!(
        p.network
            .rules
            .iter()
            .all(|r| r.host.as_deref() == Some("api.internal.example") && r.id == 1)
    );
    assert_eq!(
        p.network.rules[0].describe(),
        "allow tcp://api.internal.example:443 [10.1.2.3] (t.toml:4:11)"
    );

    let e = error(&format!("{HEAD}allow = [\"tcp://nowhere.example:443\"]\n"));
    assert_eq!(
        e,
        "p/t.toml:4:17: cannot resolve host `nowhere.example`: no such host"
    );
    let e = error(&format!("{HEAD}allow = [\"tcp://empty.example:443\"]\n"));
    assert!(
        e.ends_with("host `empty.example` resolved to no addresses"),
        "{e}"
    );
}

#[test]
fn syntax_error_has_file_line_col() {
    let e = error("[identity]\nname = \"a\n");
    assert!(e.starts_with("p/t.toml:2:10: "), "{e}");
    let e = error("[identity]\nname = \"a\"\n[network]\nallow = [\"tcp://1.2.3.4:1\",, ]\n");
    assert!(e.starts_with("p/t.toml:4:"), "{e}");
}

#[test]
fn unknown_keys_and_sections_are_errors() {
    let e = error(&format!("{HEAD}alow = [\"tcp://1.2.3.4:1\"]\n"));
    assert_eq!(
        e,
        "p/t.toml:4:1: unknown field `alow`, expected one of `allow`, `deny`, `bind`, `unix`, `sockets`"
    );
    let e = error("[identity]\nname = \"a\"\n\n[netwrk]\n");
    assert!(e.starts_with("p/t.toml:4:2: unknown field `netwrk`"), "{e}");
    let e = error("[identity]\nname = \"a\"\ncolour = \"red\"\n");
    assert!(e.starts_with("p/t.toml:3:1: unknown field `colour`"), "{e}");
    let e = error("[network]\n");
    assert!(
        e.starts_with("p/t.toml:1:1: missing field `identity`"),
        "{e}"
    );
}

#[test]
fn bad_cidr_host_bits_and_ports_point_into_the_rule() {
    let e = error(&format!(
        "{HEAD}allow = [\n  \"tcp://10.20.0.0/33:443\",\n]\n"
    ));
    assert_eq!(
        e,
        "p/t.toml:5:10: bad CIDR `10.20.0.0/33`: prefix length 33 is over 32"
    );
    let e = error(&format!("{HEAD}deny = [\"tcp://10.20.1.0/16:*\"]\n"));
    assert_eq!(
        e,
        "p/t.toml:4:16: bad CIDR `10.20.1.0/16`: host bits are set beyond the /16; \
         the network address is 10.20.0.0/16"
    );
    let e = error(&format!("{HEAD}allow = [\"tcp://[2001:db8::]/129:1\"]\n"));
    assert!(e.contains("prefix length 129 is over 128"), "{e}");
    let e = error(&format!("{HEAD}allow = [\"tcp://10.0.0.1:8080-80\"]\n"));
    assert_eq!(
        e,
        "p/t.toml:4:26: bad port range `8080-80`: 8080 is above 80"
    );
    let e = error(&format!("{HEAD}allow = [\"tcp://10.0.0.1:99999\"]\n"));
    assert_eq!(e, "p/t.toml:4:26: bad port `99999`: ports go up to 65535");
    let e = error(&format!("{HEAD}allow = [\"sctp://10.0.0.1:1\"]\n"));
    assert_eq!(
        e,
        "p/t.toml:4:11: bad proto `sctp` in `sctp://10.0.0.1:1`: expected tcp or udp"
    );
    // With escapes the column of the value's opening quote is the best we
    // can honestly report.
    let e = error(&format!("{HEAD}allow = [\"tcp://10.0.0.1:\\u0030\"]\n"));
    assert!(e.starts_with("p/t.toml:4:10: port 0"), "{e}");
}

#[test]
fn bad_identity_fields() {
    let e = error("[identity]\nname = \"Support_Agent\"\n");
    assert_eq!(
        e,
        "p/t.toml:2:9: bad identity name `Support_Agent`: use 1 to 63 characters of a-z, 0-9 and -"
    );
    let e = error("[identity]\nname = \"a\"\nmode = \"block\"\n");
    assert_eq!(
        e,
        "p/t.toml:3:9: bad mode `block`: expected `enforce` or `audit`"
    );
    let p = parse("[identity]\nname = \"a\"\nmode = \"audit\"\n").expect("parses");
    assert_eq!((p.mode, p.network.rules.len()), (Mode::Audit, 0));
}

#[test]
fn bad_unix_paths() {
    let e = error(&format!("{HEAD}unix = [\"/run/../etc/x.sock\"]\n"));
    assert_eq!(
        e,
        "p/t.toml:4:10: unix socket path `/run/../etc/x.sock` is not normalised \
         (no `//`, `.`, `..` or trailing `/`); write `/etc/x.sock`"
    );
    let e = error(&format!("{HEAD}unix = [\"run/x.sock\"]\n"));
    assert!(
        e.starts_with("p/t.toml:4:10: unix socket path `run/x.sock` must be absolute"),
        "{e}"
    );
    let long = format!("/{}", "s".repeat(107));
    let e = error(&format!("{HEAD}unix = [\"{long}\"]\n"));
    assert!(
        e.starts_with("p/t.toml:4:117: unix socket path is 108 bytes"),
        "{e}"
    );
}

#[test]
fn all_errors_of_a_file_are_reported() {
    let text = "[identity]\nname = \"BAD\"\nmode = \"x\"\n[network]\n\
                allow = [\"tcp://1.2.3.4:0\", \"udp://1.2.3.0/8:1\", \"tcp://1.2.3.4:1\"]\n\
                unix = [\"a//b\"]\n";
    let Err(PolicyErrors(es)) = parse(text) else {
        panic!("parsed")
    };
    let at: Vec<(usize, usize)> = es.iter().map(|e| (e.line, e.col)).collect();
    assert_eq!(at, [(2, 9), (3, 9), (5, 25), (5, 36), (6, 10)], "{es:?}");
}

fn write(dir: &Path, name: &str, text: &str) {
    std::fs::write(dir.join(name), text).expect("write test file");
}

#[test]
fn directory_collects_errors_of_every_file_and_duplicates() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    write(d, "a.toml", "[identity]\nname = \"same\"\n");
    write(d, "b.toml", "[identity]\n  name = \"same\"\n");
    write(
        d,
        "c.toml",
        "[identity]\nname = \"c\"\n[network]\nallow = [\"tcp://1.2.3.4:x\"]\n",
    );
    write(d, "d.toml", "not toml at all\n");
    write(d, "e.toml", "[identity]\nname = \"e\"\n");
    let Err(PolicyErrors(es)) = load_dir_with(d, &resolver) else {
        panic!("loaded")
    };
    let shown: Vec<String> = es.iter().map(ToString::to_string).collect();
    let a = d.join("a.toml");
    let b = d.join("b.toml");
    assert_eq!(shown.len(), 3, "{shown:#?}");
    assert_eq!(
        shown[0],
        format!(
            "{}:2:11: identity `same` is already defined in {}:2:9",
            b.display(),
            a.display()
        )
    );
    assert!(shown[1].starts_with(&format!(
        "{}:4:25: bad port `x`",
        d.join("c.toml").display()
    )));
    assert!(shown[2].starts_with(&format!("{}:1:", d.join("d.toml").display())));
    // Display is one error per line.
    assert_eq!(PolicyErrors(es).to_string().lines().count(), 3);
}

#[test]
fn directory_skips_non_policy_files() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    assert!(load_dir_with(d, &resolver).is_ok_and(|s| s.identities.is_empty()));
    write(d, "a.toml", "[identity]\nname = \"a\"\n");
    for junk in [
        ".a.toml.swp",
        ".hidden.toml",
        "a.toml~",
        "notes.txt",
        "a.toml.bak",
    ] {
        write(d, junk, "garbage [[[");
    }
    std::fs::create_dir(d.join("sub.toml")).expect("mkdir");
    let set = load_dir_with(d, &resolver).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(set.identities.keys().collect::<Vec<_>>(), ["a"]);
    assert_eq!(set.dir, d);
    assert_eq!(set.identities["a"].source, d.join("a.toml"));
}

#[test]
fn unreadable_files_and_directories_are_errors() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    // A dangling symlink: unreadable even for root, unlike chmod 000.
    std::os::unix::fs::symlink(d.join("gone"), d.join("x.toml")).expect("symlink");
    let e = load_dir_with(d, &resolver).expect_err("dangling link");
    assert_eq!(e.0.len(), 1);
    assert!(
        e.0[0]
            .to_string()
            .starts_with(&format!("{}:1:1: cannot read:", d.join("x.toml").display()))
    );
    let e = load_dir_with(&d.join("missing"), &resolver).expect_err("no dir");
    assert!(
        e.to_string().contains("cannot read policy directory"),
        "{e}"
    );
    assert!(load_file(&d.join("x.toml")).is_err());
}

#[test]
fn digest_follows_what_reaches_the_kernel() {
    let base = policy("allow = [\"tcp://10.0.0.0/8:443\"]\n");
    let commented = policy("# a comment\nallow = [ \"tcp://10.0.0.0/8:443\" ]\n");
    assert_eq!(base.digest, commented.digest);
    let other_port = policy("allow = [\"tcp://10.0.0.0/8:444\"]\n");
    assert_ne!(base.digest, other_port.digest);
    let audit = parse("[identity]\nname = \"t\"\nmode = \"audit\"\n[network]\nallow = [\"tcp://10.0.0.0/8:443\"]\n")
        .expect("parses");
    assert_ne!(base.digest, audit.digest);
    let unix = policy("allow = [\"tcp://10.0.0.0/8:443\"]\nunix = [\"/run/x\"]\n");
    assert_ne!(base.digest, unix.digest);
}

// --- precedence, through `decide` -------------------------------------

fn decision(t: &NetTables, class: u32, addr: &str, port: u16) -> Option<(Action, u32)> {
    decide(t, class, ip(addr), port)
}

#[test]
fn longer_prefix_beats_shorter() {
    let t = tables(
        "allow = [\"tcp://10.20.0.0/16:443\", \"tcp://10.20.9.7:443\"]\n\
         deny = [\"tcp://10.20.9.0/24:*\"]\n",
    );
    assert_eq!(
        decision(&t, CLASS_TCP, "10.20.1.1", 443),
        Some((Action::Allow, 1))
    );
    assert_eq!(
        decision(&t, CLASS_TCP, "10.20.9.1", 443),
        Some((Action::Deny, 3))
    );
    // The /32 allow is more specific than the /24 deny.
    assert_eq!(
        decision(&t, CLASS_TCP, "10.20.9.7", 443),
        Some((Action::Allow, 2))
    );
    // ...but only for its port: other ports fall through to the /24 deny.
    assert_eq!(
        decision(&t, CLASS_TCP, "10.20.9.7", 80),
        Some((Action::Deny, 3))
    );
    assert_eq!(decision(&t, CLASS_TCP, "10.20.1.1", 80), None);
}

#[test]
fn deny_wins_ties() {
    let t = tables("allow = [\"tcp://10.0.0.0/8:443\"]\ndeny = [\"tcp://10.0.0.0/8:443\"]\n");
    assert_eq!(
        decision(&t, CLASS_TCP, "10.1.1.1", 443),
        Some((Action::Deny, 2))
    );
    let t =
        tables("allow = [\"tcp://10.0.0.0/8:400-500\"]\ndeny = [\"tcp://10.0.0.0/8:1400-1500\"]\n");
    assert_eq!(
        decision(&t, CLASS_TCP, "10.1.1.1", 450),
        Some((Action::Allow, 1))
    );
}

#[test]
fn narrower_port_range_beats_star() {
    let t = tables(
        "allow = [\"tcp://10.0.0.0/8:443\", \"tcp://10.0.0.0/8:8000-8080\"]\ndeny = [\"tcp://10.0.0.0/8:*\"]\n",
    );
    assert_eq!(
        decision(&t, CLASS_TCP, "10.2.3.4", 443),
        Some((Action::Allow, 1))
    );
    assert_eq!(
        decision(&t, CLASS_TCP, "10.2.3.4", 8080),
        Some((Action::Allow, 2))
    );
    assert_eq!(
        decision(&t, CLASS_TCP, "10.2.3.4", 22),
        Some((Action::Deny, 3))
    );
    let list = &t.v4[0].list;
    let order: Vec<u32> = list.rules[..list.count as usize]
        .iter()
        .map(|r| r.rule_id)
        .collect();
    assert_eq!(order, [1, 2, 3]);
}

#[test]
fn default_deny_and_classes_are_separate() {
    let t = tables("allow = [\"tcp://10.0.0.0/8:443\"]\nbind = [\"tcp://127.0.0.1:8080\"]\n");
    assert_eq!(decision(&t, CLASS_TCP, "192.0.2.1", 443), None);
    assert_eq!(decision(&t, CLASS_UDP, "10.0.0.1", 443), None);
    assert_eq!(decision(&t, CLASS_TCP, "2001:db8::1", 443), None);
    assert_eq!(decision(&t, CLASS_TCP, "127.0.0.1", 8080), None);
    assert_eq!(
        decision(&t, CLASS_BIND_TCP, "127.0.0.1", 8080),
        Some((Action::Allow, 2))
    );
    assert_eq!(decision(&t, CLASS_BIND_TCP, "10.0.0.1", 443), None);
}

#[test]
fn mapped_ipv6_rules_are_ipv4_rules() {
    let t =
        tables("allow = [\"tcp://[::ffff:10.0.0.1]:443\", \"tcp://[::ffff:10.1.0.0]/112:22\"]\n");
    assert!(t.v6.is_empty());
    assert_eq!(t.v4.len(), 2);
    assert_eq!(
        decision(&t, CLASS_TCP, "10.0.0.1", 443),
        Some((Action::Allow, 1))
    );
    assert_eq!(
        decision(&t, CLASS_TCP, "::ffff:10.0.0.1", 443),
        Some((Action::Allow, 1))
    );
    assert_eq!(
        decision(&t, CLASS_TCP, "10.1.255.3", 22),
        Some((Action::Allow, 2))
    );
}

#[test]
fn star_matches_both_families() {
    let t = tables("allow = [\"tcp://*:443\"]\ndeny = [\"tcp://[2001:db8::]/32:*\"]\n");
    assert_eq!(
        decision(&t, CLASS_TCP, "192.0.2.1", 443),
        Some((Action::Allow, 1))
    );
    assert_eq!(
        decision(&t, CLASS_TCP, "::ffff:192.0.2.1", 443),
        Some((Action::Allow, 1))
    );
    assert_eq!(
        decision(&t, CLASS_TCP, "2001:db9::1", 443),
        Some((Action::Allow, 1))
    );
    assert_eq!(
        decision(&t, CLASS_TCP, "2001:db8::1", 443),
        Some((Action::Deny, 2))
    );
    assert_eq!(decision(&t, CLASS_TCP, "192.0.2.1", 80), None);
}

/// Grant host names go through the same resolver (the daemon's cache, whose
/// refresher re-applies the policy when an answer changes) and are listed
/// with the identity's other names.
#[test]
fn grant_host_names_are_resolved_and_listed_like_network_ones() {
    let text = "[identity]\nname = \"t\"\n[network]\nallow = [\"tcp://10.0.0.1:80\"]\n\
        [leases]\nscopes = [\"a\"]\n[[leases.grant]]\nscope = \"a\"\n\
        network = [\"tcp://api.internal.example:443\"]\n";
    let asked = std::cell::RefCell::new(Vec::new());
    let p = parse_str(Path::new("p/t.toml"), text, &|h| {
        asked.borrow_mut().push(h.to_string());
        resolver(h)
    })
    .expect("loads");
    assert_eq!(*asked.borrow(), ["api.internal.example"]);
    let g = &p.leases.expect("leases").grants[0];
    assert_eq!(g.network.len(), 3, "one rule per address: {:?}", g.network);
    assert_eq!(load::host_names(text), ["api.internal.example"]);
}
