//! Per-identity rate limit on the agent socket: a token bucket per
//! identity, so one agent's request storm costs the others nothing and is
//! reported (as `lease` events, `action: rate-limited`, at most one per
//! identity per second, with the count refused since the last one).

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use serde_json::json;
use tokio::sync::broadcast;

use crate::{clock::now_rfc3339, event::Event};

pub struct RateLimit {
    per_sec: f64,
    burst: f64,
    buckets: Mutex<HashMap<String, Bucket>>,
    events: broadcast::Sender<Arc<Event>>,
}

struct Bucket {
    tokens: f64,
    last: Instant,
    refused_unreported: u64,
    refused_total: u64,
    last_report: Option<Instant>,
}

const REPORT_EVERY: Duration = Duration::from_secs(1);

impl RateLimit {
    /// `per_sec` requests per second, bursts of twice that.
    pub fn new(per_sec: u32, events: broadcast::Sender<Arc<Event>>) -> RateLimit {
        let per_sec = f64::from(per_sec.max(1));
        RateLimit {
            per_sec,
            burst: per_sec * 2.0,
            buckets: Mutex::new(HashMap::new()),
            events,
        }
    }

    /// Takes a token for `identity`, or says how long until one is free.
    pub fn take(&self, identity: &str) -> Result<(), Duration> {
        self.take_at(identity, Instant::now())
    }

    fn take_at(&self, identity: &str, now: Instant) -> Result<(), Duration> {
        let mut m = self.buckets.lock().expect("rate");
        let b = m.entry(identity.to_string()).or_insert(Bucket {
            tokens: self.burst,
            last: now,
            refused_unreported: 0,
            refused_total: 0,
            last_report: None,
        });
        let dt = now.saturating_duration_since(b.last).as_secs_f64();
        b.tokens = (b.tokens + dt * self.per_sec).min(self.burst);
        b.last = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            return Ok(());
        }
        b.refused_unreported += 1;
        b.refused_total += 1;
        if b.last_report
            .is_none_or(|t| now.saturating_duration_since(t) >= REPORT_EVERY)
        {
            let mut ev = Event::notice(crate::event::EventKind::Lease, now_rfc3339());
            ev.identity = Some(identity.to_string());
            ev.lease = Some(json!({
                "action": "rate-limited",
                "refused": b.refused_unreported,
                "refused_total": b.refused_total,
                "limit_per_sec": self.per_sec,
                "burst": self.burst,
            }));
            let _ = self.events.send(Arc::new(ev));
            b.last_report = Some(now);
            b.refused_unreported = 0;
        }
        Err(Duration::from_secs_f64((1.0 - b.tokens) / self.per_sec))
    }

    /// Requests refused so far, per identity (for `corral status`).
    pub fn refused(&self) -> HashMap<String, u64> {
        let m = self.buckets.lock().expect("rate");
        m.iter()
            .filter(|(_, b)| b.refused_total > 0)
            .map(|(k, b)| (k.clone(), b.refused_total))
            .collect()
    }

    pub fn per_sec(&self) -> f64 {
        self.per_sec
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bursts_then_refuses_and_reports_once_per_second() {
        let (tx, mut rx) = broadcast::channel(16);
        let r = RateLimit::new(5, tx);
        let t0 = Instant::now();
        for _ in 0..10 {
            r.take_at("a", t0).unwrap();
        }
        assert!(r.take_at("a", t0).is_err());
        assert!(r.take_at("a", t0).is_err());
        // Another identity has its own bucket.
        r.take_at("b", t0).unwrap();
        // One event for the two refusals within the same second.
        let ev = rx.try_recv().unwrap();
        assert_eq!(ev.identity.as_deref(), Some("a"));
        assert_eq!(ev.lease.as_ref().unwrap()["action"], "rate-limited");
        assert!(rx.try_recv().is_err());
        // Refilled at 5/s.
        r.take_at("a", t0 + Duration::from_millis(250)).unwrap();
        assert!(r.take_at("a", t0 + Duration::from_millis(250)).is_err());
        assert!(r.take_at("a", t0 + Duration::from_millis(1100)).is_ok());
        assert_eq!(r.refused()["a"], 3);
    }
}
