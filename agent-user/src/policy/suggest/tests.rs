//! The advisor's limits on crafted inputs: what is grouped, what never is.

use std::{net::IpAddr, path::Path};

use serde_json::json;

use super::*;
use crate::policy::{parse_str, syscalls};

const BASE: &str = "# the operator's comment\n[identity]\nname = \"t\"\nmode = \"audit\"\n\n\
    [network]\nallow = [\n    # dns\n    \"udp://127.0.0.53:53\",\n]\n\
    deny = [\"tcp://10.9.0.0/16:*\"]\n\n\
    [files]\nread = [\"/usr/\"]\ndeny = [\"/srv/data/secret/\"]\n\n\
    [syscalls]\nallow = [\"@default\"]\ndeny = [\"ptrace\"]\n";

fn policy(text: &str) -> IdentityPolicy {
    parse_str(Path::new("p/t.toml"), text, &|_| Ok(Vec::new())).unwrap_or_else(|e| panic!("{e}"))
}

fn ev(body: serde_json::Value) -> Event {
    let mut v = json!({ "schema": 1, "time": "2026-12-05T10:00:00Z", "identity": "t",
        "verdict": "audit", "reason": "no-rule", "pid": 41, "tgid": 41, "comm": "python3" });
    v.as_object_mut()
        .unwrap()
        .extend(body.as_object().unwrap().clone());
    serde_json::from_value(v).unwrap()
}

fn connect(addr: &str, port: u16) -> Event {
    ev(
        json!({ "kind": "net", "net": { "op": "connect", "family": "inet",
        "protocol": "tcp", "addr": addr, "port": port, "type": "stream" } }),
    )
}

fn open(path: &str, access: &str) -> Event {
    ev(
        json!({ "kind": "file", "file": { "path": path, "access": access,
        "layer": "lsm", "errno": "EPERM" } }),
    )
}

fn syscall(name: &str) -> Event {
    ev(json!({ "kind": "syscall", "syscall": { "nr": 0, "name": name, "layer": "notify" } }))
}

fn exists(p: &str) -> Option<(String, bool)> {
    Some((p.to_string(), true))
}

type NameOf<'a> = &'a dyn Fn(IpAddr) -> Option<(String, Vec<IpAddr>)>;

fn cx<'a>(protected: &'a [String], name_of: NameOf<'a>) -> Context<'a> {
    Context {
        protected,
        name_of,
        never_unix: &[],
        files_lsm: true,
    }
}

fn suggest(events: &[Event], limits: &Limits) -> (Proposal, Recorded) {
    let p = policy(BASE);
    let rec = collect("t", events, &exists);
    let protected = vec!["/var/lib/corral/".to_string()];
    let none = |_: IpAddr| None;
    let prop = propose(&p, BASE, &rec, limits, &cx(&protected, &none)).unwrap();
    (prop, rec)
}

fn reads_of(p: &Proposal) -> Vec<&str> {
    values(p, "read")
}

fn values<'a>(p: &'a Proposal, key: &str) -> Vec<&'a str> {
    p.additions
        .iter()
        .filter(|a| a.key == key)
        .map(|a| a.value.as_str())
        .collect()
}

#[test]
fn a_thousand_files_in_one_directory_are_one_rule_two_are_not() {
    let mut events: Vec<Event> = (0..1000)
        .map(|i| open(&format!("/srv/data/f{i}.csv"), "read"))
        .collect();
    events.push(open("/srv/docs/a.md", "read"));
    events.push(open("/srv/docs/b.md", "read"));
    let (p, rec) = suggest(&events, &Limits::default());
    assert_eq!(
        values(&p, "read"),
        ["/srv/data/", "/srv/docs/a.md", "/srv/docs/b.md"]
    );
    assert_eq!(p.additions[0].covers, 1000);
    // The proposal compiles and allows every recorded operation.
    let proposed = policy(&p.text);
    let r = replay(&proposed, &rec).unwrap();
    assert_eq!((r.allowed, r.still_refused.len()), (1002, 0), "{r:?}");
    // ... and nothing the workload did not do in another directory.
    let j = Judge::new(&proposed).unwrap();
    let other = Want::File {
        path: "/srv/other/x".into(),
        access: ACCESS_READ,
        absent: false,
    };
    assert_eq!(j.judge(&other), Verdict::NoRule);
}

