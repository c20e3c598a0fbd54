//! Operations no rule allows, to the entries that allow them: exact unless
//! a limit says a group was seen often enough, and never onto ground Corral
//! protects.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use super::{Addition, Aside, Context, Judge, Limits, NetList, Seen, Verdict, Want, kind_name};
use crate::policy::{ACCESS_EXEC, ACCESS_WRITE, IdentityPolicy, syscalls};

/// A file operation: what, its real path, access bits, absent, evidence.
type FileOp<'a> = (&'a Want, &'a str, u32, bool, &'a Seen);
/// Addresses by (list, udp, port), with their evidence.
type NetOps<'a> = BTreeMap<(NetList, bool, u16), Vec<(IpAddr, &'a Seen)>>;

pub struct Grouped {
    pub additions: Vec<Addition>,
    pub refused: Vec<Aside>,
}

#[derive(Default)]
struct Acc {
    additions: BTreeMap<(&'static str, &'static str, String), Addition>,
    refused: Vec<Aside>,
}

impl Acc {
    fn add(
        &mut self,
        section: &'static str,
        key: &'static str,
        value: String,
        note: Option<String>,
        seen: &Seen,
    ) {
        let a = self
            .additions
            .entry((section, key, value.clone()))
            .or_insert_with(|| Addition {
                section,
                key,
                value,
                note: None,
                covers: 0,
                seen: Seen::default(),
            });
        a.covers += 1;
        a.seen.merge(seen);
        if a.note.is_none() {
            a.note = note;
        }
    }

    fn refuse(&mut self, w: &Want, why: String, seen: &Seen) {
        self.refused.push(Aside {
            op: w.to_string(),
            why,
            seen: seen.clone(),
        });
    }
}

pub fn group(
    p: &IdentityPolicy,
    judge: &Judge<'_>,
    wanted: &BTreeMap<&Want, &Seen>,
    limits: &Limits,
    cx: &Context<'_>,
) -> Grouped {
    let mut acc = Acc::default();
    let mut nets: NetOps<'_> = BTreeMap::new();
    let mut files: Vec<FileOp<'_>> = Vec::new();
    let mut calls: BTreeMap<&str, (&Want, &Seen)> = BTreeMap::new();
    for (&w, &seen) in wanted {
        match w {
            Want::Net {
                list,
                udp,
                addr,
                port,
            } => nets
                .entry((*list, *udp, *port))
                .or_default()
                .push((*addr, seen)),
            Want::Socket(k) => acc.add("network", "sockets", kind_name(*k).into(), None, seen),
            Want::Unix(path) => unix_rule(&mut acc, w, path, cx, seen),
            Want::File {
                path,
                access,
                absent,
            } => files.push((w, path, *access, *absent, seen)),
            Want::Syscall(name) => {
                calls.insert(name, (w, seen));
            }
        }
    }
    for ((list, udp, port), addrs) in nets {
        net_rules(&mut acc, judge, (list, udp, port), addrs, limits, cx);
    }
    file_rules(&mut acc, p, files, limits, cx);
    syscall_rules(&mut acc, p, calls);
    Grouped {
        additions: acc.additions.into_values().collect(),
        refused: acc.refused,
    }
}

fn rule_text(udp: bool, host: &str, port: u16) -> String {
    format!("{}://{host}:{port}", if udp { "udp" } else { "tcp" })
}

fn unix_rule(acc: &mut Acc, w: &Want, path: &str, cx: &Context<'_>, seen: &Seen) {
    if cx.never_unix.iter().any(|n| n == path) {
        acc.refuse(
            w,
            "never proposed: whoever connects there is root on the host (or controls Corral)"
                .into(),
            seen,
        );
    } else if path.contains("\\x") || !(path.starts_with('/') || path.starts_with('@')) {
        acc.refuse(w, "a socket path a rule cannot name exactly".into(), seen);
    } else {
        acc.add("network", "unix", path.to_string(), None, seen);
    }
}

