//! `[leases]` and `[anomaly]`: the scopes an identity may hold as
//! short-lived credential leases, what each scope grants in the kernel while
//! a lease lives, and the response to a burst of denials.
//!
//! Grant rules use the `[network] allow` grammar. They are checked at load
//! time as if every grant were active at once (so issuing a lease can never
//! overflow a prefix's rule list), and [`with_grants`] adds the grants of the
//! live leases to an identity's rules, each with its lease's expiry, which
//! the kernel compares with `CLOCK_BOOTTIME` on every decision.

use std::collections::{BTreeSet, HashMap};
use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Duration;

use serde::Serialize;
use toml::Spanned;

use super::compile::{compile_network, compile_worst_case, digest};
use super::error::{PolicyError, PolicyErrors, Source};
use super::files::{ACCESS_EXEC, ACCESS_READ, ACCESS_WRITE, FileList, FileRule, check_file_path};
use super::raw::{RawAnomaly, RawLeases};
use super::{Action, IdentityPolicy, NetRule, NetTables, Origin};

/// Rule ids of grant rules start here, far above any policy's own ids, so an
/// id in an event or a kernel map says "lease grant" by itself.
pub const GRANT_RULE_BASE: u32 = 0x8000_0000;
/// Ids per live lease: lease slot `s` uses `BASE + s * 256 + 1 ..= + 255`.
pub const GRANT_IDS_PER_LEASE: u32 = 256;
/// Live leases per identity whose grants fit the id space above.
pub const MAX_LIVE_LEASES: usize = ((u32::MAX - GRANT_RULE_BASE) / GRANT_IDS_PER_LEASE) as usize;

const DEFAULT_MAX_TTL: Duration = Duration::from_secs(15 * 60);
const DEFAULT_APPROVAL_TIMEOUT: Duration = Duration::from_secs(5 * 60);
const LONGEST_TTL: Duration = Duration::from_secs(24 * 3600);

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LeasePolicy {
    /// Longest lifetime of a lease, counted from its issue (renewals
    /// included), in seconds.
    pub max_ttl_s: u64,
    pub scopes: Vec<String>,
    /// Scopes that stay pending until an operator approves.
    pub approval: Vec<String>,
    /// A pending request is denied when nobody decided within this, seconds.
    pub approval_timeout_s: u64,
    pub grants: Vec<Grant>,
    pub rotate: Option<Rotate>,
}

impl LeasePolicy {
    pub fn needs_approval(&self, scope: &str) -> bool {
        self.approval.iter().any(|s| s == scope)
    }

    pub fn grants_of<'a>(&'a self, scope: &'a str) -> impl Iterator<Item = &'a Grant> + 'a {
        self.grants.iter().filter(move |g| g.scope == scope)
    }
}

/// What holding `scope` adds while a lease lives.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Grant {
    pub scope: String,
    /// Allow rules (ids local to this grant, 1..); the daemon gives them
    /// lease-specific ids when it adds them.
    pub network: Vec<NetRule>,
    /// File grants (`[files]` paths: a trailing `/` covers what is beneath).
    /// Enforced by the BPF LSM layer only, which ends them on time; the
    /// Landlock fallback never grants them.
    pub files_read: Vec<String>,
    pub files_write: Vec<String>,
    pub origin: Origin,
}

/// The daemon keeps a current token for this identity in a file, issued
/// again at half its lifetime.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Rotate {
    pub scopes: Vec<String>,
    pub ttl_s: u64,
    /// Default: `<state-dir>/tokens/<identity>.jwt`.
    pub path: Option<PathBuf>,
    /// The user the agent runs as (`corral run --user`): the token file is
    /// given to it (mode 0400) so a non-root agent can read its own token.
    /// Without it the file is root's (0600).
    pub owner: Option<TokenOwner>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TokenOwner {
    /// As written (a user name or a uid).
    pub name: String,
    pub uid: u32,
    pub gid: u32,
}

