//! Serving the two API sockets under limits. The agent socket is
//! world-connectable by design, so nothing a local user does to it may
//! exhaust what the daemon needs to enforce: connections are capped
//! globally and per peer uid (refused at accept with a 503 line, counted),
//! an idle or slow client is dropped by hyper's header-read timer (armed
//! whenever a connection waits for its next request, keep-alive included),
//! headers are bounded by the read buffer, bodies by `body::MAX` and a read
//! timeout, and an accept that fails for lack of descriptors backs off
//! instead of spinning.

pub mod bind;
pub mod body;
pub mod http;
pub mod rate;

use std::{
    collections::HashMap,
    convert::Infallible,
    future::Future,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use hyper::{Request, Response, body::Incoming, server::conn::http1, service::service_fn};
use hyper_util::rt::{TokioIo, TokioTimer};
use serde::Serialize;
use tokio::net::{UnixListener, UnixStream};
use tracing::{debug, warn};

use http::RespBody;

/// What one socket admits.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Limits {
    /// Open connections, all peers together.
    pub max_conns: u32,
    /// Open connections of one peer uid (root included: a root agent is
    /// still an agent).
    pub per_uid: u32,
    /// Time a connection may take to send a request's headers, counted from
    /// when it starts waiting for one: also the idle timeout.
    #[serde(with = "secs")]
    pub header_timeout: Duration,
}

mod secs {
    pub fn serialize<S: serde::Serializer>(
        d: &std::time::Duration,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        s.serialize_f64(d.as_secs_f64())
    }
}

/// The smallest read buffer hyper accepts: it bounds a request head, so a
/// connection costs at most this plus one body.
const READ_BUF: usize = 8192;

#[derive(Default, Debug, Serialize)]
pub struct GateStats {
    pub open: AtomicU64,
    pub accepted: AtomicU64,
    pub refused_global: AtomicU64,
    pub refused_uid: AtomicU64,
    pub accept_errors: AtomicU64,
}

/// Counts open connections, per uid and in total.
pub struct Gate {
    pub name: &'static str,
    pub limits: Limits,
    per_uid: Mutex<HashMap<u32, u32>>,
    pub stats: GateStats,
}

/// One admitted connection; gives its slot back when dropped.
pub struct Slot {
    gate: Arc<Gate>,
    uid: u32,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut m = self.gate.per_uid.lock().expect("gate");
        if let Some(n) = m.get_mut(&self.uid) {
            *n -= 1;
            if *n == 0 {
                m.remove(&self.uid);
            }
        }
        self.gate.stats.open.fetch_sub(1, Ordering::Relaxed);
    }
}

#[derive(Debug, PartialEq, Eq)]
pub enum Refusal {
    Global,
    Uid,
}

impl Gate {
    pub fn new(name: &'static str, limits: Limits) -> Arc<Gate> {
        Arc::new(Gate {
            name,
            limits,
            per_uid: Mutex::new(HashMap::new()),
            stats: GateStats::default(),
        })
    }

    pub fn admit(self: &Arc<Self>, uid: u32) -> Result<Slot, Refusal> {
        let mut m = self.per_uid.lock().expect("gate");
        let total: u32 = m.values().sum();
        if total >= self.limits.max_conns {
            self.stats.refused_global.fetch_add(1, Ordering::Relaxed);
            return Err(Refusal::Global);
        }
        let n = m.entry(uid).or_insert(0);
        if *n >= self.limits.per_uid {
            self.stats.refused_uid.fetch_add(1, Ordering::Relaxed);
            return Err(Refusal::Uid);
        }
        *n += 1;
        self.stats.open.fetch_add(1, Ordering::Relaxed);
        self.stats.accepted.fetch_add(1, Ordering::Relaxed);
        Ok(Slot {
            gate: self.clone(),
            uid,
        })
    }

    /// For `corral status`.
    pub fn view(&self) -> serde_json::Value {
        serde_json::json!({
            "limits": self.limits,
            "open": self.stats.open.load(Ordering::Relaxed),
            "accepted": self.stats.accepted.load(Ordering::Relaxed),
            "refused_over_total": self.stats.refused_global.load(Ordering::Relaxed),
            "refused_over_per_uid": self.stats.refused_uid.load(Ordering::Relaxed),
            "accept_errors": self.stats.accept_errors.load(Ordering::Relaxed),
        })
    }
}

