//! Prometheus metrics (text exposition format 0.0.4): `GET /metrics` on the
//! control socket, and with `--metrics-listen ADDR:PORT` on a TCP listener
//! that serves nothing else. Counts that exist only as events (per identity,
//! kind and verdict; reloads; lease and anomaly actions) are kept by a
//! subscriber of the event hub; the rest is read when scraped. Labels are
//! bounded: identities come from policy files, kinds and actions from fixed
//! lists, programs from Corral's own program names.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    sync::{Arc, Mutex},
};

use serde_json::Value;
use tokio::sync::broadcast;

use crate::event::{Event, EventKind};

/// Upper bounds (seconds) of the reload duration histogram.
const RELOAD_BUCKETS: [f64; 10] = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0];

#[derive(Default)]
struct Counts {
    events: BTreeMap<(String, String, String), u64>,
    reloads_ok: u64,
    reloads_failed: u64,
    reload_buckets: [u64; RELOAD_BUCKETS.len()],
    reload_sum_s: f64,
    lease_actions: BTreeMap<String, u64>,
    anomaly_actions: BTreeMap<(String, String), u64>,
    rate_limited: BTreeMap<String, u64>,
    operator_actions: BTreeMap<String, u64>,
    missed: u64,
}

#[derive(Default)]
pub struct Metrics {
    counts: Mutex<Counts>,
}

impl Metrics {
    /// Counts what the hub carries, for as long as the daemon runs.
    pub async fn run(self: Arc<Self>, mut rx: broadcast::Receiver<Arc<Event>>) {
        loop {
            match rx.recv().await {
                Ok(ev) => self.count(&ev),
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    self.counts.lock().expect("metrics").missed += n;
                }
                Err(broadcast::error::RecvError::Closed) => return,
            }
        }
    }

    fn count(&self, ev: &Event) {
        let mut c = self.counts.lock().expect("metrics");
        let identity = ev.identity.clone().unwrap_or_default();
        match ev.kind {
            EventKind::Policy => {
                let p = ev.policy.as_ref().cloned().unwrap_or(Value::Null);
                if p["ok"] == true {
                    c.reloads_ok += 1;
                } else {
                    c.reloads_failed += 1;
                }
                let s = p["duration_ms"].as_f64().unwrap_or(0.0) / 1000.0;
                c.reload_sum_s += s;
                for (i, b) in RELOAD_BUCKETS.iter().enumerate() {
                    if s <= *b {
                        c.reload_buckets[i] += 1;
                    }
                }
            }
            EventKind::Lease => {
                let l = ev.lease.as_ref().cloned().unwrap_or(Value::Null);
                let action = l["action"].as_str().unwrap_or("other").to_string();
                if action == "rate-limited" {
                    *c.rate_limited.entry(identity).or_default() +=
                        l["refused"].as_u64().unwrap_or(1);
                } else {
                    *c.lease_actions.entry(action).or_default() += 1;
                }
            }
            EventKind::Anomaly => {
                let a = ev.anomaly.as_ref().cloned().unwrap_or(Value::Null);
                let action = a["action"].as_str().unwrap_or("other").to_string();
                *c.anomaly_actions.entry((identity, action)).or_default() += 1;
            }
            EventKind::Operator => {
                let o = ev.operator.as_ref().cloned().unwrap_or(Value::Null);
                let result = match o["status"].as_u64() {
                    Some(s) if s < 400 => "ok",
                    _ => "error",
                };
                *c.operator_actions.entry(result.to_string()).or_default() += 1;
            }
            EventKind::Lost | EventKind::Audit => {}
            kind => {
                let verdict = ev.verdict.map_or("", |v| v.name()).to_string();
                *c.events
                    .entry((identity, kind.name().to_string(), verdict))
                    .or_default() += 1;
            }
        }
    }

    /// The exposition: the counts kept here plus `status` (the daemon's
    /// status JSON) and `identities` (its identity list), read per scrape.
    pub fn render(&self, status: &Value, identities: &[Value]) -> String {
        let mut o = Out::default();
        let c = self.counts.lock().expect("metrics");
        events(&mut o, &c, status);
        reloads(&mut o, &c, status);
        identity_families(&mut o, identities);
        leases(&mut o, &c, status);
        audit(&mut o, status);
        sockets(&mut o, status);
        drop(c);
        programs(&mut o);
        o.0
    }
}

