//! Reading policy files and directories.
//!
//! Errors are collected, never short-circuited: an operator fixing a policy
//! directory should see every problem in one run, not one per run.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::io;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};

use agent_common::identity::Mode;
use toml::Spanned;

use super::compile::{NetTables, compile_network, digest};
use super::error::{PolicyError, PolicyErrors, Source};
use super::files;
use super::raw::{RawNetwork, RawPolicy};
use super::rule::{self, Target};
use super::{
    Action, Direction, IdentityPolicy, NetRule, NetworkPolicy, Origin, PolicySet, UnixRule,
};

type Resolve<'a> = &'a dyn Fn(&str) -> io::Result<Vec<IpAddr>>;

/// The system resolver (`getaddrinfo` through `ToSocketAddrs`).
fn default_resolve(host: &str) -> io::Result<Vec<IpAddr>> {
    Ok((host, 0)
        .to_socket_addrs()?
        .map(|sa: SocketAddr| sa.ip())
        .collect())
}

/// Loads every `*.toml` of `dir`, resolving host names with the system
/// resolver.
pub fn load_dir(dir: &Path) -> Result<PolicySet, PolicyErrors> {
    load_dir_with(dir, &default_resolve)
}

/// Loads every `*.toml` of `dir` (not hidden, not editor backups). An empty
/// directory is a valid policy set with no identities.
pub fn load_dir_with(dir: &Path, resolve: Resolve<'_>) -> Result<PolicySet, PolicyErrors> {
    load_dir_sources(dir, resolve).map(|(set, _)| set)
}

/// One policy file's text as it was read for a load.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicySource {
    pub path: PathBuf,
    pub text: String,
}

/// Like [`load_dir_with`], and also returns the texts it loaded, so the same
/// policy can be compiled again later (e.g. with re-resolved host names)
/// without re-reading files that may have changed since.
pub fn load_dir_sources(
    dir: &Path,
    resolve: Resolve<'_>,
) -> Result<(PolicySet, Vec<PolicySource>), PolicyErrors> {
    let mut errors = Vec::new();
    let mut sources = Vec::new();
    for path in policy_files(dir, &mut errors) {
        match fs::read_to_string(&path) {
            Ok(text) => sources.push(PolicySource { path, text }),
            Err(e) => errors.push(PolicyError::whole_file(&path, format!("cannot read: {e}"))),
        }
    }
    let set = load_sources_after(dir, &sources, resolve, errors)?;
    Ok((set, sources))
}

/// Loads policy texts read earlier (see [`load_dir_sources`]) as the set of
/// `dir`.
pub fn load_sources(
    dir: &Path,
    sources: &[PolicySource],
    resolve: Resolve<'_>,
) -> Result<PolicySet, PolicyErrors> {
    load_sources_after(dir, sources, resolve, Vec::new())
}

fn load_sources_after(
    dir: &Path,
    sources: &[PolicySource],
    resolve: Resolve<'_>,
    mut errors: Vec<PolicyError>,
) -> Result<PolicySet, PolicyErrors> {
    let mut hosts = HostCache::new(resolve);
    let mut identities: BTreeMap<String, IdentityPolicy> = BTreeMap::new();
    let mut network: BTreeMap<String, NetTables> = BTreeMap::new();
    // Where each name was first defined, to name both files of a duplicate.
    let mut defined: HashMap<String, Origin> = HashMap::new();

    for PolicySource { path, text } in sources {
        let parsed = parse(&Source::new(path, text), &mut hosts);
        let mut duplicate = false;
        if let Some((name, at)) = &parsed.name {
            if let Some(first) = defined.get(name) {
                duplicate = true;
                errors.push(PolicyError {
                    file: at.file.clone(),
                    line: at.line,
                    col: at.col,
                    message: format!("identity `{name}` is already defined in {first}"),
                });
            } else {
                defined.insert(name.clone(), at.clone());
            }
        }
        match parsed.result {
            Ok((p, tables)) if !duplicate => {
                network.insert(p.name.clone(), tables);
                identities.insert(p.name.clone(), p);
            }
            Ok(_) => {}
            Err(es) => errors.extend(es),
        }
    }
    if errors.is_empty() {
        Ok(PolicySet {
            dir: dir.to_path_buf(),
            identities,
            network,
        })
    } else {
        Err(PolicyErrors(errors))
    }
}

