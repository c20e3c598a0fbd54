//! Host names in network rules: the daemon's resolver cache.
//!
//! Policy loads ask [`HostCache::for_load`] (the `resolve` function of
//! `policy::load_*`): a name seen before answers from the cache, a new one
//! is resolved with the system resolver there and then. A daemon task calls
//! [`HostCache::refresh`] every refresh interval (getaddrinfo gives no TTL,
//! so the interval stands in for it, clamped to a floor and a ceiling); when
//! an answer changes, the reloader re-applies the policy in force through
//! the same atomic path as every other reload (the compiled tables, hence
//! the identity's digest, change).
//!
//! A name that stops resolving keeps its last addresses for
//! [`Config::keep`] and is reported; after that it expires: its allow and
//! bind rules are dropped and its deny rules keep denying the last addresses
//! (fail closed both ways), until it resolves again.

use std::{
    collections::{BTreeMap, BTreeSet},
    io,
    net::{IpAddr, SocketAddr, ToSocketAddrs},
    sync::{Arc, Mutex},
    time::{Duration, Instant, SystemTime},
};

use serde::Serialize;
use tracing::{error, info, warn};

use crate::policy::HostExpired;

/// Refresh interval bounds. The floor can be lowered (never below 100 ms)
/// with `CORRAL_DNS_REFRESH_FLOOR` (e.g. `1s`), for tests only.
pub const REFRESH_FLOOR: Duration = Duration::from_secs(5);
pub const REFRESH_CEILING: Duration = Duration::from_secs(600);
pub const FLOOR_ENV: &str = "CORRAL_DNS_REFRESH_FLOOR";
/// Stale answers are kept for this many refresh intervals, at most an hour.
const KEEP_INTERVALS: u32 = 10;
const KEEP_MAX: Duration = Duration::from_secs(3600);

#[derive(Debug, Clone, Copy)]
pub struct Config {
    pub refresh: Duration,
    /// How long a name that stopped resolving keeps its last addresses.
    pub keep: Duration,
}

impl Config {
    /// Clamps a requested interval; says so in the log when it had to.
    pub fn new(requested: Duration) -> Config {
        let floor = std::env::var(FLOOR_ENV)
            .ok()
            .and_then(|v| humantime::parse_duration(&v).ok())
            .map_or(REFRESH_FLOOR, |d| d.max(Duration::from_millis(100)));
        let refresh = requested.clamp(floor, REFRESH_CEILING);
        if refresh != requested {
            warn!(
                requested = %humantime::format_duration(requested),
                used = %humantime::format_duration(refresh),
                "--dns-refresh clamped"
            );
        }
        Config {
            refresh,
            keep: (refresh * KEEP_INTERVALS).min(KEEP_MAX),
        }
    }
}

type Lookup = Box<dyn Fn(&str) -> io::Result<Vec<IpAddr>> + Send + Sync>;

/// The system resolver (getaddrinfo), answers canonical, sorted, unique.
pub fn system_lookup(host: &str) -> io::Result<Vec<IpAddr>> {
    let addrs = canonical((host, 0).to_socket_addrs()?.map(|sa: SocketAddr| sa.ip()));
    if addrs.is_empty() {
        return Err(io::Error::new(io::ErrorKind::NotFound, "no addresses"));
    }
    Ok(addrs)
}

fn canonical(addrs: impl IntoIterator<Item = IpAddr>) -> Vec<IpAddr> {
    let mut v: Vec<IpAddr> = addrs.into_iter().map(|a| a.to_canonical()).collect();
    v.sort();
    v.dedup();
    v
}

struct Entry {
    addrs: Vec<IpAddr>,
    last_ok: Instant,
    last_ok_wall: SystemTime,
    last_attempt_wall: SystemTime,
    /// Set while the name fails to resolve.
    failing: Option<Failing>,
    /// Past `keep`: rules using it are dropped (allow) or frozen (deny).
    expired: bool,
}