/// Accepts connections on `listener` for as long as the task lives. For
/// each admitted one, `setup` runs first, on the accepted stream (where the
/// agent socket pins its peer), then `handle` answers each request.
pub async fn serve<C, S, H, F>(listener: UnixListener, gate: Arc<Gate>, setup: S, handle: H)
where
    C: Send + Sync + 'static,
    S: Fn(&UnixStream) -> C,
    H: Fn(Request<Incoming>, Arc<C>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<RespBody>> + Send + 'static,
{
    let mut backoff = Backoff::default();
    loop {
        let stream = match listener.accept().await {
            Ok((s, _)) => {
                backoff.reset();
                s
            }
            Err(e) => {
                gate.stats.accept_errors.fetch_add(1, Ordering::Relaxed);
                backoff.after_error(gate.name, &e).await;
                continue;
            }
        };
        let uid = stream.peer_cred().map(|c| c.uid()).unwrap_or(u32::MAX);
        let slot = match gate.admit(uid) {
            Ok(s) => s,
            Err(why) => {
                refuse(&stream, gate.name, uid, why);
                continue;
            }
        };
        let conn = Arc::new(setup(&stream));
        let handle = handle.clone();
        let header_timeout = gate.limits.header_timeout;
        tokio::spawn(async move {
            let _slot = slot;
            let svc = service_fn(move |req: Request<Incoming>| {
                let (conn, handle) = (conn.clone(), handle.clone());
                async move {
                    if let Some(r) = body::precheck(&req) {
                        return Ok::<_, Infallible>(r);
                    }
                    Ok(handle(req, conn).await)
                }
            });
            if let Err(e) = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(header_timeout)
                .max_buf_size(READ_BUF)
                .serve_connection(TokioIo::new(stream), svc)
                .await
            {
                debug!("connection: {e}");
            }
        });
    }
}

/// Best effort, never blocking: a client over the limit learns why instead
/// of seeing a bare reset.
fn refuse(stream: &UnixStream, socket: &str, uid: u32, why: Refusal) {
    let what = match why {
        Refusal::Global => "too many connections to this socket",
        Refusal::Uid => "too many connections from this uid",
    };
    debug!(socket, uid, "refused: {what}");
    let body = format!("{{\"error\":\"{what}\"}}\n");
    let msg = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n\
         content-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.try_write(msg.as_bytes());
}

/// Accept errors: out of descriptors (EMFILE/ENFILE) or kernel memory
/// leaves the connection queued, so retrying at once would spin. Waits
/// 10 ms doubling to 1 s, and warns at most every 10 s.
#[derive(Default)]
struct Backoff {
    delay: Option<Duration>,
    last_warn: Option<Instant>,
}

impl Backoff {
    fn reset(&mut self) {
        self.delay = None;
    }

    async fn after_error(&mut self, socket: &str, e: &std::io::Error) {
        let scarce = matches!(
            e.raw_os_error(),
            Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
        );
        if !scarce {
            // ECONNABORTED and friends concern one connection only.
            debug!(socket, "accept: {e}");
            return;
        }
        let d = self.delay.map_or(Duration::from_millis(10), |d| {
            (d * 2).min(Duration::from_secs(1))
        });
        self.delay = Some(d);
        if self
            .last_warn
            .is_none_or(|t| t.elapsed() > Duration::from_secs(10))
        {
            self.last_warn = Some(Instant::now());
            warn!(socket, "accept: {e}; backing off {d:?}");
        }
        tokio::time::sleep(d).await;
    }
}

/// Raises the soft descriptor limit to the hard one: the default soft 1024
/// is less than the connections the sockets admit plus maps, links and
/// cgroup files.
pub fn raise_nofile() -> Result<u64, nix::Error> {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    // Past 2^20, select()-based libraries and fd tables get silly.
    let want = hard.min(1 << 20);
    if soft < want {
        setrlimit(Resource::RLIMIT_NOFILE, want, hard)?;
    }
    Ok(want.max(soft))
}

/// Runs `fut` on a runtime and thread of its own, so the agent socket's
/// load (attestation reads procfs synchronously) cannot take the workers
/// that serve the control socket, the enforcer and the anomaly response.
pub fn spawn_isolated<F>(name: &str, fut: F) -> std::io::Result<()>
where
    F: Future<Output = ()> + Send + 'static,
{
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    std::thread::Builder::new()
        .name(name.to_string())
        .spawn(move || rt.block_on(fut))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(max: u32, per: u32) -> Limits {
        Limits {
            max_conns: max,
            per_uid: per,
            header_timeout: Duration::from_secs(1),
        }
    }

    #[test]
    fn admits_up_to_the_limits_and_frees_slots() {
        let g = Gate::new("t", limits(3, 2));
        let a = g.admit(1000).unwrap();
        let _b = g.admit(1000).unwrap();
        assert_eq!(g.admit(1000).err(), Some(Refusal::Uid));
        let _c = g.admit(0).unwrap();
        assert_eq!(g.admit(0).err(), Some(Refusal::Global));
        drop(a);
        let _d = g.admit(1000).unwrap();
        assert_eq!(g.stats.open.load(Ordering::Relaxed), 3);
        assert_eq!(g.stats.refused_uid.load(Ordering::Relaxed), 1);
        assert_eq!(g.stats.refused_global.load(Ordering::Relaxed), 1);
    }
}