/// Policy files of `dir`, sorted so errors and duplicates are reported in a
/// stable order.
fn policy_files(dir: &Path, errors: &mut Vec<PolicyError>) -> Vec<PathBuf> {
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) => {
            errors.push(PolicyError::whole_file(
                dir,
                format!("cannot read policy directory: {e}"),
            ));
            return Vec::new();
        }
    };
    let mut paths = Vec::new();
    for entry in entries {
        let entry = match entry {
            Ok(e) => e,
            Err(e) => {
                errors.push(PolicyError::whole_file(
                    dir,
                    format!("cannot list policy directory: {e}"),
                ));
                continue;
            }
        };
        let name = entry.file_name();
        let name = name.to_string_lossy();
        // Hidden files and `~` backups are editor droppings (`.x.toml.swp`,
        // `x.toml~`): loading them would load stale or half-written policy.
        if name.starts_with('.') || name.ends_with('~') || !name.ends_with(".toml") {
            continue;
        }
        let path = dir.join(entry.file_name());
        // Follows symlinks: a link to a policy file is a policy file.
        match fs::metadata(&path) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => paths.push(path),
            Err(e) => errors.push(PolicyError::whole_file(&path, format!("cannot read: {e}"))),
        }
    }
    paths.sort();
    paths
}

/// Loads one policy file, resolving host names with the system resolver.
pub fn load_file(path: &Path) -> Result<IdentityPolicy, PolicyErrors> {
    let text = fs::read_to_string(path)
        .map_err(|e| PolicyError::whole_file(path, format!("cannot read: {e}")))?;
    parse_str(path, &text, &default_resolve)
}

/// Parses and compiles one policy; `file` is used for positions and as
/// `IdentityPolicy::source`.
pub fn parse_str(
    file: &Path,
    text: &str,
    resolve: Resolve<'_>,
) -> Result<IdentityPolicy, PolicyErrors> {
    parse(&Source::new(file, text), &mut HostCache::new(resolve))
        .result
        .map(|(p, _)| p)
        .map_err(PolicyErrors)
}

/// What a resolver returns, wrapped in `io::Error::other`, for a name it
/// knew but that has not resolved for longer than its owner keeps stale
/// answers. Not an error for the load: the name's allow and bind rules are
/// dropped (fail closed) and its deny rules keep `last` (still denied).
#[derive(Debug, Clone, thiserror::Error)]
#[error("host `{host}` stopped resolving and its last addresses expired")]
pub struct HostExpired {
    pub host: String,
    pub last: Vec<IpAddr>,
}

/// A host name's addresses for one load.
#[derive(Debug, Clone)]
enum HostAddrs {
    Live(Vec<IpAddr>),
    /// See [`HostExpired`]: the last addresses it had.
    Expired(Vec<IpAddr>),
}

/// Resolves each host name once per load, however many rules use it.
struct HostCache<'a> {
    resolve: Resolve<'a>,
    seen: HashMap<String, Result<HostAddrs, String>>,
}

impl<'a> HostCache<'a> {
    fn new(resolve: Resolve<'a>) -> Self {
        Self {
            resolve,
            seen: HashMap::new(),
        }
    }

    /// Sorted, deduplicated addresses (a resolver returns one per socket
    /// type), IPv4-mapped ones as IPv4.
    fn lookup(&mut self, host: &str) -> Result<HostAddrs, String> {
        fn canonical(addrs: Vec<IpAddr>) -> Vec<IpAddr> {
            let mut addrs: Vec<IpAddr> = addrs.into_iter().map(|a| a.to_canonical()).collect();
            addrs.sort();
            addrs.dedup();
            addrs
        }
        let resolve = self.resolve;
        self.seen
            .entry(host.to_string())
            .or_insert_with(|| match resolve(host) {
                Err(e) => match e.get_ref().and_then(|i| i.downcast_ref::<HostExpired>()) {
                    Some(x) => Ok(HostAddrs::Expired(canonical(x.last.clone()))),
                    None => Err(format!("cannot resolve host `{host}`: {e}")),
                },
                Ok(addrs) => {
                    let addrs = canonical(addrs);
                    if addrs.is_empty() {
                        Err(format!("host `{host}` resolved to no addresses"))
                    } else {
                        Ok(HostAddrs::Live(addrs))
                    }
                }
            })
            .clone()
    }
}

struct Parsed {
    /// The identity name and where it is written, whenever it could be read
    /// (even if the file has other errors), for duplicate detection.
    name: Option<(String, Origin)>,
    /// The policy with the network tables its digest was computed from.
    result: Result<(IdentityPolicy, NetTables), Vec<PolicyError>>,
}

