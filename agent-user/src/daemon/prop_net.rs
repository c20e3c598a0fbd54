//! Property tests: for random written policies (overlapping prefixes, port
//! ranges, host names resolving to 0.0.0.0 and ::, deny and allow at equal
//! specificity, lease grants with different ends), the compiled NET4/NET6
//! and UNIX_RULES tables decide exactly as the policy's documented meaning
//! (`policies/README.md`, "How a connection is decided").
//!
//! Two independent sides: `model_*` reads the generated policy as written;
//! `kernel_*` replays what agent-ebpf's `net.rs` (and the hand-assembled
//! unix program) do with the compiled tables — key layout, longest-prefix
//! match over the key bits, the scan, the unspecified-destination rewrite
//! and IPv4-mapped lookups — without using the compiler's own `decide`.

use std::{
    collections::HashMap,
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::Path,
};

use agent_common::{
    net::{
        ACTION_ALLOW, CLASS_BIND_TCP, CLASS_BIND_UDP, CLASS_TCP, CLASS_UDP, KEY_FIXED_BITS,
        NetRuleList,
    },
    unix::{UNIX_PATH_LEN, UnixKey},
};
use proptest::prelude::*;

use crate::policy::{self, IdentityPolicy, LiveGrant, NetTables};

pub(super) const V4_BASES: [[u8; 4]; 6] = [
    [10, 1, 2, 3],
    [10, 1, 2, 200],
    [10, 1, 9, 9],
    [127, 0, 0, 1],
    [0, 0, 0, 0],
    [192, 168, 1, 1],
];
pub(super) const V6_BASES: [&str; 5] = ["2001:db8::1", "2001:db8::ff:1", "::1", "::", "fe80::1"];
/// Port range ends; `*` is written as such (0-65535).
const PORTS: [u16; 7] = [1, 79, 80, 443, 1000, 8080, 65535];
/// What the test resolver answers for `h{i}.test`.
pub(super) fn host_addrs(i: usize) -> Vec<IpAddr> {
    let v = |s: &str| s.parse::<IpAddr>().expect("addr");
    match i {
        0 => vec![v("0.0.0.0")],
        1 => vec![v("::")],
        2 => vec![v("10.1.2.3"), v("2001:db8::1")],
        _ => vec![v("127.0.0.1"), v("0.0.0.0"), v("::1")],
    }
}

pub(super) fn resolve(host: &str) -> io::Result<Vec<IpAddr>> {
    let i = host
        .strip_prefix('h')
        .and_then(|h| h.strip_suffix(".test"))
        .and_then(|n| n.parse::<usize>().ok())
        .ok_or_else(|| io::Error::other("unknown test host"))?;
    Ok(host_addrs(i))
}

#[derive(Debug, Clone)]
pub(super) enum Target {
    Any,
    V4(usize, u8),
    V6(usize, u8),
    Host(usize),
}

/// One written network rule. `list`: 0 allow, 1 deny, 2 bind.
#[derive(Debug, Clone)]
pub(super) struct NetSpec {
    pub list: u8,
    pub udp: bool,
    pub target: Target,
    pub ports: Option<(u16, u16)>,
}

fn mask(addr: IpAddr, len: u8) -> IpAddr {
    match addr {
        IpAddr::V4(a) => {
            let m = if len == 0 {
                0
            } else {
                u32::MAX << (32 - u32::from(len))
            };
            IpAddr::V4(Ipv4Addr::from(u32::from(a) & m))
        }
        IpAddr::V6(a) => {
            let m = if len == 0 {
                0
            } else {
                u128::MAX << (128 - u32::from(len))
            };
            IpAddr::V6(Ipv6Addr::from(u128::from(a) & m))
        }
    }
}

impl NetSpec {
    pub fn text(&self) -> String {
        let proto = if self.udp { "udp" } else { "tcp" };
        let addr = match &self.target {
            Target::Any => "*".to_string(),
            Target::V4(i, len) => format!("{}/{len}", mask(IpAddr::from(V4_BASES[*i]), *len)),
            Target::V6(i, len) => {
                let a: IpAddr = V6_BASES[*i].parse().expect("v6");
                format!("[{}]/{len}", mask(a, *len))
            }
            Target::Host(i) => format!("h{i}.test"),
        };
        let ports = match self.ports {
            None => "*".to_string(),
            Some((lo, hi)) if lo == hi => lo.to_string(),
            Some((lo, hi)) => format!("{lo}-{hi}"),
        };
        format!("{proto}://{addr}:{ports}")
    }