/// A user name or uid, resolved when the policy is loaded, or `UID:GID`
/// (numbers, no lookup: users that exist only in a container or a guest).
fn token_owner(spec: &str) -> Result<TokenOwner, String> {
    use nix::unistd::{Uid, User};
    if let Some((u, g)) = spec.split_once(':') {
        return match (u.parse::<u32>(), g.parse::<u32>()) {
            (Ok(uid), Ok(gid)) => Ok(TokenOwner {
                name: spec.to_string(),
                uid,
                gid,
            }),
            _ => Err(format!(
                "token owner `{spec}`: write a user name, a uid, or UID:GID in numbers"
            )),
        };
    }
    let user = match spec.parse::<u32>() {
        Ok(uid) => User::from_uid(Uid::from_raw(uid)),
        Err(_) => User::from_name(spec),
    }
    .map_err(|e| format!("looking up token owner `{spec}`: {e}"))?
    .ok_or_else(|| format!("token owner `{spec}` is not a user on this host"))?;
    Ok(TokenOwner {
        name: spec.to_string(),
        uid: user.uid.as_raw(),
        gid: user.gid.as_raw(),
    })
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AnomalyPolicy {
    /// More than this many denials within `window` trips the response.
    pub max_denials: u32,
    pub window_ms: u64,
    pub actions: Vec<AnomalyAction>,
}

impl AnomalyPolicy {
    pub fn has(&self, a: AnomalyAction) -> bool {
        self.actions.contains(&a)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum AnomalyAction {
    Alert,
    RevokeLeases,
    Freeze,
}

impl AnomalyAction {
    pub fn name(self) -> &'static str {
        match self {
            AnomalyAction::Alert => "alert",
            AnomalyAction::RevokeLeases => "revoke-leases",
            AnomalyAction::Freeze => "freeze",
        }
    }
}

/// Builds grant rules from a list in the `[network] allow` grammar; returns
/// the rules and the errors found.
pub(crate) type BuildAllow<'b> =
    dyn FnMut(&[Spanned<String>]) -> (Vec<NetRule>, Vec<PolicyError>) + 'b;

/// Checks `[leases]` and `[anomaly]`, collecting every error.
pub(crate) fn build(
    src: &Source<'_>,
    raw: Option<&RawLeases>,
    raw_anomaly: Option<&RawAnomaly>,
    build_allow: &mut BuildAllow<'_>,
    errors: &mut Vec<PolicyError>,
) -> (Option<LeasePolicy>, Option<AnomalyPolicy>) {
    let leases = raw.map(|r| build_leases(src, r, build_allow, errors));
    let anomaly = raw_anomaly.map(|a| build_anomaly(src, a, errors));
    (leases, anomaly)
}

fn at(src: &Source<'_>, s: &Spanned<String>, message: impl Into<String>) -> PolicyError {
    src.error_at(src.offset_in_string(&s.span(), s.get_ref(), 0), message)
}

fn origin(src: &Source<'_>, s: &Spanned<String>) -> Origin {
    let (line, col) = src.line_col(src.offset_in_string(&s.span(), s.get_ref(), 0));
    Origin {
        file: src.file.to_path_buf(),
        line,
        col,
    }
}

/// A duration like `15m` or `90s`, whole seconds, within `lo..=hi`.
fn duration(
    src: &Source<'_>,
    s: &Spanned<String>,
    what: &str,
    lo: Duration,
    hi: Duration,
    errors: &mut Vec<PolicyError>,
) -> Option<Duration> {
    match humantime::parse_duration(s.get_ref()) {
        Ok(d) if d < lo || d > hi => {
            errors.push(at(
                src,
                s,
                format!(
                    "{what} `{}` is out of range: between {} and {}",
                    s.get_ref(),
                    humantime::format_duration(lo),
                    humantime::format_duration(hi)
                ),
            ));
            None
        }
        Ok(d) => Some(d),
        Err(e) => {
            errors.push(at(
                src,
                s,
                format!("bad {what} `{}`: {e} (e.g. `15m`, `90s`)", s.get_ref()),
            ));
            None
        }
    }
}

/// Scope names: 1 to 64 of `A-Za-z0-9` and `:._-`, e.g. `refunds:issue`.
fn check_scope(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b":._-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "bad scope `{name}`: 1 to 64 characters of A-Z, a-z, 0-9, `:`, `.`, `_` and `-`"
        ))
    }
}

/// Checks a list of scope references against the declared scopes.
fn scope_refs(
    src: &Source<'_>,
    list: &[Spanned<String>],
    declared: &BTreeSet<String>,
    what: &str,
    errors: &mut Vec<PolicyError>,
) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for s in list {
        let name = s.get_ref();
        if !declared.contains(name) {
            errors.push(at(
                src,
                s,
                format!("{what} names scope `{name}`, which `[leases] scopes` does not list"),
            ));
        } else if out.contains(name) {
            errors.push(at(src, s, format!("scope `{name}` is listed twice")));
        } else {
            out.push(name.clone());
        }
    }
    out
}