fn parse(src: &Source<'_>, hosts: &mut HostCache<'_>) -> Parsed {
    let raw: RawPolicy = match toml::from_str(src.text) {
        Ok(r) => r,
        Err(e) => {
            let at = e.span().map_or(0, |s| s.start);
            return Parsed {
                name: None,
                // One error per line, whatever the parser's wording.
                result: Err(vec![
                    src.error_at(at, e.message().trim().replace('\n', "; ")),
                ]),
            };
        }
    };
    let mut errors = Vec::new();

    let name = raw.identity.name.get_ref().clone();
    let name_origin = src.origin(&raw.identity.name);
    let name_ok = match rule::check_name(&name) {
        Ok(()) => true,
        Err(m) => {
            errors.push(error_in(src, &raw.identity.name, 0, m));
            false
        }
    };

    let mode = mode_of(src, raw.identity.mode.as_ref(), &mut errors);

    // File rule ids continue after every network and unix rule as written.
    let last_net_id = raw.network.as_ref().map_or(0, |n| {
        (n.allow.len() + n.deny.len() + n.bind.len() + n.unix.len()) as u32
    });
    let network = build_network(src, &raw.network.unwrap_or_default(), hosts, &mut errors);
    let (files, _) = files::build_files(src, raw.files.as_ref(), last_net_id, &mut errors);
    let (leases, anomaly) = super::leases::build(
        src,
        raw.leases.as_ref(),
        raw.anomaly.as_ref(),
        &mut |list| {
            let mut errs = Vec::new();
            let only_allow = RawNetwork {
                allow: list.to_vec(),
                ..RawNetwork::default()
            };
            (
                build_network(src, &only_allow, hosts, &mut errs).rules,
                errs,
            )
        },
        &mut errors,
    );
    let syscalls = raw
        .syscalls
        .as_ref()
        .map(|s| super::syscalls::build(src, s, &mut errors));

    let result = if errors.is_empty() {
        with_digest(IdentityPolicy {
            name: name.clone(),
            mode,
            source: src.file.to_path_buf(),
            network,
            files,
            leases,
            anomaly,
            syscalls,
            digest: 0,
        })
    } else {
        Err(errors)
    };
    Parsed {
        name: name_ok.then_some((name, name_origin)),
        result,
    }
}

/// `[identity] mode`: `enforce` (the default) or `audit`.
fn mode_of(
    src: &Source<'_>,
    mode: Option<&Spanned<String>>,
    errors: &mut Vec<PolicyError>,
) -> Mode {
    match mode.map(|m| (m, m.get_ref().as_str())) {
        None | Some((_, "enforce")) => Mode::Enforce,
        Some((_, "audit")) => Mode::Audit,
        Some((m, other)) => {
            errors.push(error_in(
                src,
                m,
                0,
                format!("bad mode `{other}`: expected `enforce` or `audit`"),
            ));
            Mode::Enforce
        }
    }
}

/// The network tables compiled (the lease grants' worst case must fit
/// too) and the digest of everything that reaches the kernel.
fn with_digest(
    mut policy: IdentityPolicy,
) -> Result<(IdentityPolicy, NetTables), Vec<PolicyError>> {
    let tables = compile_network(&policy)
        .and_then(|t| super::leases::check_fit(&policy).map(|_| t))
        .map_err(|es| es.0)?;
    policy.digest = files::fold_digest(digest(&policy, &tables), &policy.files);
    policy.digest = super::syscalls::fold_digest(policy.digest, policy.syscalls.as_ref());
    Ok((policy, tables))
}

