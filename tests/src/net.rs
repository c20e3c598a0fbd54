//! Network targets for the tests (listeners and sinks on loopback), the
//! wait for a `net` event by address, and the denial proof for a connect.

use std::{
    net::{IpAddr, TcpListener, UdpSocket},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use serde_json::Value;

use crate::{Daemon, Tail, assert_net_event, probe_outside};

/// A TCP listener that accepts in the background; gives its port.
pub fn tcp_listener(addr: &str) -> u16 {
    let l = TcpListener::bind(addr).expect("listen");
    let port = l.local_addr().expect("addr").port();
    std::thread::spawn(move || for _ in l.incoming() {});
    port
}

/// A UDP socket that exists so sends have a target; gives its port.
pub fn udp_sink(addr: &str) -> u16 {
    counting_sink(addr).0
}

/// A UDP socket that counts the datagrams it receives; gives its port and
/// the counter.
pub fn counting_sink(addr: &str) -> (u16, Arc<AtomicU64>) {
    let s = UdpSocket::bind(addr).expect("udp bind");
    let port = s.local_addr().expect("addr").port();
    let n = Arc::new(AtomicU64::new(0));
    let c = n.clone();
    std::thread::spawn(move || {
        let mut b = [0u8; 2048];
        while s.recv(&mut b).is_ok() {
            c.fetch_add(1, Ordering::Relaxed);
        }
    });
    (port, n)
}

/// Waits until `n` reaches `want` (at most 2 s); gives the count.
pub fn count_reaches(n: &AtomicU64, want: u64) -> u64 {
    let end = Instant::now() + Duration::from_secs(2);
    while n.load(Ordering::Relaxed) < want && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(10));
    }
    std::thread::sleep(Duration::from_millis(100));
    n.load(Ordering::Relaxed)
}

/// The next `net` event for this address (compared as an address, not as
/// text) and port.
pub fn net_event(tail: &Tail, addr: &str, port: u16) -> Value {
    let want: IpAddr = addr.parse().expect("ip literal");
    tail.expect(move |e| {
        e["kind"] == "net"
            && e["net"]["port"] == port
            && e["net"]["addr"]
                .as_str()
                .and_then(|a| a.parse::<IpAddr>().ok())
                == Some(want)
    })
}

impl Daemon {
    /// The denial proof for a TCP connect to `addr`:`port`: EPERM inside
    /// `identity`; the `net` deny event naming the identity, the probe's pid
    /// and comm, and the target; the same connect fine outside any
    /// identity. Gives the event, for the caller's own checks.
    pub fn assert_connect_denied(
        &self,
        tail: &Tail,
        identity: &str,
        addr: &str,
        port: u16,
    ) -> Value {
        let p = port.to_string();
        let r = self.probe_as(identity, &["pid", "connect", addr, &p]);
        r.assert_eperm("connect", 0);
        let pid = r.pid();
        let ev = tail.expect(|e| e["kind"] == "net" && e["tgid"] == pid);
        assert_net_event(&ev, identity, pid, "connect", addr, port);
        assert_eq!(ev["verdict"], "deny", "{ev:#}");
        let out = probe_outside(&["connect", addr, &p]);
        assert_eq!(
            out.step("connect", 0)["ok"],
            true,
            "outside the identity: {out:#?}"
        );
        ev
    }

    /// A TCP connect to `addr`:`port` succeeds inside `identity`.
    pub fn assert_connect_allowed(&self, identity: &str, addr: &str, port: u16) {
        let r = self.probe_as(identity, &["connect", addr, &port.to_string()]);
        r.assert_ok("connect", 0);
    }
}