#[test]
fn never_above_the_depth_limit_nor_onto_protected_or_denied_ground() {
    let mut events: Vec<Event> = (0..50).map(|i| open(&format!("/f{i}"), "read")).collect();
    events.push(open("/var/lib/corral/signing.key", "read"));
    events.push(open("/srv/data/secret/plan.txt", "read"));
    events.push(open("/srv/", "read"));
    events.push(open("/", "read"));
    let (p, _) = suggest(&events, &Limits::default());
    // 50 files in `/`: exact rules, never `/`.
    let reads = values(&p, "read");
    assert_eq!(reads.len(), 51, "{reads:?}");
    assert!(reads.iter().all(|r| r.len() > 1 && !r.ends_with('/')));
    let why = |op: &str| {
        p.not_proposed
            .iter()
            .find(|a| a.op.starts_with(op))
            .map(|a| a.why.clone())
            .unwrap_or_else(|| panic!("{op} not set aside: {:?}", p.not_proposed))
    };
    assert!(why("open /var/lib/corral/signing.key").contains("protects"));
    assert!(why("open /srv/data/secret/plan.txt").contains("deny entry"));
    assert!(why("open / ").contains("never proposed"));
    // Listing a directory (BPF LSM) is the directory itself, not beneath.
    assert!(reads_of(&p).contains(&"/srv"));
    assert!(!p.text.contains("secret/plan") && !p.text.contains("signing.key"));
}

#[test]
fn addresses_become_a_prefix_only_when_enough_were_seen() {
    let mut events: Vec<Event> = (1..=5)
        .map(|i| connect(&format!("10.20.1.{i}"), 443))
        .collect();
    events.push(connect("10.30.0.7", 443));
    events.push(connect("10.30.0.8", 443));
    events.push(connect("10.20.1.9", 8443)); // another port stays exact
    events.push(connect("10.9.3.3", 443)); // denied by a rule
    let (p, rec) = suggest(&events, &Limits::default());
    assert_eq!(
        values(&p, "allow"),
        [
            "tcp://10.20.1.0/29:443",
            "tcp://10.20.1.9:8443",
            "tcp://10.30.0.7:443",
            "tcp://10.30.0.8:443",
        ]
    );
    assert!(p.not_proposed.iter().any(|a| a.op.contains("10.9.3.3")));
    let proposed = policy(&p.text);
    let r = replay(&proposed, &rec).unwrap();
    assert_eq!(r.allowed, 8);
    assert_eq!(r.still_refused.len(), 1, "the denied one: {r:?}");
    let j = Judge::new(&proposed).unwrap();
    let port = |port| Want::Net {
        list: NetList::Allow,
        udp: false,
        addr: "10.20.1.2".parse().unwrap(),
        port,
    };
    assert_eq!(j.judge(&port(443)), Verdict::Allowed);
    assert_eq!(j.judge(&port(444)), Verdict::NoRule);
    // A stricter limit keeps them exact.
    let strict = Limits {
        min_addrs: 6,
        ..Limits::default()
    };
    assert_eq!(suggest(&events, &strict).0.additions.len(), 9 - 1);
}

#[test]
fn names_in_use_are_proposed_instead_of_their_addresses() {
    let p = policy(BASE);
    let rec = collect("t", &[connect("192.0.2.7", 443)], &exists);
    let v4 = |s: &str| s.parse::<IpAddr>().unwrap();
    let name_of =
        |ip: IpAddr| (ip == v4("192.0.2.7")).then(|| ("api.example".to_string(), vec![ip]));
    let prop = propose(&p, BASE, &rec, &Limits::default(), &cx(&[], &name_of)).unwrap();
    assert_eq!(values(&prop, "allow"), ["tcp://api.example:443"]);
    // A name that also stands for a denied address is not used: its exact
    // rules would win over the shorter deny.
    let wide = |ip: IpAddr| {
        (ip == v4("192.0.2.7")).then(|| ("api.example".to_string(), vec![ip, v4("10.9.1.1")]))
    };
    let prop = propose(&p, BASE, &rec, &Limits::default(), &cx(&[], &wide)).unwrap();
    assert_eq!(values(&prop, "allow"), ["tcp://192.0.2.7:443"]);
}

