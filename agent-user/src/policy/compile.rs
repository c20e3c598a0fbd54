//! Compiling network rules into the kernel's LPM tables.
//!
//! The kernel reads only the value of the longest matching prefix, so each
//! prefix's value must already hold every rule that could decide for an
//! address under it: its own rules plus those of every shorter prefix of the
//! same class containing it ("push-down"), most specific first. The kernel
//! then takes the first entry whose port range matches.

use std::cmp::Reverse;
use std::collections::{HashMap, HashSet};
use std::net::IpAddr;

use agent_common::net::{
    ACTION_ALLOW, ACTION_DENY, CLASS_BIND_TCP, CLASS_BIND_UDP, CLASS_TCP, CLASS_UDP,
    MAX_PORT_RULES, NetRuleList, PortRule,
};

use super::error::{PolicyError, PolicyErrors};
use super::rule::unmap;
use super::{Action, IdentityPolicy, NetRule};

/// One LPM entry. `prefix_len` counts address bits only (0..=8*N): the
/// daemon adds `agent_common::net::KEY_FIXED_BITS` for the ruleset and class
/// when it builds the key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LpmEntry<const N: usize> {
    pub class: u32,
    pub prefix_len: u32,
    pub addr: [u8; N],
    pub list: NetRuleList,
}

/// Entries sorted by (class, prefix_len, addr), so equal policies compile to
/// equal tables.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NetTables {
    pub v4: Vec<LpmEntry<4>>,
    pub v6: Vec<LpmEntry<16>>,
}

pub fn compile_network(p: &IdentityPolicy) -> Result<NetTables, PolicyErrors> {
    compile_with(p, false)
}

/// Like [`compile_network`], but expiring rules never hide one another: the
/// largest lists any combination of expiry times can produce (the load-time
/// check of lease grants, `leases::check_fit`).
pub(crate) fn compile_worst_case(p: &IdentityPolicy) -> Result<NetTables, PolicyErrors> {
    compile_with(p, true)
}

fn compile_with(p: &IdentityPolicy, worst_case: bool) -> Result<NetTables, PolicyErrors> {
    let mut v4 = Vec::new();
    let mut v6 = Vec::new();
    let mut errors = Vec::new();
    for rule in &p.network.rules {
        // The loader already normalises; rules built elsewhere (the fields
        // are public) get the same treatment rather than a wrong table.
        let (addr, len) = unmap(rule.addr, rule.prefix_len);
        let max = if addr.is_ipv4() { 32 } else { 128 };
        if len > max {
            errors.push(PolicyError {
                file: rule.origin.file.clone(),
                line: rule.origin.line,
                col: rule.origin.col,
                message: format!("prefix length {len} is over {max} in `{}`", rule.text),
            });
            continue;
        }
        match addr {
            IpAddr::V4(a) => v4.push(Item::new(rule, len, a.octets(), p)),
            IpAddr::V6(a) => v6.push(Item::new(rule, len, a.octets(), p)),
        }
    }
    let v4 = compile_family(&v4, worst_case, &mut errors);
    let v6 = compile_family(&v6, worst_case, &mut errors);
    if errors.is_empty() {
        Ok(NetTables { v4, v6 })
    } else {
        Err(PolicyErrors(errors))
    }
}

/// A rule placed in its family, address masked to its prefix.
struct Item<'a, const N: usize> {
    rule: &'a NetRule,
    class: u32,
    len: u8,
    addr: [u8; N],
    /// `CLOCK_BOOTTIME` ns at which the rule stops applying; 0 = never.
    expires: u64,
}

impl<'a, const N: usize> Item<'a, N> {
    fn new(rule: &'a NetRule, len: u8, addr: [u8; N], p: &IdentityPolicy) -> Self {
        Self {
            rule,
            class: rule.class(),
            len,
            addr: mask_bytes(addr, u32::from(len)),
            expires: p.network.expires.get(&rule.id).copied().unwrap_or(0),
        }
    }