/// A name instead of `ip` only if no address of the name is refused by a
/// written deny: its addresses compile to exact rules, which would win
/// over a shorter deny.
fn usable_name(
    judge: &Judge<'_>,
    key: (NetList, bool, u16),
    ip: IpAddr,
    cx: &Context<'_>,
) -> Option<String> {
    let (name, addrs) = (cx.name_of)(ip)?;
    let (list, udp, port) = key;
    let denied = addrs.iter().any(|&addr| {
        matches!(
            judge.judge(&Want::Net {
                list,
                udp,
                addr,
                port
            }),
            Verdict::DeniedByRule { .. }
        )
    });
    (!denied).then_some(name)
}

fn net_rules(
    acc: &mut Acc,
    judge: &Judge<'_>,
    (list, udp, port): (NetList, bool, u16),
    addrs: Vec<(IpAddr, &Seen)>,
    limits: &Limits,
    cx: &Context<'_>,
) {
    let key = match list {
        NetList::Allow => "allow",
        NetList::Bind => "bind",
    };
    let mut v4: BTreeMap<u32, Vec<(Ipv4Addr, &Seen)>> = BTreeMap::new();
    let mut v6: BTreeMap<u128, Vec<(Ipv6Addr, &Seen)>> = BTreeMap::new();
    for (ip, seen) in addrs {
        if let Some(name) = usable_name(judge, (list, udp, port), ip, cx) {
            let note = format!("{ip} is what the name in use `{name}` resolves to");
            acc.add(
                "network",
                key,
                rule_text(udp, &name, port),
                Some(note),
                seen,
            );
            continue;
        }
        match ip {
            IpAddr::V4(a) => v4
                .entry(mask(u32::from(a).into(), 32, limits.max_prefix_v4) as u32)
                .or_default()
                .push((a, seen)),
            IpAddr::V6(a) => v6
                .entry(mask(u128::from(a), 128, limits.max_prefix_v6))
                .or_default()
                .push((a, seen)),
        }
    }
    let rule = (key, udp, port);
    for (_, m) in v4 {
        let m = m.into_iter().map(|(a, s)| (a.into(), s)).collect();
        by_prefix(acc, rule, m, (32, limits.max_prefix_v4), limits);
    }
    for (_, m) in v6 {
        let m = m.into_iter().map(|(a, s)| (a.into(), s)).collect();
        by_prefix(acc, rule, m, (128, limits.max_prefix_v6), limits);
    }
}