    /// The (network, prefix length) pairs the rule speaks about.
    pub fn nets(&self) -> Vec<(IpAddr, u8)> {
        match &self.target {
            Target::Any => vec![(IpAddr::from([0u8; 4]), 0), (IpAddr::from([0u8; 16]), 0)],
            Target::V4(i, len) => vec![(mask(IpAddr::from(V4_BASES[*i]), *len), *len)],
            Target::V6(i, len) => {
                let a: IpAddr = V6_BASES[*i].parse().expect("v6");
                vec![(mask(a, *len), *len)]
            }
            Target::Host(i) => host_addrs(*i)
                .into_iter()
                .map(|a| (a, if a.is_ipv4() { 32 } else { 128 }))
                .collect(),
        }
    }

    pub fn class(&self) -> u32 {
        match (self.list == 2, self.udp) {
            (false, false) => CLASS_TCP,
            (false, true) => CLASS_UDP,
            (true, false) => CLASS_BIND_TCP,
            (true, true) => CLASS_BIND_UDP,
        }
    }
}

pub(super) fn target() -> impl Strategy<Value = Target> {
    prop_oneof![
        1 => Just(Target::Any),
        4 => (0..V4_BASES.len(), prop_oneof![Just(0u8), Just(8), Just(16), Just(24), Just(32), 0u8..=32])
            .prop_map(|(i, l)| Target::V4(i, l)),
        2 => (0..V6_BASES.len(), prop_oneof![Just(0u8), Just(32), Just(64), Just(128), 0u8..=128])
            .prop_map(|(i, l)| Target::V6(i, l)),
        2 => (0usize..4).prop_map(Target::Host),
    ]
}

pub(super) fn ports() -> impl Strategy<Value = Option<(u16, u16)>> {
    prop_oneof![
        1 => Just(None),
        3 => (0..PORTS.len(), 0..PORTS.len()).prop_map(|(a, b)| Some((PORTS[a.min(b)], PORTS[a.max(b)]))),
    ]
}

pub(super) fn net_spec(lists: std::ops::Range<u8>) -> impl Strategy<Value = NetSpec> {
    (lists, any::<bool>(), target(), ports()).prop_map(|(list, udp, target, ports)| NetSpec {
        list,
        udp,
        target,
        ports,
    })
}

/// A lease of the test: the scopes it holds and when it ends.
#[derive(Debug, Clone)]
pub(super) struct LeaseSpec {
    pub scopes: Vec<usize>,
    pub end: u64,
}

pub(super) fn leases() -> impl Strategy<Value = Vec<LeaseSpec>> {
    prop::collection::vec(
        (
            prop::sample::subsequence(vec![0usize, 1], 0..=2),
            prop_oneof![Just(1000u64), Just(2000), Just(3000)],
        )
            .prop_map(|(scopes, end)| LeaseSpec { scopes, end }),
        0..=3,
    )
}

pub(super) fn toml_list(items: impl IntoIterator<Item = String>) -> String {
    let v: Vec<String> = items.into_iter().map(|s| format!("{s:?}")).collect();
    format!("[{}]", v.join(", "))
}

/// `[leases]` with scopes `s0`, `s1`; `grants[i]` holds scope `s{i}`'s body.
pub(super) fn leases_toml(grants: &[String]) -> String {
    let mut t = String::from("[leases]\nmax_ttl = \"1h\"\nscopes = [\"s0\", \"s1\"]\n");
    for (i, body) in grants.iter().enumerate() {
        t += &format!("[[leases.grant]]\nscope = \"s{i}\"\n{body}");
    }
    t
}

/// Parses and compiles as the daemon does, with the leases live at 0.
pub(super) fn load(text: &str, live: &[LeaseSpec]) -> (IdentityPolicy, NetTables) {
    let p = policy::parse_str(Path::new("prop.toml"), text, &resolve)
        .unwrap_or_else(|e| panic!("generated policy refused: {e}\n{text}"));
    let live: Vec<LiveGrant> = live
        .iter()
        .enumerate()
        .map(|(i, l)| LiveGrant {
            lease: format!("l{i}"),
            scopes: l.scopes.iter().map(|s| format!("s{s}")).collect(),
            expires_ns: l.end,
        })
        .collect();
    policy::with_grants(&p, &live, 0)
        .unwrap_or_else(|e| panic!("grants refused: {e}\n{text}\n{live:?}"))
}