    /// When the rule ends, for ordering: never (0) is the latest of all.
    fn end(&self) -> u64 {
        if self.expires == 0 {
            u64::MAX
        } else {
            self.expires
        }
    }

    /// Whether `self`, placed before `later` in a list, makes `later`
    /// unreachable: its port range holds `later`'s, and it applies for at
    /// least as long. An expiring rule never hides a rule that outlives it.
    fn hides(&self, later: &Item<'_, N>, worst_case: bool) -> bool {
        let (lo, hi) = (later.rule.port_lo, later.rule.port_hi);
        let range = self.rule.port_lo <= lo && hi <= self.rule.port_hi;
        let lasts = self.expires == 0 || (!worst_case && later.end() <= self.end());
        range && lasts
    }
}

type Key<const N: usize> = (u32, u8, [u8; N]);

fn compile_family<const N: usize>(
    items: &[Item<'_, N>],
    worst_case: bool,
    errors: &mut Vec<PolicyError>,
) -> Vec<LpmEntry<N>> {
    let mut own: HashMap<Key<N>, Vec<usize>> = HashMap::new();
    // Prefix lengths in use per class: probing only those keeps the usual
    // case (many /32s under a few short prefixes) to a handful of lookups.
    let mut lens: HashMap<u32, Vec<u8>> = HashMap::new();
    for (i, it) in items.iter().enumerate() {
        own.entry((it.class, it.len, it.addr)).or_default().push(i);
        lens.entry(it.class).or_default().push(it.len);
    }
    for l in lens.values_mut() {
        l.sort_unstable();
        l.dedup();
    }
    let mut keys: Vec<Key<N>> = own.keys().copied().collect();
    // The output order; it also puts every prefix after the shorter ones
    // containing it, so an overflow is known before the prefixes under it
    // are compiled (see `overflowed`).
    keys.sort_unstable();

    // Prefixes whose list overflowed. Every prefix under one overflows too;
    // reporting those would bury the one error that matters.
    let mut overflowed: HashSet<Key<N>> = HashSet::new();
    let mut entries = Vec::with_capacity(keys.len());
    let mut candidates: Vec<&Item<'_, N>> = Vec::new();
    for key @ (class, len, addr) in keys {
        candidates.clear();
        let mut inherits_overflow = false;
        // One probe per length in use up to this one: at most 33 or 129
        // hash lookups per prefix, whatever the number of rules.
        let class_lens = lens.get(&class).map_or(&[][..], Vec::as_slice);
        for &l in class_lens.iter().take_while(|&&l| l <= len) {
            let k = (class, l, mask_bytes(addr, u32::from(l)));
            if let Some(ids) = own.get(&k) {
                candidates.extend(ids.iter().map(|&i| &items[i]));
                inherits_overflow |= l < len && overflowed.contains(&k);
            }
        }
        candidates.sort_unstable_by_key(|it| {
            let r = it.rule;
            (
                Reverse(it.len),
                r.port_hi.saturating_sub(r.port_lo),
                r.action != Action::Deny,
                // Among otherwise equal rules the longest-lived comes first,
                // so the others (e.g. one grant held by several leases) hide
                // behind it.
                Reverse(it.end()),
                r.id,
            )
        });
        let (kept, more) = drop_shadowed(&candidates, worst_case);
        if kept.len() > MAX_PORT_RULES {
            overflowed.insert(key);
            if !inherits_overflow {
                errors.push(overflow_error(key, &kept, more, &own[&key], items));
            }
            continue;
        }
        let mut list = NetRuleList {
            count: kept.len() as u32,
            _pad: 0,
            rules: [PortRule::default(); MAX_PORT_RULES],
        };
        for (slot, it) in list.rules.iter_mut().zip(&kept) {
            *slot = port_rule(it.rule, it.expires);
        }
        entries.push(LpmEntry {
            class,
            prefix_len: u32::from(len),
            addr,
            list,
        });
    }
    entries
}

/// The candidates the kernel could ever pick, in order.
///
/// The kernel takes the first entry whose range holds the port, so an entry
/// whose range lies inside an earlier one's can never be taken: dropping it
/// changes no decision (this also collapses exact duplicates) and leaves
/// room under `MAX_PORT_RULES`. With expiring rules (lease grants) that
/// holds only while the earlier entry lives: an entry is dropped only behind
/// one that never expires or expires no earlier than it does (see
/// `Item::hides`), so an expiring grant never hides a policy rule, and a
/// grant is never hidden by one that ends first.
///
/// Stops one past the limit, since the list is then rejected anyway; the
/// second value counts candidates left unexamined, for the error message.
fn drop_shadowed<'a, 'b, const N: usize>(
    sorted: &[&'b Item<'a, N>],
    worst_case: bool,
) -> (Vec<&'b Item<'a, N>>, usize) {
    let mut kept: Vec<&Item<'_, N>> = Vec::new();
    for (i, it) in sorted.iter().enumerate() {
        if kept.iter().any(|k| k.hides(it, worst_case)) {
            continue;
        }
        kept.push(it);
        if kept.len() > MAX_PORT_RULES {
            return (kept, sorted.len() - i - 1);
        }
    }
    (kept, 0)
}

fn overflow_error<const N: usize>(
    (class, len, addr): Key<N>,
    kept: &[&Item<'_, N>],
    more: usize,
    own: &[usize],
    items: &[Item<'_, N>],
) -> PolicyError {
    // Reported at the first rule written for this very prefix: that is where
    // the list overflowed, whatever it inherited.
    let at = own
        .iter()
        .map(|&i| &items[i].rule.origin)
        .min_by_key(|o| (o.line, o.col))
        .unwrap_or(&kept[0].rule.origin);
    let mut rules: Vec<String> = kept.iter().map(|it| it.rule.describe()).collect();
    if more > 0 {
        rules.push(format!("and up to {more} more"));
    }
    PolicyError {
        file: at.file.clone(),
        line: at.line,
        col: at.col,
        message: format!(
            "too many rules for {} ({}): an address there can match more than the kernel's \
             {MAX_PORT_RULES} candidate port rules per prefix (its own and those of every \
             prefix containing it); merge port ranges or remove rules: {}",
            show_prefix(addr, len),
            class_name(class),
            rules.join(", ")
        ),
    }
}

fn show_prefix<const N: usize>(addr: [u8; N], len: u8) -> String {
    match <[u8; 4]>::try_from(&addr[..]) {
        Ok(a4) => format!("{}/{len}", std::net::Ipv4Addr::from(a4)),
        Err(_) => match <[u8; 16]>::try_from(&addr[..]) {
            Ok(a6) => format!("[{}]/{len}", std::net::Ipv6Addr::from(a6)),
            Err(_) => format!("{addr:?}/{len}"),
        },
    }
}

fn class_name(class: u32) -> &'static str {
    match class {
        CLASS_TCP => "tcp",
        CLASS_UDP => "udp",
        CLASS_BIND_TCP => "bind tcp",
        CLASS_BIND_UDP => "bind udp",
        _ => "unknown class",
    }
}

fn port_rule(r: &NetRule, expires_ns: u64) -> PortRule {
    PortRule {
        port_lo: r.port_lo,
        port_hi: r.port_hi,
        action: match r.action {
            Action::Allow => ACTION_ALLOW,
            Action::Deny => ACTION_DENY,
        },
        rule_id: r.id,
        _pad: 0,
        expires_ns,
    }
}

/// `addr` with every bit from `len` on cleared.
fn mask_bytes<const N: usize>(mut addr: [u8; N], len: u32) -> [u8; N] {
    for (i, b) in addr.iter_mut().enumerate() {
        let start = 8 * i as u32;
        if len <= start {
            *b = 0;
        } else if len < start + 8 {
            *b &= 0xffu8 << (8 - (len - start));
        }
    }
    addr
}

/// Userspace twin of the kernel decision, for `corral policy explain` and
/// tests: the action and rule id of the deciding rule, or None when no rule
/// matches (default deny).
///
/// Linear in the table size: fine for explaining one connection, not meant
/// for a hot path. Expiring entries (lease grants) are treated as live: the
/// daemon removes a lease's grants when it ends, and explains what is in force.
pub fn decide(t: &NetTables, class: u32, ip: IpAddr, port: u16) -> Option<(Action, u32)> {
    // Mapped destinations are judged by the IPv4 rules, as in the kernel.
    let list = match ip.to_canonical() {
        IpAddr::V4(a) => longest(&t.v4, class, a.octets()),
        IpAddr::V6(a) => longest(&t.v6, class, a.octets()),
    }?;
    let count = (list.count as usize).min(MAX_PORT_RULES);
    list.rules[..count]
        .iter()
        .find(|r| r.port_lo <= port && port <= r.port_hi)
        .and_then(|r| {
            let action = match r.action {
                ACTION_ALLOW => Action::Allow,
                ACTION_DENY => Action::Deny,
                _ => return None,
            };
            Some((action, r.rule_id))
        })
}

fn longest<const N: usize>(
    entries: &[LpmEntry<N>],
    class: u32,
    addr: [u8; N],
) -> Option<&NetRuleList> {
    entries
        .iter()
        .filter(|e| {
            e.class == class
                && e.prefix_len as usize <= 8 * N
                && mask_bytes(addr, e.prefix_len) == e.addr
        })
        .max_by_key(|e| e.prefix_len)
        .map(|e| &e.list)
}

/// FNV-1a over a fixed encoding of what the kernel is given: stable across
/// runs and compiler versions, unlike `DefaultHasher`, so a digest can be
/// compared with one recorded by an earlier daemon.
pub(crate) fn digest(p: &IdentityPolicy, t: &NetTables) -> u64 {
    let mut h = Fnv(0xcbf2_9ce4_8422_2325);
    h.bytes(p.name.as_bytes());
    h.u32(u32::from(p.mode));
    fn entries<const N: usize>(h: &mut Fnv, es: &[LpmEntry<N>]) {
        h.u32(es.len() as u32);
        for e in es {
            h.u32(e.class);
            h.u32(e.prefix_len);
            h.bytes(&e.addr);
            h.u32(e.list.count);
            for r in &e.list.rules[..(e.list.count as usize).min(MAX_PORT_RULES)] {
                h.u32(u32::from(r.port_lo));
                h.u32(u32::from(r.port_hi));
                h.u32(r.action);
                h.u32(r.rule_id);
                h.bytes(&r.expires_ns.to_le_bytes());
            }
        }
    }
    entries(&mut h, &t.v4);
    entries(&mut h, &t.v6);
    h.u32(p.network.unix.len() as u32);
    let leases = super::leases::fingerprint(p);
    if !leases.is_empty() {
        h.bytes(leases.as_bytes());
    }
    for u in &p.network.unix {
        h.u32(u.id);
        h.bytes(u.path.as_bytes());
    }
    // Only when set, so digests recorded before `sockets` existed still match.
    let sockets = p.network.socket_flags();
    if sockets != 0 {
        h.u32(sockets);
    }
    // File grants of live leases (the written rules are in the load digest).
    for (id, expires) in &p.files.expires {
        h.u32(*id);
        h.bytes(&expires.to_le_bytes());
        if let Some(r) = p.files.rules.iter().find(|r| r.id == *id) {
            h.bytes(r.path.as_bytes());
            h.u32(r.access);
        }
    }
    h.0
}

struct Fnv(u64);

impl Fnv {
    /// Length-prefixed, so ("ab","c") and ("a","bc") differ.
    fn bytes(&mut self, b: &[u8]) {
        self.raw(&(b.len() as u64).to_le_bytes());
        self.raw(b);
    }
    fn u32(&mut self, v: u32) {
        self.raw(&v.to_le_bytes());
    }
    fn raw(&mut self, b: &[u8]) {
        for &x in b {
            self.0 ^= u64::from(x);
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
}