/// One prefix's addresses: exact rules below `limits.min_addrs` distinct
/// ones, else one rule for their smallest common prefix (never shorter
/// than `limit`).
fn by_prefix(
    acc: &mut Acc,
    (key, udp, port): (&'static str, bool, u16),
    members: Vec<(IpAddr, &Seen)>,
    (bits, limit): (u32, u8),
    limits: &Limits,
) {
    let distinct: BTreeSet<IpAddr> = members.iter().map(|(a, _)| *a).collect();
    if distinct.len() < limits.min_addrs {
        for (a, seen) in members {
            let host = match a {
                IpAddr::V4(a) => a.to_string(),
                IpAddr::V6(a) => format!("[{a}]"),
            };
            acc.add("network", key, rule_text(udp, &host, port), None, seen);
        }
        return;
    }
    let (net, len) = common_prefix(&distinct, bits);
    let host = match net {
        IpAddr::V4(n) => format!("{n}/{len}"),
        IpAddr::V6(n) => format!("[{n}]/{len}"),
    };
    let note = format!(
        "{} distinct addresses seen in {host} (grouped from {}, never shorter than /{limit})",
        distinct.len(),
        limits.min_addrs
    );
    for (_, seen) in members {
        acc.add(
            "network",
            key,
            rule_text(udp, &host, port),
            Some(note.clone()),
            seen,
        );
    }
}

fn mask(v: u128, bits: u32, len: u8) -> u128 {
    let len = u32::from(len).min(bits);
    if len == 0 {
        return 0;
    }
    let keep = (!0u128) << (bits - len);
    v & keep & if bits == 128 { !0 } else { (1u128 << bits) - 1 }
}

/// The longest prefix holding every address of `set` (one family).
fn common_prefix(set: &BTreeSet<IpAddr>, bits: u32) -> (IpAddr, u8) {
    let as_u = |a: &IpAddr| match a {
        IpAddr::V4(a) => u128::from(u32::from(*a)),
        IpAddr::V6(a) => u128::from(*a),
    };
    let first = set.iter().next().map(as_u).unwrap_or(0);
    let diff = set.iter().map(as_u).fold(0u128, |d, a| d | (a ^ first));
    let len = bits - (128 - diff.leading_zeros()).min(bits);
    let net = mask(first, bits, len as u8);
    let ip = if bits == 32 {
        IpAddr::V4(Ipv4Addr::from(net as u32))
    } else {
        IpAddr::V6(Ipv6Addr::from(net))
    };
    (ip, len as u8)
}

/// Components of a path (`/srv/` and `/srv` are 1, `/` is 0).
fn depth(path: &str) -> usize {
    path.split('/').filter(|c| !c.is_empty()).count()
}

fn parent_dir(path: &str) -> String {
    let p = path.trim_end_matches('/');
    match p.rfind('/') {
        Some(0) | None => "/".into(),
        Some(i) => format!("{}/", &p[..i]),
    }
}

/// Whether a rule on `path` (a directory ends with `/`) would touch
/// ground Corral protects: inside it, or holding it.
fn touches_protected(path: &str, protected: &[String]) -> Option<String> {
    protected
        .iter()
        .find(|pr| {
            let inside = pr.ends_with('/') && path.starts_with(pr.as_str());
            let same = path.trim_end_matches('/') == pr.trim_end_matches('/');
            let holds = path.ends_with('/') && pr.starts_with(path);
            inside || same || holds
        })
        .cloned()
}

/// The `[files]` lists that grant `access`: `write` grants reading too,
/// and exec is granted by `read`/`write` unless an `exec` list exists.
fn lists_for(access: u32, exec_restricted: bool) -> Vec<&'static str> {
    let mut v = Vec::new();
    if access & ACCESS_WRITE != 0 {
        v.push("write");
    }
    if access & ACCESS_EXEC != 0 && exec_restricted {
        v.push("exec");
    }
    if v.is_empty() {
        v.push("read");
    }
    v
}

/// Where a file operation's rule goes.
enum Placed {
    /// The file itself (grouped with its siblings past the limit).
    Exact(String),
    /// A directory opened itself (BPF LSM: its exact rule).
    Listing(String),
    /// The directory a file is created in (Landlock).
    CreateDir(String),
}

fn place(
    path: &str,
    access: u32,
    absent: bool,
    limits: &Limits,
    cx: &Context<'_>,
) -> Result<Placed, String> {
    // Under Landlock, a rule names what exists at launch: a file the agent
    // creates is allowed by a rule on its directory.
    let create = absent && access & ACCESS_WRITE != 0 && !cx.files_lsm;
    let target = if create && path.ends_with('/') {
        // Already the directory (a Landlock create names only that).
        path.to_string()
    } else if create {
        parent_dir(path)
    } else {
        path.to_string()
    };
    if target.len() > agent_common::file::FILE_KEY_PATH_LEN || target.contains("\\x") {
        return Err("a path a rule cannot name (too long, or bytes that are not text)".into());
    }
    if target == "/" {
        return Err("`/` is never proposed".into());
    }
    if let Some(pr) = touches_protected(&target, cx.protected) {
        return Err(format!(
            "Corral protects {pr}: never proposed (self-protection)"
        ));
    }
    match (target.strip_suffix('/'), create) {
        (None, _) => Ok(Placed::Exact(target)),
        (Some(_), true) if depth(&target) < limits.min_depth => Err(format!(
            "a rule on {target} would cover everything beneath it, above the depth limit ({})",
            limits.min_depth
        )),
        (Some(_), true) => Ok(Placed::CreateDir(target)),
        // Listing a directory is not reading what lies beneath it.
        (Some(dir), false) if cx.files_lsm => Ok(Placed::Listing(dir.to_string())),
        (Some(_), false) => Err(
            "opening a directory: under Landlock only a rule on everything \
                                 beneath it allows that, which is never proposed; write it by \
                                 hand if intended"
                .into(),
        ),
    }
}