/// Judged events and the event pipeline's own counts.
fn events(o: &mut Out, c: &Counts, status: &Value) {
    o.family(
        "corral_events_total",
        "counter",
        "Judged events (denials, audits, kills, self-protection) by identity, kind and verdict.",
    );
    for ((i, k, v), n) in &c.events {
        o.sample(
            "corral_events_total",
            &[("identity", i), ("kind", k), ("verdict", v)],
            *n as f64,
        );
    }
    let e = &status["events"];
    o.one(
        "corral_kernel_events_lost_total",
        "counter",
        "Events the kernel could not queue (ring buffer full).",
        num(&e["kernel_lost"]),
    );
    o.one(
        "corral_events_received_total",
        "counter",
        "Records read from the kernel ring buffer.",
        num(&e["received"]),
    );
    o.one(
        "corral_event_decode_errors_total",
        "counter",
        "Ring buffer records that did not decode.",
        num(&e["decode_errors"]),
    );
    o.one(
        "corral_event_subscribers",
        "gauge",
        "Open event stream subscribers.",
        num(&e["subscribers"]),
    );
    o.one(
        "corral_metrics_events_missed_total",
        "counter",
        "Events the metrics counter fell behind on (not counted above).",
        c.missed as f64,
    );
}

/// Policy reloads: results, duration histogram, generation.
fn reloads(o: &mut Out, c: &Counts, status: &Value) {
    o.family(
        "corral_reloads_total",
        "counter",
        "Policy reloads by result.",
    );
    o.sample(
        "corral_reloads_total",
        &[("result", "ok")],
        c.reloads_ok as f64,
    );
    o.sample(
        "corral_reloads_total",
        &[("result", "error")],
        c.reloads_failed as f64,
    );
    o.family(
        "corral_reload_duration_seconds",
        "histogram",
        "Parse, compile and apply time of policy reloads.",
    );
    for (i, b) in RELOAD_BUCKETS.iter().enumerate() {
        o.sample(
            "corral_reload_duration_seconds_bucket",
            &[("le", &b.to_string())],
            c.reload_buckets[i] as f64,
        );
    }
    let total = (c.reloads_ok + c.reloads_failed) as f64;
    o.sample(
        "corral_reload_duration_seconds_bucket",
        &[("le", "+Inf")],
        total,
    );
    o.sample("corral_reload_duration_seconds_sum", &[], c.reload_sum_s);
    o.sample("corral_reload_duration_seconds_count", &[], total);
    o.one(
        "corral_policy_generation",
        "gauge",
        "Successful applies since the daemon started.",
        num(&status["reload"]["generation"]),
    );
}

/// Identities in force: processes, rules, kernel entries.
fn identity_families(o: &mut Out, identities: &[Value]) {
    o.one(
        "corral_identities",
        "gauge",
        "Identities in force.",
        identities.len() as f64,
    );
    o.family(
        "corral_identity_processes",
        "gauge",
        "Processes in an identity's cgroups.",
    );
    for v in identities {
        o.sample(
            "corral_identity_processes",
            &[("identity", v["name"].as_str().unwrap_or(""))],
            num(&v["processes"]),
        );
    }
    o.family(
        "corral_identity_rules",
        "gauge",
        "Rules as written in an identity's policy, by section.",
    );
    for v in identities {
        let name = v["name"].as_str().unwrap_or("");
        for (section, n) in v["rules"].as_object().into_iter().flatten() {
            o.sample(
                "corral_identity_rules",
                &[("identity", name), ("section", section)],
                num(n),
            );
        }
    }
    o.family(
        "corral_identity_kernel_entries",
        "gauge",
        "Kernel map entries of an identity's rules, by map.",
    );
    for v in identities {
        let name = v["name"].as_str().unwrap_or("");
        if let Some(m) = v["kernel_entries"].as_object() {
            for (map, n) in m.iter().filter(|(k, _)| *k != "ruleset") {
                if let Some(n) = n.as_f64() {
                    o.sample(
                        "corral_identity_kernel_entries",
                        &[("identity", name), ("map", map)],
                        n,
                    );
                }
            }
        }
    }
}

