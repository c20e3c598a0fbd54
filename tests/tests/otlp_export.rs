//! OTLP/HTTP log export (`--otlp-endpoint`): real denials reach a receiver
//! in this process that decodes every request with the official
//! OpenTelemetry protobuf definitions (`opentelemetry-proto`; the daemon
//! encodes with its own copy of the messages); 503s are retried until the
//! records get through; a vanished collector costs counted losses, never
//! the daemon's answers; shutdown sends what is still queued.

use std::{
    collections::HashMap,
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::{Shutdown, TcpListener, TcpStream},
    path::Path,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use corral_tests::{audit::promtool_clean, lease::Lab, *};
use opentelemetry_proto::tonic::{
    collector::logs::v1::ExportLogsServiceRequest,
    common::v1::{AnyValue, KeyValue, any_value::Value as Any},
    logs::v1::{LogRecord, SeverityNumber},
};
use prost::Message as _;
use serde_json::Value;

/// A free loopback port below the ephemeral range.
fn low_port(from: u16) -> u16 {
    (from..from + 500)
        .find(|p| TcpListener::bind(("127.0.0.1", *p)).is_ok())
        .expect("a free port")
}

/// One decoded request.
#[derive(Clone)]
struct Request {
    path: String,
    headers: HashMap<String, String>,
    body: ExportLogsServiceRequest,
}

#[derive(Default)]
struct State {
    /// Requests answered 503 so far, and how many to answer so.
    refused: u32,
    refuse_first: u32,
    accepted: Vec<Request>,
    open: Vec<TcpStream>,
}

/// A minimal OTLP/HTTP logs receiver: HTTP/1.1 with keep-alive,
/// Content-Length bodies, protobuf only.
struct Receiver {
    port: u16,
    state: Arc<Mutex<State>>,
    stop: Arc<AtomicBool>,
}

impl Receiver {
    fn start(port: u16, refuse_first: u32) -> Receiver {
        let l = TcpListener::bind(("127.0.0.1", port)).expect("receiver bind");
        l.set_nonblocking(true).expect("nonblocking");
        let state = Arc::new(Mutex::new(State {
            refuse_first,
            ..State::default()
        }));
        let stop = Arc::new(AtomicBool::new(false));
        let (st, sp) = (state.clone(), stop.clone());
        std::thread::spawn(move || {
            // Polled, so that `stop` closes the port itself: new connects
            // are refused, as with a collector that is gone.
            while !sp.load(Ordering::Relaxed) {
                match l.accept() {
                    Ok((s, _)) => {
                        s.set_nonblocking(false).expect("blocking");
                        st.lock().unwrap().open.push(s.try_clone().expect("clone"));
                        let st = st.clone();
                        std::thread::spawn(move || serve(s, &st));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        Receiver { port, state, stop }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Closes the port and every open connection.
    fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
        for s in self.state.lock().unwrap().open.drain(..) {
            let _ = s.shutdown(Shutdown::Both);
        }
        std::thread::sleep(Duration::from_millis(50));
    }

    fn refused(&self) -> u32 {
        self.state.lock().unwrap().refused
    }

    fn requests(&self) -> Vec<Request> {
        self.state.lock().unwrap().accepted.clone()
    }

    /// The first record accepted for which `f` holds, with its request.
    fn find(&self, f: impl Fn(&LogRecord) -> bool) -> Option<(Request, LogRecord)> {
        for r in self.requests() {
            for rl in &r.body.resource_logs {
                for sl in &rl.scope_logs {
                    if let Some(rec) = sl.log_records.iter().find(|x| f(x)) {
                        return Some((r.clone(), rec.clone()));
                    }
                }
            }
        }
        None
    }

    fn wait(
        &self,
        within: Duration,
        what: &str,
        f: impl Fn(&LogRecord) -> bool,
    ) -> (Request, LogRecord) {
        wait_for(within, what, || self.find(&f))
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.stop();
    }
}

fn serve(s: TcpStream, state: &Mutex<State>) {
    let mut w = s.try_clone().expect("clone");
    let mut r = BufReader::new(s);
    loop {
        let mut line = String::new();
        if r.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let path = line.split_whitespace().nth(1).unwrap_or("").to_string();
        let mut headers = HashMap::new();
        loop {
            let mut h = String::new();
            if r.read_line(&mut h).unwrap_or(0) == 0 {
                return;
            }
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
            }
        }
        let len: usize = headers
            .get("content-length")
            .and_then(|v| v.parse().ok())
            .expect("content-length");
        let mut body = vec![0; len];
        if r.read_exact(&mut body).is_err() {
            return;
        }
        let answer = {
            let mut st = state.lock().unwrap();
            if st.refused < st.refuse_first {
                st.refused += 1;
                "HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\n\r\n"
            } else {
                let body = ExportLogsServiceRequest::decode(body.as_slice())
                    .expect("an ExportLogsServiceRequest (official definitions)");
                st.accepted.push(Request {
                    path,
                    headers,
                    body,
                });
                "HTTP/1.1 200 OK\r\ncontent-type: application/x-protobuf\r\ncontent-length: 0\r\n\r\n"
            }
        };
        if w.write_all(answer.as_bytes()).is_err() {
            return;
        }
    }
}

fn attr<'a>(attrs: &'a [KeyValue], key: &str) -> Option<&'a Any> {
    attrs
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref())
        .and_then(|v: &AnyValue| v.value.as_ref())
}

fn str_attr<'a>(attrs: &'a [KeyValue], key: &str) -> &'a str {
    match attr(attrs, key) {
        Some(Any::StringValue(s)) => s,
        other => panic!("{key}: expected a string, got {other:?}"),
    }
}