#[test]
fn syscalls_by_name_a_group_only_when_all_of_it_was_used() {
    let mut events = vec![syscall("mkdir"), syscall("ptrace"), syscall("ia32:#20")];
    events.push(ev(
        json!({ "kind": "syscall", "syscall": { "nr": 41, "name": "socket",
        "layer": "notify", "detail": "AF_PACKET SOCK_RAW (needs `socket:packet`)" } }),
    ));
    let (p, _) = suggest(&events, &Limits::default());
    assert_eq!(values(&p, "allow"), ["mkdir", "socket:packet"]);
    assert!(p.not_proposed.iter().any(|a| a.op == "syscall ptrace"));
    assert!(p.not_proposed.iter().any(|a| a.op == "syscall ia32:#20"));

    let time: Vec<Event> = syscalls::group_set(syscalls::group("@ipc").unwrap().bit)
        .names()
        .iter()
        .map(|n| syscall(n))
        .collect();
    let (p, _) = suggest(&time, &Limits::default());
    assert_eq!(values(&p, "allow"), ["@ipc"], "{:?}", p.additions);
    // Without one member the default does not allow: named one by one.
    let base = policy(BASE);
    let j = Judge::new(&base).unwrap();
    let missing = time
        .iter()
        .position(|e| {
            let name = e.syscall.as_ref().unwrap().name.clone();
            j.judge(&Want::Syscall(name)) == Verdict::NoRule
        })
        .unwrap();
    let mut fewer = time.clone();
    fewer.remove(missing);
    let (p, _) = suggest(&fewer, &Limits::default());
    let allow = values(&p, "allow");
    assert!(!allow.contains(&"@ipc") && !allow.is_empty(), "{allow:?}");
}

#[test]
fn the_text_keeps_the_operators_file_and_says_why() {
    let events = [connect("127.0.0.1", 8080), syscall("mkdir")];
    let (p, _) = suggest(&events, &Limits::default());
    assert!(
        p.text.starts_with("# the operator's comment\n"),
        "{}",
        p.text
    );
    assert!(p.text.contains("    # dns\n    \"udp://127.0.0.53:53\","));
    assert!(
        p.text.contains(
            "# suggested: 1× 2026-12-05T10:00:00Z, pid 41, python3\n    \"tcp://127.0.0.1:8080\""
        ),
        "{}",
        p.text
    );
    assert!(p.text.contains("\"mkdir\""));
    policy(&p.text);
    // Seen already allowed: not proposed again.
    let rec = collect("t", &events, &exists);
    let again = propose(
        &policy(&p.text),
        &p.text,
        &rec,
        &Limits::default(),
        &cx(&[], &|_| None),
    )
    .unwrap();
    assert!(again.additions.is_empty());
    assert_eq!(again.already_allowed.len(), 2);
    assert_eq!(again.text, p.text);
}

#[test]
fn created_files_under_landlock_are_allowed_by_their_directory() {
    let p = policy(BASE);
    let mut e = open("/srv/out/new.txt", "write");
    e.file.as_mut().unwrap().layer = "landlock".into();
    let rec = collect("t", &[e], &|p| Some((p.to_string(), false)));
    let mut c = cx(&[], &|_| None);
    c.files_lsm = false;
    let prop = propose(&p, BASE, &rec, &Limits::default(), &c).unwrap();
    assert_eq!(values(&prop, "write"), ["/srv/out/"]);
    c.files_lsm = true;
    let prop = propose(&p, BASE, &rec, &Limits::default(), &c).unwrap();
    assert_eq!(values(&prop, "write"), ["/srv/out/new.txt"]);
}

#[test]
fn a_process_name_cannot_write_policy() {
    let mut e = open("/srv/x", "read");
    e.comm = Some("\n\"/\",#".into());
    let (p, _) = suggest(&[e], &Limits::default());
    assert_eq!(values(&p, "read"), ["/srv/x"]);
    let proposed = policy(&p.text);
    let j = Judge::new(&proposed).unwrap();
    let root = Want::File {
        path: "/etc/shadow".into(),
        access: ACCESS_READ,
        absent: false,
    };
    assert_eq!(j.judge(&root), Verdict::NoRule, "{}", p.text);
    assert!(p.text.contains("\\n\"/\",#"), "{}", p.text);
}

#[test]
fn connects_to_the_unspecified_address_are_learnt_as_loopback() {
    let (p, _) = suggest(&[connect("0.0.0.0", 8080)], &Limits::default());
    assert_eq!(values(&p, "allow"), ["tcp://127.0.0.1:8080"]);
}

#[test]
fn other_identities_and_allowed_verdicts_are_ignored() {
    let mut other = connect("127.0.0.1", 1);
    other.identity = Some("u".into());
    let mut allowed = connect("127.0.0.1", 2);
    allowed.verdict = None;
    let rec = collect("t", &[other, allowed], &exists);
    assert!(rec.ops.is_empty());
    assert!(Limits::default().check().is_ok());
    assert!(
        Limits {
            min_depth: 0,
            ..Limits::default()
        }
        .check()
        .is_err()
    );
}