fn file_rules(
    acc: &mut Acc,
    p: &IdentityPolicy,
    files: Vec<FileOp<'_>>,
    limits: &Limits,
    cx: &Context<'_>,
) {
    // (directory, list) -> files beneath it directly, for grouping.
    type Member<'a> = (&'a Want, String, &'a Seen);
    let mut siblings: BTreeMap<(String, &'static str), Vec<Member<'_>>> = BTreeMap::new();
    for (w, path, access, absent, seen) in files {
        let lists = lists_for(access, p.files.exec_restricted);
        match place(path, access, absent, limits, cx) {
            Err(why) => acc.refuse(w, why, seen),
            Ok(Placed::Exact(f)) => {
                for list in lists {
                    siblings
                        .entry((parent_dir(&f), list))
                        .or_default()
                        .push((w, f.clone(), seen));
                }
            }
            Ok(Placed::Listing(d)) => {
                let note = "the directory itself (listing it), not what lies beneath";
                for list in lists {
                    acc.add("files", list, d.clone(), Some(note.into()), seen);
                }
            }
            Ok(Placed::CreateDir(d)) => {
                let note = "files are created here: under Landlock a rule for a file that does \
                            not exist at launch grants nothing, so the directory is allowed";
                for list in lists {
                    acc.add("files", list, d.clone(), Some(note.into()), seen);
                }
            }
        }
    }
    for ((dir, list), members) in siblings {
        let distinct: BTreeSet<&str> = members.iter().map(|(_, f, _)| f.as_str()).collect();
        let groupable = distinct.len() >= limits.dir_files
            && depth(&dir) >= limits.min_depth
            && touches_protected(&dir, cx.protected).is_none();
        for (_, file, seen) in &members {
            if groupable {
                let note = format!(
                    "{} distinct files seen directly in {dir} (grouped from {})",
                    distinct.len(),
                    limits.dir_files
                );
                acc.add("files", list, dir.clone(), Some(note), seen);
            } else {
                acc.add("files", list, file.clone(), None, seen);
            }
        }
    }
}

fn syscall_rules(acc: &mut Acc, p: &IdentityPolicy, calls: BTreeMap<&str, (&Want, &Seen)>) {
    let mut used = syscalls::SyscallSet::default();
    for name in calls.keys() {
        if let Some(nr) = syscalls::nr_of(name) {
            used.insert(nr);
        }
    }
    let (allowed, denied) = p
        .syscalls
        .as_ref()
        .map(|s| (s.allowed, s.denied))
        .unwrap_or_default();
    let mut grouped = syscalls::SyscallSet::default();
    for g in syscalls::GROUPS {
        // The group adds only what was used: the rest of it is allowed
        // already.
        let set = syscalls::group_set(g.bit);
        let adds = set.intersect(&used);
        if adds.len() < 2
            || !set.minus(&used.union(&allowed)).is_empty()
            || !set.intersect(&denied).is_empty()
        {
            continue;
        }
        let note = format!("every syscall of {} was used or is allowed already", g.name);
        for (name, (_, seen)) in &calls {
            if syscalls::nr_of(name).is_some_and(|nr| set.contains(nr)) {
                acc.add("syscalls", "allow", g.name.into(), Some(note.clone()), seen);
            }
        }
        grouped = grouped.union(&set);
    }
    for (name, (w, seen)) in calls {
        match syscalls::nr_of(name) {
            None => acc.refuse(
                w,
                format!("`{name}` is not a syscall name Corral knows"),
                seen,
            ),
            Some(nr) if grouped.contains(nr) => {}
            Some(_) => acc.add("syscalls", "allow", name.into(), None, seen),
        }
    }
}