fn int_attr(attrs: &[KeyValue], key: &str) -> i64 {
    match attr(attrs, key) {
        Some(Any::IntValue(i)) => *i,
        other => panic!("{key}: expected an int, got {other:?}"),
    }
}

fn body_json(rec: &LogRecord) -> Value {
    match rec.body.as_ref().and_then(|b| b.value.as_ref()) {
        Some(Any::StringValue(s)) => serde_json::from_str(s).expect("JSON body"),
        other => panic!("expected a string body, got {other:?}"),
    }
}

/// The net denial of `pid`.
fn is_denial_of(pid: u64) -> impl Fn(&LogRecord) -> bool {
    move |r| {
        r.event_name == "corral.net"
            && matches!(attr(&r.attributes, "process.pid"), Some(Any::IntValue(p)) if *p as u64 == pid)
    }
}

fn agent_policy(_: &Path) -> String {
    net_policy("agent", "enforce", "allow = []")
}

fn otlp_status(lab: &Lab) -> Value {
    lab.d().status()["otlp"].clone()
}

#[test]
fn a_denial_arrives_as_an_otlp_log_record() {
    if !is_root() {
        return;
    }
    let rx = Receiver::start(low_port(14318), 0);
    let port = tcp_listener("127.0.0.1:0");
    let url = rx.url();
    let lab = Lab::start_opts(
        &[("agent", &agent_policy)],
        &[
            "--otlp-endpoint",
            &url,
            "--otlp-flush",
            "200ms",
            "--otlp-header",
            "x-corral-tenant=sekrit-token",
        ],
    );
    let r = lab
        .d()
        .probe_as("agent", &["pid", "connect", "127.0.0.1", &port.to_string()]);
    r.assert_eperm("connect", 0);
    probe_outside(&["connect", "127.0.0.1", &port.to_string()]).assert_ok("connect", 0);
    let (req, rec) = rx.wait(
        Duration::from_secs(20),
        "the denial at the receiver",
        is_denial_of(r.pid()),
    );

    assert_eq!(req.path, "/v1/logs");
    assert_eq!(req.headers["content-type"], "application/x-protobuf");
    assert_eq!(req.headers["x-corral-tenant"], "sekrit-token");
    let rl = &req.body.resource_logs[0];
    let res = &rl.resource.as_ref().expect("resource").attributes;
    assert_eq!(str_attr(res, "service.name"), "corral");
    assert!(!str_attr(res, "service.version").is_empty());
    assert!(!str_attr(res, "host.name").is_empty());
    assert_eq!(
        rl.scope_logs[0].scope.as_ref().expect("scope").name,
        "corral"
    );

    let a = &rec.attributes;
    assert_eq!(str_attr(a, "corral.kind"), "net");
    assert_eq!(str_attr(a, "corral.identity"), "agent");
    assert_eq!(str_attr(a, "corral.verdict"), "deny");
    assert_eq!(str_attr(a, "corral.op"), "connect");
    assert_eq!(str_attr(a, "network.transport"), "tcp");
    assert_eq!(str_attr(a, "destination.address"), "127.0.0.1");
    assert_eq!(int_attr(a, "destination.port"), i64::from(port));
    assert_eq!(rec.severity_number, SeverityNumber::Warn as i32);
    assert_eq!(rec.severity_text, "WARN");
    assert!(rec.time_unix_nano > 0 && rec.time_unix_nano <= rec.observed_time_unix_nano);
    // The body is the event as `corral tail --json` shows it.
    let ev = body_json(&rec);
    assert_net_event(&ev, "agent", r.pid(), "connect", "127.0.0.1", port);
    assert_eq!(
        str_attr(a, "process.command"),
        ev["comm"].as_str().expect("comm")
    );
    assert!(!str_attr(a, "process.command").is_empty());

    let st = wait_for(Duration::from_secs(5), "sent counted", || {
        let s = otlp_status(&lab);
        (s["sent"].as_u64() >= Some(1)).then_some(s)
    });
    assert_eq!(st["lost"], 0, "{st:#}");
    assert_eq!(st["endpoint"], format!("{url}/v1/logs"));
    // Header values are credentials: named, never shown.
    assert_eq!(st["headers"][0], "x-corral-tenant");
    let full = lab.d().cli(&["status", "--json"]);
    assert!(!String::from_utf8_lossy(&full.stdout).contains("sekrit"));
}