/// Ids are given in the order allow, deny, bind, unix, each in file order,
/// so they are stable as long as the file is.
fn build_network(
    src: &Source<'_>,
    raw: &RawNetwork,
    hosts: &mut HostCache<'_>,
    errors: &mut Vec<PolicyError>,
) -> NetworkPolicy {
    let mut net = NetworkPolicy::default();
    let mut next_id = 0u32;
    let lists = [
        (&raw.allow, Direction::Connect, Action::Allow),
        (&raw.deny, Direction::Connect, Action::Deny),
        (&raw.bind, Direction::Bind, Action::Allow),
    ];
    for (list, direction, action) in lists {
        for text in list {
            next_id += 1;
            let spec = match rule::parse_rule(text.get_ref()) {
                Ok(s) => s,
                Err(e) => {
                    errors.push(error_in(src, text, e.at, e.message));
                    continue;
                }
            };
            let targets = match targets_of(spec.target, action, hosts) {
                Ok(t) => t,
                Err((at, m)) => {
                    errors.push(error_in(src, text, at, m));
                    continue;
                }
            };
            for (addr, prefix_len, host) in targets {
                net.rules.push(NetRule {
                    id: next_id,
                    action,
                    direction,
                    proto: spec.proto,
                    addr,
                    prefix_len,
                    port_lo: spec.port_lo,
                    port_hi: spec.port_hi,
                    host,
                    text: text.get_ref().clone(),
                    origin: src.origin(text),
                });
            }
        }
    }
    for path in &raw.unix {
        next_id += 1;
        match rule::check_unix_path(path.get_ref()) {
            Ok(()) => net.unix.push(UnixRule {
                id: next_id,
                path: path.get_ref().clone(),
                origin: src.origin(path),
            }),
            Err(e) => errors.push(error_in(src, path, e.at, e.message)),
        }
    }
    socket_kinds(src, &raw.sockets, &mut net, errors);
    net.sockets.sort();
    net
}

/// An address, its prefix length, and the host name it came from.
type Addressed = (IpAddr, u8, Option<String>);

/// The addresses a rule's target stands for, each with its prefix length
/// and the host name it came from; an unresolvable name is an error at its
/// offset.
fn targets_of(
    target: Target,
    action: Action,
    hosts: &mut HostCache<'_>,
) -> Result<Vec<Addressed>, (usize, String)> {
    Ok(match target {
        Target::Any => vec![
            (IpAddr::from([0u8; 4]), 0, None),
            (IpAddr::from([0u8; 16]), 0, None),
        ],
        Target::Net { addr, prefix_len } => vec![(addr, prefix_len, None)],
        Target::Host { name, at } => match hosts.lookup(&name) {
            // Fail closed: an expired name allows nothing, and what it
            // denied stays denied.
            Ok(HostAddrs::Expired(_)) if action != Action::Deny => Vec::new(),
            Ok(HostAddrs::Live(addrs) | HostAddrs::Expired(addrs)) => addrs
                .into_iter()
                .map(|a| (a, if a.is_ipv4() { 32 } else { 128 }, Some(name.clone())))
                .collect(),
            Err(m) => return Err((at, m)),
        },
    })
}

/// `[network] sockets`: the inet socket kinds besides TCP/UDP/MPTCP.
fn socket_kinds(
    src: &Source<'_>,
    kinds: &[Spanned<String>],
    net: &mut NetworkPolicy,
    errors: &mut Vec<PolicyError>,
) {
    for kind in kinds {
        match super::SocketKind::ALL
            .iter()
            .find(|(name, _)| name == kind.get_ref())
        {
            Some((_, k)) if !net.sockets.contains(k) => net.sockets.push(*k),
            Some(_) => {}
            None => errors.push(error_in(
                src,
                kind,
                0,
                format!(
                    "unknown socket kind `{}`: `[network] sockets` takes \"ping\" (ICMP echo), \
                     \"raw\" (raw IP), \"packet\" (AF_PACKET) and \"vsock\" (AF_VSOCK); TCP, \
                     MPTCP and UDP sockets need no entry",
                    kind.get_ref()
                ),
            )),
        }
    }
}

/// An error `inner` bytes into a string value.
fn error_in(
    src: &Source<'_>,
    s: &Spanned<String>,
    inner: usize,
    message: impl Into<String>,
) -> PolicyError {
    src.error_at(src.offset_in_string(&s.span(), s.get_ref(), inner), message)
}

/// Host names the network rules (and lease grants) of a policy text
/// mention, sorted, without resolving them (for `corral policy show`);
/// empty when the text does not parse.
pub fn host_names(text: &str) -> Vec<String> {
    let Ok(raw) = toml::from_str::<RawPolicy>(text) else {
        return Vec::new();
    };
    let net = raw.network.unwrap_or_default();
    let grants = raw.leases.map(|l| l.grant).unwrap_or_default();
    let mut names: Vec<String> = [&net.allow, &net.deny, &net.bind]
        .into_iter()
        .chain(grants.iter().map(|g| &g.network))
        .flatten()
        .filter_map(|r| match rule::parse_rule(r.get_ref()).ok()?.target {
            Target::Host { name, .. } => Some(name),
            _ => None,
        })
        .collect();
    names.sort();
    names.dedup();
    names
}