/// Leases, the agent socket's rate limit, anomaly and operator actions.
fn leases(o: &mut Out, c: &Counts, status: &Value) {
    let l = &status["leases"];
    o.family("corral_leases", "gauge", "Leases by state.");
    o.sample("corral_leases", &[("state", "active")], num(&l["active"]));
    o.sample("corral_leases", &[("state", "pending")], num(&l["pending"]));
    o.family(
        "corral_lease_actions_total",
        "counter",
        "Lease records by action (issue, renew, revoke, expire, ...).",
    );
    for (a, n) in &c.lease_actions {
        o.sample("corral_lease_actions_total", &[("action", a)], *n as f64);
    }
    o.family(
        "corral_lease_requests_rate_limited_total",
        "counter",
        "Agent socket requests refused by the per-identity rate limit.",
    );
    for (i, n) in &c.rate_limited {
        o.sample(
            "corral_lease_requests_rate_limited_total",
            &[("identity", i)],
            *n as f64,
        );
    }
    o.family(
        "corral_anomaly_actions_total",
        "counter",
        "Anomaly responses by identity and action.",
    );
    for ((i, a), n) in &c.anomaly_actions {
        o.sample(
            "corral_anomaly_actions_total",
            &[("identity", i), ("action", a)],
            *n as f64,
        );
    }
    o.family(
        "corral_operator_actions_total",
        "counter",
        "Control API calls that change something, by result.",
    );
    for (r, n) in &c.operator_actions {
        o.sample("corral_operator_actions_total", &[("result", r)], *n as f64);
    }
}

/// The audit log and the OTLP exporter.
fn audit(o: &mut Out, status: &Value) {
    let a = &status["audit"];
    o.one(
        "corral_audit_records_total",
        "counter",
        "Records appended to the audit log.",
        num(&a["records"]),
    );
    o.one(
        "corral_audit_bytes_total",
        "counter",
        "Bytes appended to the audit log.",
        num(&a["bytes"]),
    );
    o.one(
        "corral_audit_lost_total",
        "counter",
        "Records the audit log could not write.",
        num(&a["lost"]),
    );
    o.one(
        "corral_audit_segments",
        "gauge",
        "Audit log segments on disk.",
        num(&a["segments"]),
    );
    o.one(
        "corral_audit_last_checkpoint_seq",
        "gauge",
        "Sequence number of the last signed checkpoint.",
        num(&a["last_checkpoint_seq"]),
    );
    otlp(o, &status["otlp"]);
}

/// The API sockets' admission counts.
fn sockets(o: &mut Out, status: &Value) {
    o.family(
        "corral_api_connections",
        "gauge",
        "Open API connections by socket.",
    );
    o.family_only_samples(&status["sockets"], "open", "corral_api_connections");
    o.family(
        "corral_api_connections_refused_total",
        "counter",
        "API connections refused over a limit, by socket and limit.",
    );
    for (sock, g) in status["sockets"].as_object().into_iter().flatten() {
        if g["open"].is_null() {
            continue;
        }
        o.sample(
            "corral_api_connections_refused_total",
            &[("socket", sock), ("limit", "total")],
            num(&g["refused_over_total"]),
        );
        o.sample(
            "corral_api_connections_refused_total",
            &[("socket", sock), ("limit", "per_uid")],
            num(&g["refused_over_per_uid"]),
        );
    }
}