struct Failing {
    since_wall: SystemTime,
    error: String,
}

/// One host name as `corral policy show` reports it.
#[derive(Debug, Clone, Serialize)]
pub struct HostView {
    pub name: String,
    /// `ok`, `failing` (keeping its last addresses) or `expired` (allow
    /// rules dropped, deny rules keep the last addresses).
    pub state: &'static str,
    pub addresses: Vec<IpAddr>,
    /// Last successful resolution.
    pub resolved_at: String,
    pub last_attempt: String,
    pub error: Option<String>,
    pub failing_since: Option<String>,
    /// While failing: when the last addresses expire.
    pub keep_until: Option<String>,
    pub refresh_every: String,
}

pub struct HostCache {
    config: Config,
    lookup: Lookup,
    entries: Mutex<BTreeMap<String, Entry>>,
}

fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

impl HostCache {
    pub fn new(config: Config) -> Arc<HostCache> {
        Self::with_lookup(config, Box::new(system_lookup))
    }

    fn with_lookup(config: Config, lookup: Lookup) -> Arc<HostCache> {
        Arc::new(HostCache {
            config,
            lookup,
            entries: Mutex::default(),
        })
    }

    pub fn config(&self) -> Config {
        self.config
    }

    fn entries(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Entry>> {
        self.entries.lock().expect("dns cache lock")
    }

    /// The `resolve` function of a policy load that will be applied: cached
    /// names answer from the cache, new ones are resolved and remembered.
    /// Every name asked for is added to `used`.
    pub fn for_load(&self, host: &str, used: &Mutex<BTreeSet<String>>) -> io::Result<Vec<IpAddr>> {
        used.lock().expect("used lock").insert(host.to_string());
        self.answer(host, true)
    }

    /// For loads that are only looked at (`corral policy diff`): same
    /// answers, but a new name is not remembered.
    pub fn peek(&self, host: &str) -> io::Result<Vec<IpAddr>> {
        self.answer(host, false)
    }

    fn answer(&self, host: &str, remember: bool) -> io::Result<Vec<IpAddr>> {
        if let Some(e) = self.entries().get(host) {
            if e.expired {
                return Err(io::Error::other(HostExpired {
                    host: host.to_string(),
                    last: e.addrs.clone(),
                }));
            }
            return Ok(e.addrs.clone());
        }
        // Not under the lock: a resolver can take seconds.
        let addrs = (self.lookup)(host)?;
        let addrs = canonical(addrs);
        if remember && !addrs.is_empty() {
            let now = SystemTime::now();
            self.entries().entry(host.to_string()).or_insert(Entry {
                addrs: addrs.clone(),
                last_ok: Instant::now(),
                last_ok_wall: now,
                last_attempt_wall: now,
                failing: None,
                expired: false,
            });
        }
        Ok(addrs)
    }

    /// Forgets names the policy in force no longer uses.
    pub fn retain(&self, used: &BTreeSet<String>) {
        self.entries().retain(|name, _| used.contains(name));
    }

    /// Re-resolves every cached name (blocking). True when what the rules
    /// compile to changed: new addresses, an expiry, or a recovery.
    pub fn refresh(&self) -> bool {
        let names: Vec<String> = self.entries().keys().cloned().collect();
        let mut changed = false;
        for name in names {
            let answer = (self.lookup)(&name).map(canonical);
            let now = Instant::now();
            let wall = SystemTime::now();
            let mut entries = self.entries();
            // Dropped by a reload meanwhile.
            let Some(e) = entries.get_mut(&name) else {
                continue;
            };
            e.last_attempt_wall = wall;
            match answer {
                Ok(addrs) if !addrs.is_empty() => {
                    if e.failing.take().is_some() || e.expired {
                        info!(host = %name, ?addrs, "host name resolves again");
                    }
                    if addrs != e.addrs || e.expired {
                        info!(host = %name, old = ?e.addrs, new = ?addrs, "host name now resolves differently");
                        changed = true;
                    }
                    e.addrs = addrs;
                    e.expired = false;
                    e.last_ok = now;
                    e.last_ok_wall = wall;
                }
                answer => {
                    let why = match answer {
                        Err(err) => err.to_string(),
                        Ok(_) => "no addresses".to_string(),
                    };
                    if e.failing.is_none() {
                        warn!(
                            host = %name, error = %why, kept = ?e.addrs,
                            keep_for = %humantime::format_duration(self.config.keep),
                            "host name stopped resolving; keeping its last addresses for now"
                        );
                        e.failing = Some(Failing {
                            since_wall: wall,
                            error: why,
                        });
                    } else if let Some(f) = e.failing.as_mut() {
                        f.error = why;
                    }
                    if !e.expired && now.duration_since(e.last_ok) >= self.config.keep {
                        error!(
                            host = %name, last = ?e.addrs,
                            "host name has not resolved for {}: its allow rules are dropped, \
                             its deny rules keep the last addresses",
                            humantime::format_duration(self.config.keep)
                        );
                        e.expired = true;
                        changed = true;
                    }
                }
            }
        }
        changed
    }

    /// A name the policies use that resolves to `ip` now (the first in
    /// order) and all its addresses, for proposals that name hosts rather
    /// than addresses.
    pub fn name_of(&self, ip: IpAddr) -> Option<(String, Vec<IpAddr>)> {
        let ip = ip.to_canonical();
        self.entries()
            .iter()
            .find(|(_, e)| !e.expired && e.addrs.contains(&ip))
            .map(|(n, e)| (n.clone(), e.addrs.clone()))
    }

    /// What `name` resolves to now, if the cache knows it.
    pub fn view(&self, name: &str) -> Option<HostView> {
        let entries = self.entries();
        let e = entries.get(name)?;
        let keep_until = e
            .failing
            .as_ref()
            .filter(|_| !e.expired)
            .map(|_| rfc3339(e.last_ok_wall + self.config.keep));
        Some(HostView {
            name: name.to_string(),
            state: if e.expired {
                "expired"
            } else if e.failing.is_some() {
                "failing"
            } else {
                "ok"
            },
            addresses: e.addrs.clone(),
            resolved_at: rfc3339(e.last_ok_wall),
            last_attempt: rfc3339(e.last_attempt_wall),
            error: e.failing.as_ref().map(|f| f.error.clone()),
            failing_since: e.failing.as_ref().map(|f| rfc3339(f.since_wall)),
            keep_until,
            refresh_every: humantime::format_duration(self.config.refresh).to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    /// A resolver whose answer for `h.example` is set by the test (0 = fail).
    fn cache(keep: Duration) -> (Arc<HostCache>, Arc<AtomicU32>) {
        let last = Arc::new(AtomicU32::new(1));
        let l = last.clone();
        let lookup: Lookup = Box::new(move |_| match l.load(Ordering::SeqCst) {
            0 => Err(io::Error::new(io::ErrorKind::NotFound, "gone")),
            n => Ok(vec![IpAddr::from([10, 0, 0, n as u8])]),
        });
        let config = Config {
            refresh: Duration::from_millis(1),
            keep,
        };
        (HostCache::with_lookup(config, lookup), last)
    }

    fn expired(e: io::Error) -> Vec<IpAddr> {
        e.get_ref()
            .and_then(|i| i.downcast_ref::<HostExpired>())
            .expect("HostExpired")
            .last
            .clone()
    }

    #[test]
    fn answers_from_cache_until_refresh_sees_a_change() {
        let (c, addr) = cache(Duration::from_secs(60));
        let used = Mutex::default();
        assert_eq!(
            c.for_load("h.example", &used).unwrap(),
            [IpAddr::from([10, 0, 0, 1])]
        );
        addr.store(2, Ordering::SeqCst);
        // Loads keep the cached answer; only a refresh looks again.
        assert_eq!(
            c.for_load("h.example", &used).unwrap(),
            [IpAddr::from([10, 0, 0, 1])]
        );
        assert!(c.refresh());
        assert!(!c.refresh(), "same answer twice is no change");
        assert_eq!(c.peek("h.example").unwrap(), [IpAddr::from([10, 0, 0, 2])]);
        assert_eq!(used.lock().unwrap().len(), 1);
    }

    #[test]
    fn a_failing_name_keeps_its_addresses_then_expires_then_recovers() {
        let (c, addr) = cache(Duration::from_millis(50));
        c.for_load("h.example", &Mutex::default()).unwrap();
        addr.store(0, Ordering::SeqCst);
        assert!(!c.refresh(), "within the keep time nothing changes");
        assert_eq!(c.view("h.example").unwrap().state, "failing");
        assert_eq!(c.peek("h.example").unwrap(), [IpAddr::from([10, 0, 0, 1])]);
        std::thread::sleep(Duration::from_millis(60));
        assert!(c.refresh(), "expiry changes the rules");
        assert_eq!(c.view("h.example").unwrap().state, "expired");
        assert_eq!(
            expired(c.peek("h.example").unwrap_err()),
            [IpAddr::from([10, 0, 0, 1])]
        );
        assert!(!c.refresh());
        addr.store(3, Ordering::SeqCst);
        assert!(c.refresh(), "recovery changes the rules");
        assert_eq!(c.view("h.example").unwrap().state, "ok");
        assert_eq!(c.peek("h.example").unwrap(), [IpAddr::from([10, 0, 0, 3])]);
    }

    #[test]
    fn unknown_names_are_resolved_but_peek_does_not_remember() {
        let (c, _) = cache(Duration::from_secs(60));
        c.peek("h.example").unwrap();
        assert!(c.view("h.example").is_none());
        c.for_load("h.example", &Mutex::default()).unwrap();
        assert!(c.view("h.example").is_some());
        c.retain(&BTreeSet::new());
        assert!(c.view("h.example").is_none());
    }

    #[test]
    fn expired_names_drop_allow_rules_and_keep_denying() {
        let text = "[identity]\nname = \"t\"\n[network]\n\
                    allow = [\"tcp://h.example:443\", \"tcp://10.0.0.0/8:80\"]\n\
                    deny = [\"tcp://h.example:22\"]\n";
        let resolve = |h: &str| {
            Err(io::Error::other(HostExpired {
                host: h.to_string(),
                last: vec![IpAddr::from([10, 0, 0, 1])],
            }))
        };
        let p = crate::policy::parse_str(std::path::Path::new("t.toml"), text, &resolve)
            .unwrap_or_else(|e| panic!("{e}"));
        let rules: Vec<String> = p.network.rules.iter().map(|r| r.describe()).collect();
        assert_eq!(
            rules,
            [
                "allow tcp://10.0.0.0/8:80 (t.toml:4:34)",
                "deny tcp://h.example:22 [10.0.0.1] (t.toml:5:10)"
            ]
        );
    }

    #[test]
    fn refresh_interval_is_clamped() {
        // Only meaningful without the test override in the environment.
        if std::env::var_os(FLOOR_ENV).is_some() {
            return;
        }
        assert_eq!(Config::new(Duration::from_secs(1)).refresh, REFRESH_FLOOR);
        assert_eq!(
            Config::new(Duration::from_secs(86400)).refresh,
            REFRESH_CEILING
        );
        let c = Config::new(Duration::from_secs(30));
        assert_eq!(
            (c.refresh, c.keep),
            (Duration::from_secs(30), Duration::from_secs(300))
        );
        assert_eq!(Config::new(Duration::from_secs(600)).keep, KEEP_MAX);
    }
}
