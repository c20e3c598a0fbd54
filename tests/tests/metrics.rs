//! Prometheus metrics: the control socket's `GET /metrics` and
//! `--metrics-listen`, checked by `promtool` and scraped by a real
//! Prometheus server (both from the `prometheus` package `cargo xtask
//! setup` installs).

use std::{
    io::{Read as _, Write as _},
    net::{TcpListener, TcpStream},
    process::{Command, Stdio},
    time::Duration,
};

use corral_tests::*;
use serde_json::Value;

/// A free loopback port below the ephemeral range.
fn low_port(from: u16) -> u16 {
    (from..from + 500)
        .find(|p| TcpListener::bind(("127.0.0.1", *p)).is_ok())
        .expect("a free port")
}

/// (status, body); status 0 when nothing listens (yet).
fn http_get(port: u16, path: &str) -> (u16, String) {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
        return (0, String::new());
    };
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    let code = out
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = out.split_once("\r\n\r\n").map(|(_, b)| b.to_string());
    (code, body.unwrap_or_default())
}

/// Kills the child on drop.
struct Reaper(std::process::Child);

impl Drop for Reaper {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn metrics_are_valid_and_scraped_by_prometheus() {
    if !is_root() {
        return;
    }
    let port = tcp_listener("127.0.0.1:0");
    let mport = low_port(19477);
    let policy = net_policy("agent", "enforce", "allow = []");
    let d = Daemon::start_opts(
        &[("agent", &policy)],
        &["--metrics-listen", &format!("127.0.0.1:{mport}")],
        &[],
    );
    let tail = d.tail(Some("agent"));
    let r = d.probe_as("agent", &["pid", "connect", "127.0.0.1", &port.to_string()]);
    r.assert_eperm("connect", 0);
    tail.expect(|e| e["kind"] == "net");

    let (code, body) = http_get(mport, "/metrics");
    assert_eq!(code, 200, "{body}");
    assert!(
        body.contains("corral_events_total{identity=\"agent\",kind=\"net\",verdict=\"deny\"} 1"),
        "{body}"
    );
    assert!(
        body.contains("corral_reloads_total{result=\"ok\"} 1"),
        "{body}"
    );
    assert!(body.contains("corral_identities 1"), "{body}");
    assert!(body.contains("# TYPE corral_reload_duration_seconds histogram"));
    // Nothing else is served on the TCP listener.
    assert_eq!(http_get(mport, "/v1/status").0, 404);
    // The control socket serves the same.
    let out = d.cli(&["status", "--json"]);
    assert!(out.status.success());

    corral_tests::audit::promtool_clean(&body);

    // A real Prometheus server scrapes it.
    let tmp = tempfile::tempdir().unwrap();
    let cfg = tmp.path().join("prometheus.yml");
    std::fs::write(
        &cfg,
        format!(
            "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: corral\n    \
             static_configs:\n      - targets: ['127.0.0.1:{mport}']\n"
        ),
    )
    .unwrap();
    let pport = low_port(19977);
    let _prom = Reaper(
        Command::new("prometheus")
            .arg(format!("--config.file={}", cfg.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                tmp.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{pport}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("prometheus (installed by cargo xtask setup)"),
    );
    let v = wait_for(
        Duration::from_secs(60),
        "Prometheus to scrape corral",
        || {
            let (code, body) = http_get(
                pport,
                "/api/v1/query?query=corral_events_total%7Bidentity%3D%22agent%22%2Cverdict%3D%22deny%22%7D",
            );
            let v: Value = serde_json::from_str(&body).ok()?;
            (code == 200 && v["data"]["result"][0]["value"][1] == "1").then_some(v)
        },
    );
    assert_eq!(v["data"]["result"][0]["metric"]["kind"], "net", "{v:#}");
    let (_, up) = http_get(pport, "/api/v1/query?query=up%7Bjob%3D%22corral%22%7D");
    assert!(up.contains("\"1\""), "{up}");
}