/// The written meaning: of the rules (and live grants) of the class that
/// match, the longest prefix decides, then the narrowest port range, then
/// deny. No match: denied. Unspecified destinations are judged as loopback,
/// IPv4-mapped ones by the IPv4 rules, and binding port 0 is not judged.
fn model_net(
    written: &[NetSpec],
    grants: &[Vec<NetSpec>],
    live: &[LeaseSpec],
    class: u32,
    dst: IpAddr,
    port: u16,
    now: u64,
) -> bool {
    let bind = class == CLASS_BIND_TCP || class == CLASS_BIND_UDP;
    if bind && port == 0 {
        return true;
    }
    let mut a = dst;
    if !bind {
        a = match a {
            IpAddr::V4(v) if v.is_unspecified() => IpAddr::from([127, 0, 0, 1]),
            IpAddr::V6(v) if v.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
            IpAddr::V6(v) if v.to_ipv4_mapped() == Some(Ipv4Addr::UNSPECIFIED) => {
                IpAddr::from([127, 0, 0, 1])
            }
            other => other,
        };
    }
    let a = a.to_canonical();
    let mut rules: Vec<(&NetSpec, bool)> = written.iter().map(|r| (r, r.list == 1)).collect();
    for l in live.iter().filter(|l| l.end > now) {
        for &s in &l.scopes {
            rules.extend(grants[s].iter().map(|r| (r, false)));
        }
    }
    let mut best: Option<(u8, i32, bool)> = None;
    for (r, deny) in rules {
        if r.class() != class {
            continue;
        }
        let (lo, hi) = r.ports.unwrap_or((0, u16::MAX));
        if port < lo || port > hi {
            continue;
        }
        for (net, len) in r.nets() {
            if net.is_ipv4() != a.is_ipv4() || mask(a, len) != net {
                continue;
            }
            let key = (len, -i32::from(hi - lo), deny);
            if best.is_none_or(|b| key > b) {
                best = Some(key);
            }
        }
    }
    best.is_some_and(|(_, _, deny)| !deny)
}

/// 256 cases, or `PROPTEST_CASES`.
pub(super) fn config() -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256);
    ProptestConfig {
        cases,
        ..ProptestConfig::default()
    }
}

const RULESET: u32 = 7;

fn bits_match(a: &[u8], b: &[u8], bits: u32) -> bool {
    (0..bits as usize).all(|i| {
        let m = 0x80u8 >> (i % 8);
        a[i / 8] & m == b[i / 8] & m
    })
}

/// The LPM trie lookup with a full-length key, over (key bytes, prefix
/// bits, value) entries as the daemon writes them.
fn lpm<'a>(entries: &'a [(Vec<u8>, u32, NetRuleList)], key: &[u8]) -> Option<&'a NetRuleList> {
    entries
        .iter()
        .filter(|(k, bits, _)| bits_match(k, key, *bits))
        .max_by_key(|(_, bits, _)| *bits)
        .map(|(_, _, v)| v)
}

fn key_bytes(class: u32, addr: &[u8]) -> Vec<u8> {
    let mut k = RULESET.to_be_bytes().to_vec();
    k.extend(class.to_be_bytes());
    k.extend(addr);
    k
}

/// agent-ebpf `net.rs`: judge4/judge6, lookup4/lookup6 and `scan`.
fn kernel_net(t: &NetTables, class: u32, dst: IpAddr, port: u16, now: u64) -> bool {
    let v4: Vec<_> =
        t.v4.iter()
            .map(|e| {
                (
                    key_bytes(e.class, &e.addr),
                    KEY_FIXED_BITS + e.prefix_len,
                    e.list,
                )
            })
            .collect();
    let v6: Vec<_> =
        t.v6.iter()
            .map(|e| {
                (
                    key_bytes(e.class, &e.addr),
                    KEY_FIXED_BITS + e.prefix_len,
                    e.list,
                )
            })
            .collect();
    let bind = class == CLASS_BIND_TCP || class == CLASS_BIND_UDP;
    if bind && port == 0 {
        return true;
    }
    let list = match dst {
        IpAddr::V4(a) => {
            let mut a4 = a.octets();
            if !bind && a4 == [0; 4] {
                a4 = [127, 0, 0, 1];
            }
            lpm(&v4, &key_bytes(class, &a4))
        }
        IpAddr::V6(a) => {
            let mut w = a.octets();
            let head_zero = w[..8].iter().all(|&b| b == 0);
            if !bind
                && head_zero
                && w[12..] == [0; 4]
                && (w[8..12] == [0; 4] || w[8..12] == [0, 0, 0xff, 0xff])
            {
                let tail = if w[8..12] == [0; 4] {
                    [0, 0, 0, 1]
                } else {
                    [127, 0, 0, 1]
                };
                w[12..].copy_from_slice(&tail);
            }
            if head_zero && w[8..12] == [0, 0, 0xff, 0xff] {
                lpm(&v4, &key_bytes(class, &w[12..]))
            } else {
                lpm(&v6, &key_bytes(class, &w))
            }
        }
    };
    let Some(list) = list else { return false };
    for r in &list.rules[..list.count as usize] {
        if r.port_lo <= port && port <= r.port_hi && (r.expires_ns == 0 || r.expires_ns > now) {
            return r.action == ACTION_ALLOW;
        }
    }
    false
}

const UNIX_PATHS: [&str; 7] = [
    "/run/a.sock",
    "/run/a.sockx",
    "/run/b",
    "/tmp/x/y.sock",
    "@abs",
    "@abs2",
    "@a",
];