fn build_leases(
    src: &Source<'_>,
    raw: &RawLeases,
    build_allow: &mut BuildAllow<'_>,
    errors: &mut Vec<PolicyError>,
) -> LeasePolicy {
    let one = Duration::from_secs(1);
    let max_ttl = raw
        .max_ttl
        .as_ref()
        .and_then(|s| duration(src, s, "max_ttl", one, LONGEST_TTL, errors))
        .unwrap_or(DEFAULT_MAX_TTL);
    let approval_timeout = raw
        .approval_timeout
        .as_ref()
        .and_then(|s| duration(src, s, "approval_timeout", one, LONGEST_TTL, errors))
        .unwrap_or(DEFAULT_APPROVAL_TIMEOUT);

    let mut declared = BTreeSet::new();
    let mut scopes = Vec::new();
    for s in &raw.scopes {
        match check_scope(s.get_ref()) {
            Err(m) => errors.push(at(src, s, m)),
            Ok(()) if !declared.insert(s.get_ref().clone()) => {
                errors.push(at(
                    src,
                    s,
                    format!("scope `{}` is listed twice", s.get_ref()),
                ));
            }
            Ok(()) => scopes.push(s.get_ref().clone()),
        }
    }
    let approval = scope_refs(src, &raw.approval, &declared, "`approval`", errors);

    let mut grants = Vec::new();
    let mut written = 0usize;
    for g in &raw.grant {
        if !declared.contains(g.scope.get_ref()) {
            errors.push(at(
                src,
                &g.scope,
                format!(
                    "grant for scope `{}`, which `[leases] scopes` does not list",
                    g.scope.get_ref()
                ),
            ));
        }
        written += g.network.len();
        let (network, errs) = build_allow(&g.network);
        errors.extend(errs);
        let (mut files_read, mut files_write) = (Vec::new(), Vec::new());
        if let Some(f) = &g.files {
            for (list, out) in [(&f.read, &mut files_read), (&f.write, &mut files_write)] {
                for p in list {
                    // The `[files]` grammar and limits, so a grant fits the
                    // kernel's path table whenever it is issued.
                    match check_file_path(p.get_ref()) {
                        Ok(_) => out.push(p.get_ref().clone()),
                        Err((i, message)) => errors.push(src.error_at(
                            src.offset_in_string(&p.span(), p.get_ref(), i),
                            format!("file grant: {message}"),
                        )),
                    }
                }
            }
        }
        grants.push(Grant {
            scope: g.scope.get_ref().clone(),
            network,
            files_read,
            files_write,
            origin: origin(src, &g.scope),
        });
    }
    if written >= GRANT_IDS_PER_LEASE as usize
        && let Some(g) = raw.grant.last()
    {
        errors.push(at(
            src,
            &g.scope,
            format!(
                "{written} grant network rules in all; at most {} fit one lease",
                GRANT_IDS_PER_LEASE - 1
            ),
        ));
    }

    let rotate = raw.rotate.as_ref().map(|r| {
        let scopes = scope_refs(src, r.scopes.get_ref(), &declared, "`rotate`", errors);
        for s in r.scopes.get_ref() {
            if approval.contains(s.get_ref()) {
                errors.push(at(
                    src,
                    s,
                    format!(
                        "scope `{}` needs approval, so it cannot be rotated automatically",
                        s.get_ref()
                    ),
                ));
            }
        }
        if r.scopes.get_ref().is_empty() {
            errors.push(src.error_at(
                r.scopes.span().start,
                "`[leases.rotate] scopes` needs at least one scope",
            ));
        }
        let ttl = r
            .ttl
            .as_ref()
            .and_then(|s| {
                duration(
                    src,
                    s,
                    "rotate ttl",
                    Duration::from_secs(2),
                    max_ttl,
                    errors,
                )
            })
            .unwrap_or(max_ttl);
        let path = r.path.as_ref().and_then(|p| {
            if p.get_ref().starts_with('/') && !p.get_ref().ends_with('/') {
                Some(PathBuf::from(p.get_ref()))
            } else {
                errors.push(at(src, p, "token path must be an absolute file path"));
                None
            }
        });
        let owner = r.owner.as_ref().and_then(|o| match token_owner(o.get_ref()) {
            Ok(t) => Some(t),
            Err(message) => {
                errors.push(at(src, o, message));
                None
            }
        });
        Rotate {
            scopes,
            ttl_s: ttl.as_secs().max(2),
            path,
            owner,
        }
    });
    LeasePolicy {
        max_ttl_s: max_ttl.as_secs().max(1),
        scopes,
        approval,
        approval_timeout_s: approval_timeout.as_secs().max(1),
        grants,
        rotate,
    }
}

