//! One event to one OTLP LogRecord. The body is the event's JSON exactly as
//! `corral tail --json` and the audit log carry it, so nothing is lost in
//! translation; the attributes repeat the fields a collector filters and
//! groups on, under OpenTelemetry semantic-convention names where one fits
//! and `corral.*` otherwise.

use std::time::{SystemTime, UNIX_EPOCH};

use super::proto::{
    AnyValue, ExportLogsServiceRequest, InstrumentationScope, KeyValue, LogRecord, Resource,
    ResourceLogs, ScopeLogs, Value, severity,
};
use crate::event::{Event, EventKind, EventReason, EventVerdict};

pub fn unix_nanos(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// (number, text) of an event: refusals are warnings, what the daemon
/// could not do (events lost, a failed reload, fail-closed refusals) is an
/// error, the rest is information.
fn severity_of(ev: &Event) -> (i32, &'static str) {
    let failed_reload = ev.policy.as_ref().is_some_and(|p| p["ok"] != true);
    if ev.kind == EventKind::Lost || failed_reload || ev.reason == Some(EventReason::FailClosed) {
        return (severity::ERROR, "ERROR");
    }
    match ev.verdict {
        Some(EventVerdict::Deny | EventVerdict::Kill) => (severity::WARN, "WARN"),
        _ if ev.kind == EventKind::Anomaly => (severity::WARN, "WARN"),
        _ => (severity::INFO, "INFO"),
    }
}

pub fn record(ev: &Event, observed: SystemTime) -> LogRecord {
    let observed_ns = unix_nanos(observed);
    // The event's own time is the kernel's (converted to wall clock by the
    // reader); a record with none would sort as 1970 in a collector.
    let time_ns = humantime::parse_rfc3339(&ev.time)
        .map(unix_nanos)
        .unwrap_or(observed_ns);
    let (severity_number, severity_text) = severity_of(ev);
    let json = serde_json::to_string(ev).unwrap_or_default();
    LogRecord {
        time_unix_nano: time_ns,
        observed_time_unix_nano: observed_ns,
        severity_number,
        severity_text: severity_text.to_string(),
        body: Some(AnyValue {
            value: Some(Value::String(json)),
        }),
        attributes: attributes(ev),
        dropped_attributes_count: 0,
        flags: 0,
        event_name: format!("corral.{}", ev.kind),
    }
}

fn attributes(ev: &Event) -> Vec<KeyValue> {
    let mut a = vec![KeyValue::str("corral.kind", ev.kind.name())];
    if let Some(v) = ev.verdict {
        a.push(KeyValue::str("corral.verdict", v.name()));
    }
    if let Some(r) = ev.reason {
        a.push(KeyValue::str("corral.reason", r.name()));
    }
    let strs = [
        ("corral.identity", &ev.identity),
        ("corral.mode", &ev.mode),
        ("corral.rule", &ev.rule),
        ("process.command", &ev.comm),
        ("process.executable.path", &ev.exe),
        ("corral.cgroup", &ev.cgroup),
    ];
    for (k, v) in strs {
        if let Some(v) = v {
            a.push(KeyValue::str(k, v.as_str()));
        }
    }
    // OpenTelemetry's process.pid is the process (the thread group); the
    // thread that made the call is thread.id.
    let ints = [
        ("corral.identity_id", ev.identity_id.map(i64::from)),
        ("process.pid", ev.tgid.or(ev.pid).map(i64::from)),
        ("thread.id", ev.pid.map(i64::from)),
        ("process.parent_pid", ev.ppid.map(i64::from)),
    ];
    for (k, v) in ints {
        if let Some(v) = v {
            a.push(KeyValue::int(k, v));
        }
    }
    target(ev, &mut a);
    a
}

/// What the event was about: the address, path, call or count.
fn target(ev: &Event, a: &mut Vec<KeyValue>) {
    if let Some(n) = &ev.net {
        a.push(KeyValue::str("corral.op", n.op.as_str()));
        a.push(KeyValue::str("network.transport", n.protocol.as_str()));
        let ty = match n.family.as_str() {
            "inet" => "ipv4",
            "inet6" => "ipv6",
            other => other,
        };
        a.push(KeyValue::str("network.type", ty));
        if n.op != "create" {
            a.push(KeyValue::str("destination.address", n.addr.as_str()));
            a.push(KeyValue::int("destination.port", i64::from(n.port)));
        }
    }
    if let Some(u) = &ev.unix {
        a.push(KeyValue::str("corral.op", u.op.as_str()));
        a.push(KeyValue::str("network.transport", "unix"));
        a.push(KeyValue::str("destination.address", u.path.as_str()));
    }
    if let Some(f) = &ev.file {
        let op = f.op.as_deref().unwrap_or(f.access.as_str());
        a.push(KeyValue::str("corral.op", op));
        a.push(KeyValue::str("file.path", f.path.as_str()));
        a.push(KeyValue::str("corral.file.access", f.access.as_str()));
        a.push(KeyValue::str("corral.layer", f.layer.as_str()));
        a.push(KeyValue::str("corral.errno", f.errno.as_str()));
    }
    if let Some(s) = &ev.syscall {
        a.push(KeyValue::str("corral.op", s.name.as_str()));
        a.push(KeyValue::int("corral.syscall.nr", i64::from(s.nr)));
        a.push(KeyValue::str("corral.layer", s.layer.as_str()));
        if let Some(e) = &s.errno {
            a.push(KeyValue::str("corral.errno", e.as_str()));
        }
    }
    if let Some(p) = &ev.protect {
        a.push(KeyValue::str("corral.op", p.op.as_str()));
        if let Some(t) = p.target_pid {
            a.push(KeyValue::int("corral.protect.target_pid", i64::from(t)));
        }
        a.push(KeyValue::bool(
            "corral.protect.target_is_daemon",
            p.target_is_daemon,
        ));
    }
    if let Some(l) = &ev.lost {
        let count = i64::try_from(l.count).unwrap_or(i64::MAX);
        a.push(KeyValue::int("corral.lost.count", count));
        a.push(KeyValue::str("corral.lost.source", l.source.as_str()));
    }
}

/// Who sent the records: the same for every request of this daemon.
pub fn resource() -> Resource {
    let host = nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_default();
    Resource {
        attributes: vec![
            KeyValue::str("service.name", "corral"),
            KeyValue::str("service.version", env!("CARGO_PKG_VERSION")),
            KeyValue::str("host.name", host),
        ],
        dropped_attributes_count: 0,
    }
}

pub fn request(resource: &Resource, records: Vec<LogRecord>) -> ExportLogsServiceRequest {
    ExportLogsServiceRequest {
        resource_logs: vec![ResourceLogs {
            resource: Some(resource.clone()),
            scope_logs: vec![ScopeLogs {
                scope: Some(InstrumentationScope {
                    name: "corral".into(),
                    version: env!("CARGO_PKG_VERSION").into(),
                    attributes: vec![],
                    dropped_attributes_count: 0,
                }),
                log_records: records,
                schema_url: String::new(),
            }],
            schema_url: String::new(),
        }],
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use prost::Message as _;

    use super::*;
    use crate::event::{NetInfo, SyscallInfo};

    fn attr<'a>(r: &'a LogRecord, key: &str) -> Option<&'a Value> {
        r.attributes
            .iter()
            .find(|kv| kv.key == key)
            .and_then(|kv| kv.value.as_ref()?.value.as_ref())
    }

    fn s(v: &str) -> Option<Value> {
        Some(Value::String(v.into()))
    }

    fn denial() -> Event {
        let mut ev = Event::notice(
            crate::event::EventKind::Net,
            "2026-01-02T03:04:05.000000006Z".into(),
        );
        ev.identity = Some("agent".into());
        ev.identity_id = Some(7);
        ev.verdict = Some(EventVerdict::Deny);
        ev.reason = Some(EventReason::NoRule);
        ev.pid = Some(101);
        ev.tgid = Some(100);
        ev.comm = Some("curl".into());
        ev.net = Some(NetInfo {
            op: "connect".into(),
            family: "inet".into(),
            protocol: "tcp".into(),
            addr: "10.0.0.1".into(),
            port: 443,
            sock_type: "stream".into(),
        });
        ev
    }

    #[test]
    fn a_denial_keeps_its_kernel_time_fields_and_json() {
        let ev = denial();
        let observed = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let r = record(&ev, observed);
        assert_eq!(r.time_unix_nano, 1_767_323_045_000_000_006);
        assert_eq!(r.observed_time_unix_nano, 1_800_000_000_000_000_000);
        assert_eq!((r.severity_number, r.severity_text.as_str()), (13, "WARN"));
        assert_eq!(r.event_name, "corral.net");
        assert_eq!(attr(&r, "corral.identity").cloned(), s("agent"));
        assert_eq!(attr(&r, "corral.verdict").cloned(), s("deny"));
        assert_eq!(attr(&r, "process.pid"), Some(&Value::Int(100)));
        assert_eq!(attr(&r, "thread.id"), Some(&Value::Int(101)));
        assert_eq!(attr(&r, "process.command").cloned(), s("curl"));
        assert_eq!(attr(&r, "destination.address").cloned(), s("10.0.0.1"));
        assert_eq!(attr(&r, "destination.port"), Some(&Value::Int(443)));
        assert_eq!(attr(&r, "network.type").cloned(), s("ipv4"));
        let Some(Value::String(body)) = r.body.and_then(|b| b.value) else {
            panic!("string body");
        };
        let back: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(back, serde_json::to_value(&ev).unwrap());
    }

    #[test]
    fn severities_follow_what_happened() {
        let mut audit = denial();
        audit.verdict = Some(EventVerdict::Audit);
        assert_eq!(record(&audit, SystemTime::now()).severity_text, "INFO");
        let mut fc = denial();
        fc.reason = Some(EventReason::FailClosed);
        assert_eq!(record(&fc, SystemTime::now()).severity_number, 17);
        let lost = Event::lost("bad time".into(), 5, "kernel");
        let now = SystemTime::now();
        let r = record(&lost, now);
        assert_eq!(r.severity_text, "ERROR");
        // An unparsable time falls back to the observation time.
        assert_eq!(r.time_unix_nano, unix_nanos(now));
        assert_eq!(attr(&r, "corral.lost.count"), Some(&Value::Int(5)));
        let mut kill = Event::notice(crate::event::EventKind::Syscall, "x".into());
        kill.verdict = Some(EventVerdict::Kill);
        kill.syscall = Some(SyscallInfo {
            nr: 83,
            name: "mkdir".into(),
            layer: "kill".into(),
            errno: None,
            detail: None,
        });
        let r = record(&kill, now);
        assert_eq!(r.severity_text, "WARN");
        assert_eq!(attr(&r, "corral.op").cloned(), s("mkdir"));
        let mut reload = Event::notice(crate::event::EventKind::Policy, "x".into());
        reload.policy = Some(serde_json::json!({ "ok": false }));
        assert_eq!(record(&reload, now).severity_text, "ERROR");
        reload.policy = Some(serde_json::json!({ "ok": true }));
        assert_eq!(record(&reload, now).severity_text, "INFO");
    }

    #[test]
    fn a_request_round_trips_with_resource_and_scope() {
        let req = request(&resource(), vec![record(&denial(), SystemTime::now())]);
        let back = ExportLogsServiceRequest::decode(req.encode_to_vec().as_slice()).unwrap();
        assert_eq!(back, req);
        let rl = &back.resource_logs[0];
        let names: Vec<&str> = rl
            .resource
            .as_ref()
            .unwrap()
            .attributes
            .iter()
            .map(|k| k.key.as_str())
            .collect();
        assert_eq!(names, ["service.name", "service.version", "host.name"]);
        assert_eq!(rl.scope_logs[0].scope.as_ref().unwrap().name, "corral");
        assert_eq!(rl.scope_logs[0].log_records.len(), 1);
    }
}