/// The written meaning of `unix`: a pathname up to its first NUL equals a
/// listed path; an abstract address (leading NUL) equals `\0name` of a
/// listed `@name`, every given byte counted.
fn model_unix(listed: &[&str], sun_path: &[u8]) -> bool {
    match sun_path.first() {
        None => false,
        Some(0) => listed
            .iter()
            .filter_map(|p| p.strip_prefix('@'))
            .any(|n| sun_path[1..] == *n.as_bytes()),
        Some(_) => {
            let end = sun_path
                .iter()
                .position(|&b| b == 0)
                .unwrap_or(sun_path.len());
            listed.iter().any(|p| p.as_bytes() == &sun_path[..end])
        }
    }
}

/// The unix program's key (see `daemon::kernel::unix_prog`) and a hash lookup.
fn kernel_unix(map: &HashMap<UnixKey, u32>, sun_path: &[u8]) -> bool {
    let mut k = UnixKey {
        ruleset: RULESET,
        path_len: 0,
        path: [0; UNIX_PATH_LEN],
    };
    let n = sun_path.len();
    if n > 0 && n <= UNIX_PATH_LEN {
        if sun_path[0] == 0 {
            k.path[..n].copy_from_slice(sun_path);
            k.path_len = n as u32;
        } else {
            let end = sun_path.iter().position(|&b| b == 0).unwrap_or(n);
            k.path[..end].copy_from_slice(&sun_path[..end]);
            k.path_len = end as u32;
        }
    }
    map.get(&k) == Some(&ACTION_ALLOW)
}

fn queries() -> Vec<IpAddr> {
    let mut q: Vec<IpAddr> = V4_BASES.iter().map(|a| IpAddr::from(*a)).collect();
    q.extend(V6_BASES.iter().map(|a| a.parse::<IpAddr>().expect("v6")));
    for s in [
        "10.1.2.4",
        "10.1.3.3",
        "11.0.0.1",
        "2001:db8::2",
        "2001:db9::1",
        "::ffff:10.1.2.3",
        "::ffff:0.0.0.0",
        "::ffff:127.0.0.1",
    ] {
        q.push(s.parse().expect("query"));
    }
    q
}

proptest! {
    #![proptest_config(super::prop_net::config())]

    #[test]
    fn net_tables_decide_as_the_written_policy(
        written in prop::collection::vec(net_spec(0..3), 0..=8),
        grants in prop::collection::vec(prop::collection::vec(net_spec(0..1), 0..=2), 2),
        live in leases(),
        unix in prop::sample::subsequence(UNIX_PATHS.to_vec(), 0..=UNIX_PATHS.len()),
    ) {
        let list = |l: u8| toml_list(written.iter().filter(|r| r.list == l).map(NetSpec::text));
        let bodies: Vec<String> = grants
            .iter()
            .map(|g| format!("network = {}\n", toml_list(g.iter().map(NetSpec::text))))
            .collect();
        let text = format!(
            "[identity]\nname = \"prop\"\n[network]\nallow = {}\ndeny = {}\nbind = {}\nunix = {}\n{}",
            list(0), list(1), list(2), toml_list(unix.iter().map(|s| s.to_string())),
            leases_toml(&bodies),
        );
        let (p, tables) = load(&text, &live);
        for class in [CLASS_TCP, CLASS_UDP, CLASS_BIND_TCP, CLASS_BIND_UDP] {
            for dst in queries() {
                for port in [0u16, 1, 79, 80, 443, 999, 8080, 65535] {
                    for now in [0u64, 1500, 2500, 3500] {
                        let want = model_net(&written, &grants, &live, class, dst, port, now);
                        let got = kernel_net(&tables, class, dst, port, now);
                        prop_assert_eq!(
                            got, want,
                            "class {} {}:{} at {}\n{}\nleases {:?}", class, dst, port, now, text, live
                        );
                    }
                }
            }
        }
        let map: HashMap<UnixKey, u32> = p
            .network
            .unix
            .iter()
            .map(|u| (super::unix::key(RULESET, &u.path), ACTION_ALLOW))
            .collect();
        let mut probes: Vec<Vec<u8>> = vec![Vec::new(), b"/run/a".to_vec(), b"\0ab".to_vec()];
        for path in UNIX_PATHS {
            let bytes = match path.strip_prefix('@') {
                Some(n) => [&[0u8][..], n.as_bytes()].concat(),
                None => path.as_bytes().to_vec(),
            };
            probes.push(bytes.clone());
            probes.push([&bytes[..], b"\0junk"].concat());
            probes.push([&bytes[..], b"\0"].concat());
        }
        for probe in probes {
            prop_assert_eq!(
                kernel_unix(&map, &probe),
                model_unix(&unix, &probe),
                "unix {:?}\n{}", String::from_utf8_lossy(&probe), text
            );
        }
    }
}