fn build_anomaly(
    src: &Source<'_>,
    raw: &RawAnomaly,
    errors: &mut Vec<PolicyError>,
) -> AnomalyPolicy {
    let n = *raw.max_denials.get_ref();
    let max_denials = match u32::try_from(n) {
        Ok(v) if v >= 1 => v,
        _ => {
            errors.push(src.error_at(
                raw.max_denials.span().start,
                format!("max_denials {n} must be between 1 and {}", u32::MAX),
            ));
            1
        }
    };
    let window = duration(
        src,
        &raw.window,
        "window",
        Duration::from_millis(100),
        Duration::from_secs(3600),
        errors,
    )
    .unwrap_or(Duration::from_secs(60));
    let mut actions = Vec::new();
    for a in &raw.actions {
        let act = match a.get_ref().as_str() {
            "alert" => AnomalyAction::Alert,
            "revoke-leases" => AnomalyAction::RevokeLeases,
            "freeze" => AnomalyAction::Freeze,
            other => {
                errors.push(at(
                    src,
                    a,
                    format!("bad action `{other}`: expected `alert`, `revoke-leases` or `freeze`"),
                ));
                continue;
            }
        };
        if actions.contains(&act) {
            errors.push(at(
                src,
                a,
                format!("action `{}` is listed twice", a.get_ref()),
            ));
        } else {
            actions.push(act);
        }
    }
    if raw.actions.is_empty() {
        actions.push(AnomalyAction::Alert);
    }
    AnomalyPolicy {
        max_denials,
        window_ms: window.as_millis() as u64,
        actions,
    }
}

/// Every grant active at once must compile: the kernel's per-prefix limit
/// is checked here, at load time, rather than when a lease is issued. Grant
/// rules are compiled as expiring rules that never hide one another, the
/// largest lists any set of live leases can produce (several leases of one
/// scope collapse to one entry per rule: the later-expiring hides the rest).
pub(crate) fn check_fit(p: &IdentityPolicy) -> Result<(), PolicyErrors> {
    let Some(lp) = &p.leases else {
        return Ok(());
    };
    if lp.grants.iter().all(|g| g.network.is_empty()) {
        return Ok(());
    }
    let all = LiveGrant {
        lease: "check".into(),
        scopes: lp.scopes.clone(),
        expires_ns: u64::MAX,
    };
    let probe = add_grants(p, std::slice::from_ref(&all), 0);
    compile_worst_case(&probe)
        .map(|_| ())
        .map_err(|PolicyErrors(es)| {
            PolicyErrors(
                es.into_iter()
                    .map(|mut e| {
                        e.message = format!("with every [[leases.grant]] active: {}", e.message);
                        e
                    })
                    .collect(),
            )
        })
}

/// One live lease of an identity, as the kernel rules need it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LiveGrant {
    pub lease: String,
    pub scopes: Vec<String>,
    /// `CLOCK_BOOTTIME` nanoseconds at which the lease ends.
    pub expires_ns: u64,
}

/// The grant rule behind a rule id: (lease slot, rule index in the lease).
#[cfg(test)]
fn grant_slot(rule_id: u32) -> Option<(u32, u32)> {
    let off = rule_id.checked_sub(GRANT_RULE_BASE)?;
    Some((off / GRANT_IDS_PER_LEASE, off % GRANT_IDS_PER_LEASE))
}

fn add_grants(base: &IdentityPolicy, live: &[LiveGrant], now_boot_ns: u64) -> IdentityPolicy {
    let mut p = base.clone();
    let Some(lp) = &base.leases else {
        return p;
    };
    let live = live.iter().filter(|g| g.expires_ns > now_boot_ns);
    for (slot, g) in live.take(MAX_LIVE_LEASES).enumerate() {
        let first = GRANT_RULE_BASE + slot as u32 * GRANT_IDS_PER_LEASE;
        let mut next = 0u32;
        for scope in &g.scopes {
            for grant in lp.grants_of(scope) {
                // Rules written once but expanded (`*`, host names) share an id.
                let mut ids: HashMap<u32, u32> = HashMap::new();
                for r in &grant.network {
                    let id = *ids.entry(r.id).or_insert_with(|| {
                        next += 1;
                        first + next.min(GRANT_IDS_PER_LEASE - 1)
                    });
                    let mut r = r.clone();
                    r.id = id;
                    r.text = format!("{} [lease {} scope {}]", r.text, g.lease, scope);
                    p.network.expires.insert(id, g.expires_ns);
                    p.network.rules.push(r);
                }
                if p.files.confined {
                    for rule in file_grants(grant, &p.files, &g.lease, scope) {
                        next += 1;
                        let id = first + next.min(GRANT_IDS_PER_LEASE - 1);
                        p.files.expires.insert(id, g.expires_ns);
                        p.files.rules.push(FileRule { id, ..rule });
                    }
                }
            }
        }
    }
    p
}

