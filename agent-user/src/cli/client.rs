//! HTTP/1.1 client for the daemon's unix socket.

use std::{path::PathBuf, time::Duration};

use anyhow::{Context as _, anyhow};
use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::net::UnixStream;

pub const DEFAULT_SOCKET: &str = "/run/corral/corral.sock";
const TIMEOUT: Duration = Duration::from_secs(10);

/// The daemon is unreachable; callers exit with a distinct status.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Unreachable(pub String);

pub struct Client {
    pub socket: PathBuf,
}

impl Client {
    async fn connect(
        &self,
    ) -> anyhow::Result<hyper::client::conn::http1::SendRequest<Full<Bytes>>> {
        let stream = match tokio::time::timeout(TIMEOUT, UnixStream::connect(&self.socket)).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                let why = match e.kind() {
                    std::io::ErrorKind::NotFound => "no socket there",
                    std::io::ErrorKind::ConnectionRefused => "stale socket, nobody listening",
                    std::io::ErrorKind::PermissionDenied => {
                        "permission denied (run as root or a member of the socket group)"
                    }
                    _ => "cannot connect",
                };
                return Err(Unreachable(format!(
                    "corral daemon is not reachable at {} ({why}: {e}); start it with \
                     `corral daemon` or `systemctl start corral`, or point --socket / \
                     $CORRAL_SOCKET at it",
                    self.socket.display()
                ))
                .into());
            }
            Err(_) => {
                return Err(Unreachable(format!(
                    "corral daemon at {} did not accept the connection within {TIMEOUT:?}",
                    self.socket.display()
                ))
                .into());
            }
        };
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(sender)
    }

    fn request(method: Method, path: &str, body: Option<&Value>) -> Request<Full<Bytes>> {
        let bytes = body
            .map(|b| serde_json::to_vec(b).expect("json"))
            .unwrap_or_default();
        Request::builder()
            .method(method)
            .uri(format!("http://corral{path}"))
            .header("host", "corral")
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(bytes)))
            .expect("request")
    }

    /// One request, whole JSON response.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> anyhow::Result<(StatusCode, Value)> {
        self.call_within(method, path, body, TIMEOUT * 6).await
    }

    /// [`Client::call`] for requests the daemon takes long to answer on
    /// purpose (a recording window).
    pub async fn call_within(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
        within: Duration,
    ) -> anyhow::Result<(StatusCode, Value)> {
        let mut s = self.connect().await?;
        let fut = async {
            let resp = s.send_request(Self::request(method, path, body)).await?;
            let status = resp.status();
            let bytes = resp.into_body().collect().await?.to_bytes();
            let v: Value = serde_json::from_slice(&bytes)
                .with_context(|| format!("daemon sent non-JSON ({status})"))?;
            anyhow::Ok((status, v))
        };
        tokio::time::timeout(within, fut)
            .await
            .map_err(|_| anyhow!("corral daemon did not answer {path} in time"))?
    }

    /// A call whose answer must be a success (`checked`).
    pub fn json(&self, method: Method, path: &str, body: Option<&Value>) -> anyhow::Result<Value> {
        let (status, v) = block_on(self.call(method, path, body))?;
        checked(status, v)
    }

    /// A streaming GET: calls `each` for every line until it returns false.
    pub async fn stream(
        &self,
        path: &str,
        mut each: impl FnMut(&[u8]) -> bool,
    ) -> anyhow::Result<()> {
        let mut s = self.connect().await?;
        let resp = s
            .send_request(Self::request(Method::GET, path, None))
            .await?;
        let status = resp.status();
        let mut body = resp.into_body();
        if !status.is_success() {
            let bytes = body.collect().await?.to_bytes();
            let v: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
            return Err(api_error(status, &v));
        }
        let mut buf: Vec<u8> = Vec::new();
        while let Some(frame) = body.frame().await {
            let frame = frame?;
            let Some(data) = frame.data_ref() else {
                continue;
            };
            buf.extend_from_slice(data);
            while let Some(pos) = buf.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = buf.drain(..=pos).collect();
                if !each(&line[..line.len() - 1]) {
                    return Ok(());
                }
            }
        }
        Err(anyhow!("the daemon closed the event stream"))
    }
}

/// Bad input from the user (unknown identity, bad flags): exit status 2.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

/// An answer's body if it is a success, else the error; a 404 that names
/// the known identities is the caller's mistake (exit status 2).
pub fn checked(status: StatusCode, v: Value) -> anyhow::Result<Value> {
    if status == StatusCode::NOT_FOUND && v.get("known").is_some() {
        return Err(UsageError(api_error(status, &v).to_string()).into());
    }
    if !status.is_success() {
        return Err(api_error(status, &v));
    }
    Ok(v)
}

/// `--json` output: the daemon's answer, pretty.
pub fn print_json(v: &Value) {
    println!(
        "{}",
        serde_json::to_string_pretty(v).expect("a Value serialises")
    );
}

/// Turns an API error body into a message (with the known identities when
/// the daemon lists them).
pub fn api_error(status: StatusCode, v: &Value) -> anyhow::Error {
    let msg = v["error"].as_str().unwrap_or("request failed").to_string();
    let mut out = format!("{msg} ({status})");
    if let Some(known) = v["known"].as_array() {
        let names: Vec<&str> = known.iter().filter_map(Value::as_str).collect();
        out = format!(
            "{msg}; known identities: {}",
            if names.is_empty() {
                "(none)".into()
            } else {
                names.join(", ")
            }
        );
    }
    if let Some(errs) = v["errors"].as_array() {
        for e in errs.iter().filter_map(Value::as_str) {
            out.push('\n');
            out.push_str(e);
        }
    }
    anyhow!(out)
}

/// Runs one async client operation on a throwaway current-thread runtime,
/// so `corral run` has no runtime threads left when it forks.
pub fn block_on<T>(f: impl std::future::Future<Output = anyhow::Result<T>>) -> anyhow::Result<T> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(f)
}
