//! `[leases]` and `[anomaly]`: the scopes an identity may hold as
//! short-lived credential leases, what each scope grants in the kernel while
//! a lease lives, and the response to a burst of denials.
//!
//! Grant rules use the `[network] allow` grammar. They are checked at load
//! time as if every grant were active at once (so issuing a lease can never
//! overflow a prefix's rule list), and [`with_grants`] adds the grants of the
//! live leases to an identity's rules, each with its lease's expiry, which
//! the kernel compares with `CLOCK_BOOTTIME` on every decision.

mod grants;
#[cfg(test)]
mod tests;

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Duration;

use serde::Serialize;
use toml::Spanned;

use super::error::{PolicyError, Source};
use super::files::check_file_path;
use super::raw::{RawAnomaly, RawGrant, RawLeases, RawRotate};
use super::{IdentityPolicy, NetRule, Origin};

pub(crate) use grants::check_fit;
pub use grants::{LiveGrant, with_grants};

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

    let (declared, scopes) = declared_scopes(src, &raw.scopes, errors);
    let approval = scope_refs(src, &raw.approval, &declared, "`approval`", errors);

    let grants = build_grants(src, &raw.grant, &declared, build_allow, errors);
    let rotate = raw
        .rotate
        .as_ref()
        .map(|r| build_rotate(src, r, &declared, &approval, max_ttl, errors));
    LeasePolicy {
        max_ttl_s: max_ttl.as_secs().max(1),
        scopes,
        approval,
        approval_timeout_s: approval_timeout.as_secs().max(1),
        grants,
        rotate,
    }
}

/// `[leases] scopes`: each valid and listed once.
fn declared_scopes(
    src: &Source<'_>,
    raw: &[Spanned<String>],
    errors: &mut Vec<PolicyError>,
) -> (BTreeSet<String>, Vec<String>) {
    let mut declared = BTreeSet::new();
    let mut scopes = Vec::new();
    for s in raw {
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
    (declared, scopes)
}

/// `[[leases.grant]]`: each for a declared scope, network rules and file
/// paths with the grammar and limits of `[network]` and `[files]`.
fn build_grants(
    src: &Source<'_>,
    raw: &[RawGrant],
    declared: &BTreeSet<String>,
    build_allow: &mut BuildAllow<'_>,
    errors: &mut Vec<PolicyError>,
) -> Vec<Grant> {
    let mut grants = Vec::new();
    let mut written = 0usize;
    for g in raw {
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
        // Network rules and file paths share a lease's rule ids.
        written += g.network.len() + g.files.as_ref().map_or(0, |f| f.read.len() + f.write.len());
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
            origin: src.origin(&g.scope),
        });
    }
    if written >= GRANT_IDS_PER_LEASE as usize
        && let Some(g) = raw.last()
    {
        errors.push(at(
            src,
            &g.scope,
            format!(
                "{written} grant rules (network rules and file paths) in all; at most {} fit one \
                 lease",
                GRANT_IDS_PER_LEASE - 1
            ),
        ));
    }

    grants
}

/// `[leases.rotate]`: scopes that need no approval, a ttl within
/// `max_ttl`, an absolute token path and an owner.
fn build_rotate(
    src: &Source<'_>,
    r: &RawRotate,
    declared: &BTreeSet<String>,
    approval: &[String],
    max_ttl: Duration,
    errors: &mut Vec<PolicyError>,
) -> Rotate {
    let scopes = scope_refs(src, r.scopes.get_ref(), declared, "`rotate`", errors);
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
    let owner = r
        .owner
        .as_ref()
        .and_then(|o| match token_owner(o.get_ref()) {
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