/// A grant's file paths as `[files]` rules (id 0: the caller numbers them),
/// with the access bits a written `read`/`write` rule would carry.
fn file_grants(grant: &Grant, files: &super::FilePolicy, lease: &str, scope: &str) -> Vec<FileRule> {
    let exec = if files.exec_restricted { 0 } else { ACCESS_EXEC };
    let lists = [
        (&grant.files_read, FileList::Read, ACCESS_READ | exec),
        (
            &grant.files_write,
            FileList::Write,
            ACCESS_READ | ACCESS_WRITE | exec,
        ),
    ];
    let mut out = Vec::new();
    for (paths, list, access) in lists {
        for path in paths {
            out.push(FileRule {
                id: 0,
                path: path.clone(),
                beneath: path.ends_with('/'),
                access,
                action: Action::Allow,
                list,
                text: format!("{path} [lease {lease} scope {scope}]"),
                origin: grant.origin.clone(),
            });
        }
    }
    out
}

/// `base` with the grants of the leases in `live` (those not yet ended at
/// `now_boot_ns`), compiled, with its digest updated. Lease slots follow the
/// order of `live`.
pub fn with_grants(
    base: &IdentityPolicy,
    live: &[LiveGrant],
    now_boot_ns: u64,
) -> Result<(IdentityPolicy, NetTables), PolicyErrors> {
    let mut p = add_grants(base, live, now_boot_ns);
    let tables = compile_network(&p)?;
    if p.network.expires.len() != base.network.expires.len()
        || p.files.expires.len() != base.files.expires.len()
    {
        // The written policy's digest covers every section; the grants
        // change the network tables and the file rules, which `digest`
        // covers.
        p.digest =
            base.digest.rotate_left(29) ^ digest(&p, &tables).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
    Ok((p, tables))
}

/// What of `[leases]` and `[anomaly]` the digest covers: everything but
/// positions (moving a line is not a change).
pub(crate) fn fingerprint(p: &IdentityPolicy) -> String {
    let mut s = String::new();
    if let Some(l) = &p.leases {
        let _ = write!(
            s,
            "leases {} {:?} {:?} {};",
            l.max_ttl_s, l.scopes, l.approval, l.approval_timeout_s
        );
        for g in &l.grants {
            let _ = write!(
                s,
                "grant {} {:?} {:?};",
                g.scope, g.files_read, g.files_write
            );
            for r in &g.network {
                let _ = write!(
                    s,
                    "{} {:?} {}/{} {}-{};",
                    r.id, r.proto, r.addr, r.prefix_len, r.port_lo, r.port_hi
                );
            }
        }
        if let Some(r) = &l.rotate {
            let owner = r.owner.as_ref().map(|o| (o.uid, o.gid));
            let _ = write!(
                s,
                "rotate {:?} {} {:?} {owner:?};",
                r.scopes, r.ttl_s, r.path
            );
        }
    }
    if let Some(a) = &p.anomaly {
        let _ = write!(
            s,
            "anomaly {} {} {:?};",
            a.max_denials, a.window_ms, a.actions
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use agent_common::net::{ACTION_ALLOW, CLASS_TCP};

    use super::super::{Action, decide, parse_str};
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
        let o = p.leases.and_then(|l| l.rotate).and_then(|r| r.owner).expect("owner");
        assert_eq!((o.uid, o.gid), (0, 0));
        let p = rotate("1234:5678").expect("numbers need no lookup");
        let o = p.leases.and_then(|l| l.rotate).and_then(|r| r.owner).expect("owner");
        assert_eq!((o.uid, o.gid), (1234, 5678));
        let e = rotate("no-such-user-here").expect_err("unknown").to_string();
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
        assert!(e.contains("file grant: file path `/srv//x/` is not normalised"), "{e}");
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
        let (_, t) =
            with_grants(&p, &[lease("a", 5_000), lease("b", 9_000)], 1_000).expect("compiles");
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
}