/// Prometheus text from the control socket's `GET /metrics`.
fn metrics(lab: &Lab) -> String {
    let mut s = std::os::unix::net::UnixStream::connect(&lab.dirs.socket).expect("api socket");
    write!(
        s,
        "GET /metrics HTTP/1.1\r\nHost: corral\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out.split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default()
}

#[test]
fn refusals_are_retried_and_a_gone_collector_costs_counted_losses_only() {
    if !is_root() {
        return;
    }
    let rx = Receiver::start(low_port(14818), 3);
    let port = tcp_listener("127.0.0.1:0");
    let ps = port.to_string();
    let lab = Lab::start_opts(
        &[("agent", &agent_policy)],
        &[
            "--otlp-endpoint",
            &rx.url(),
            "--otlp-flush",
            "100ms",
            "--otlp-batch",
            "10",
            "--otlp-queue",
            "50",
        ],
    );
    // Three 503s, then accepted: back-off 0.5 + 1 + 2 s.
    let r = lab
        .d()
        .probe_as("agent", &["pid", "connect", "127.0.0.1", &ps]);
    r.assert_eperm("connect", 0);
    rx.wait(
        Duration::from_secs(30),
        "the denial after 503s",
        is_denial_of(r.pid()),
    );
    assert!(rx.refused() >= 3);
    let st = otlp_status(&lab);
    assert_eq!(st["lost"], 0, "{st:#}");
    assert!(st["failed_requests"].as_u64() >= Some(3), "{st:#}");
    assert!(
        st["last_error"].as_str().unwrap_or("").contains("503"),
        "{st:#}"
    );

    // The collector goes away; 300 denials overflow a 50-record queue.
    rx.stop();
    let b = lab
        .d()
        .probe_as("agent", &["pid", "burst", "127.0.0.1", &ps, "300"]);
    assert_eq!(b.step("burst", 0)["eperm"], 300, "{b:#?}");
    let st = wait_for(Duration::from_secs(20), "losses counted", || {
        let s = otlp_status(&lab);
        (s["lost"].as_u64() >= Some(200)).then_some(s)
    });
    assert!(st["queued"].as_u64() <= Some(60), "bounded: {st:#}");
    // Enforcement and the API are unaffected.
    let t0 = Instant::now();
    let out = lab.d().cli(&["status"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains("otlp export"),
        "{text}"
    );
    assert!(
        t0.elapsed() < Duration::from_secs(2),
        "status took {:?}",
        t0.elapsed()
    );
    let again = lab.d().probe_as("agent", &["connect", "127.0.0.1", &ps]);
    again.assert_eperm("connect", 0);

    let m = metrics(&lab);
    let lost_line = m
        .lines()
        .find(|l| l.starts_with("corral_otlp_records_lost_total "))
        .unwrap_or_else(|| panic!("{m}"));
    assert!(
        lost_line
            .split(' ')
            .nth(1)
            .and_then(|v| v.parse::<f64>().ok())
            >= Some(200.0)
    );
    assert!(m.contains("corral_otlp_records_sent_total "), "{m}");
    assert!(m.contains("# TYPE corral_otlp_queue_records gauge"), "{m}");
    promtool_clean(&m);
}

#[test]
fn shutdown_sends_what_is_still_queued() {
    if !is_root() {
        return;
    }
    let rx = Receiver::start(low_port(15318), 0);
    let port = tcp_listener("127.0.0.1:0");
    // Nothing would go out for a minute but for the shutdown flush.
    let mut lab = Lab::start_opts(
        &[("agent", &agent_policy)],
        &["--otlp-endpoint", &rx.url(), "--otlp-flush", "60s"],
    );
    let r = lab
        .d()
        .probe_as("agent", &["pid", "connect", "127.0.0.1", &port.to_string()]);
    r.assert_eperm("connect", 0);
    wait_for(Duration::from_secs(5), "the denial queued", || {
        (otlp_status(&lab)["queued"].as_u64() >= Some(1)).then_some(())
    });
    assert!(rx.find(is_denial_of(r.pid())).is_none());
    let t0 = Instant::now();
    lab.stop();
    assert!(
        t0.elapsed() < Duration::from_secs(5),
        "stop took {:?}",
        t0.elapsed()
    );
    rx.wait(
        Duration::from_secs(1),
        "the denial, sent at shutdown",
        is_denial_of(r.pid()),
    );
}