/// The OTLP exporter's counts; no families at all when it is off, so a
/// dashboard tells "not configured" from "nothing sent".
fn otlp(o: &mut Out, x: &Value) {
    if x.is_null() {
        return;
    }
    o.one(
        "corral_otlp_records_sent_total",
        "counter",
        "Event records the OTLP collector accepted.",
        num(&x["sent"]),
    );
    o.one(
        "corral_otlp_records_lost_total",
        "counter",
        "Event records never exported (queue full, refused by the collector, exporter behind, shutdown).",
        num(&x["lost"]),
    );
    o.one(
        "corral_otlp_queue_records",
        "gauge",
        "Event records waiting for or in an OTLP export request.",
        num(&x["queued"]),
    );
    o.one(
        "corral_otlp_requests_failed_total",
        "counter",
        "OTLP export requests that failed (retried or dropped).",
        num(&x["failed_requests"]),
    );
}

/// Run count and time of Corral's programs, from the kernel's BPF stats
/// (zero unless `sysctl kernel.bpf_stats_enabled=1`, which costs every BPF
/// program on the host a little; leave it off in production unless asked).
fn programs(o: &mut Out) {
    let mut by: BTreeMap<String, (u64, f64)> = BTreeMap::new();
    for p in aya::programs::loaded_programs().flatten() {
        let Some(name) = p.name_as_str().filter(|n| n.starts_with("corral")) else {
            continue;
        };
        let e = by.entry(name.to_string()).or_default();
        e.0 += p.run_count();
        e.1 += p.run_time().as_secs_f64();
    }
    o.family(
        "corral_bpf_program_runs_total",
        "counter",
        "Runs of Corral's kernel programs by name (kernel.bpf_stats_enabled=1 to count).",
    );
    for (n, (c, _)) in &by {
        o.sample(
            "corral_bpf_program_runs_total",
            &[("program", n)],
            *c as f64,
        );
    }
    o.family(
        "corral_bpf_program_run_seconds_total",
        "counter",
        "Time spent in Corral's kernel programs by name (kernel.bpf_stats_enabled=1 to count).",
    );
    for (n, (_, t)) in &by {
        o.sample(
            "corral_bpf_program_run_seconds_total",
            &[("program", n)],
            *t,
        );
    }
    let on = std::fs::read_to_string("/proc/sys/kernel/bpf_stats_enabled")
        .is_ok_and(|s| s.trim() == "1");
    o.one(
        "corral_bpf_stats_enabled",
        "gauge",
        "1 when kernel.bpf_stats_enabled is on (program run counts are real).",
        if on { 1.0 } else { 0.0 },
    );
}

fn num(v: &Value) -> f64 {
    v.as_f64().unwrap_or(0.0)
}

#[derive(Default)]
struct Out(String);

impl Out {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.0, "# HELP {name} {help}\n# TYPE {name} {kind}");
    }

    fn one(&mut self, name: &str, kind: &str, help: &str, v: f64) {
        self.family(name, kind, help);
        self.sample(name, &[], v);
    }

    fn family_only_samples(&mut self, sockets: &Value, field: &str, name: &str) {
        for (sock, g) in sockets.as_object().into_iter().flatten() {
            if !g[field].is_null() {
                self.sample(name, &[("socket", sock)], num(&g[field]));
            }
        }
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], v: f64) {
        self.0.push_str(name);
        if !labels.is_empty() {
            self.0.push('{');
            for (i, (k, val)) in labels.iter().enumerate() {
                if i > 0 {
                    self.0.push(',');
                }
                let esc = val
                    .replace('\\', "\\\\")
                    .replace('"', "\\\"")
                    .replace('\n', "\\n");
                let _ = write!(self.0, "{k}=\"{esc}\"");
            }
            self.0.push('}');
        }
        let _ = writeln!(self.0, " {v}");
    }
}
