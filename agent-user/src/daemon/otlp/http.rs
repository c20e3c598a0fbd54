//! OTLP/HTTP transport: one kept-alive HTTP/1.1 connection to the
//! collector (hyper, already the API's server), protobuf bodies, and the
//! OTLP/HTTP answer codes sorted into sent / retry / drop.
//!
//! Plain `http://` only: a daemon-side TLS stack (and its trust store) is
//! not worth its weight when a collector on the host or a sidecar can
//! forward over TLS.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::{
    Request, StatusCode,
    client::conn::http1::{self, SendRequest},
    header::{self, HeaderName, HeaderValue},
};
use hyper_util::rt::TokioIo;
use prost::Message as _;

use super::proto::ExportLogsServiceResponse;

/// The collector's URL, checked at start-up.
#[derive(Debug, Clone)]
pub struct Endpoint {
    /// For `connect`: a name or address without brackets.
    host: String,
    port: u16,
    /// For the `Host` header: as written.
    authority: String,
    path: String,
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "http://{}{}", self.authority, self.path)
    }
}

/// `http://HOST[:PORT][/PATH]`; no path means the OTLP default `/v1/logs`.
pub fn parse_endpoint(s: &str) -> Result<Endpoint, String> {
    let uri: hyper::Uri = s.parse().map_err(|e| format!("`{s}` is not a URL: {e}"))?;
    match uri.scheme_str() {
        Some("http") => {}
        Some("https") => {
            return Err(
                "https is not supported: send to a collector on this host or a \
                 sidecar over http (e.g. http://127.0.0.1:4318) and let it forward over TLS"
                    .into(),
            );
        }
        _ => return Err(format!("`{s}`: the URL must start with http://")),
    }
    let auth = uri
        .authority()
        .ok_or_else(|| format!("`{s}` names no host"))?;
    if auth.as_str().contains('@') {
        return Err("credentials in the URL are not supported: use --otlp-header".into());
    }
    let host = auth.host().trim_start_matches('[').trim_end_matches(']');
    let path = match uri.path_and_query().map(|p| p.as_str()) {
        None | Some("") | Some("/") => "/v1/logs".to_string(),
        Some(p) => p.to_string(),
    };
    Ok(Endpoint {
        host: host.to_string(),
        port: auth.port_u16().unwrap_or(80),
        authority: auth.as_str().to_string(),
        path,
    })
}

/// A request header `NAME=VALUE` (authentication, tenant).
#[derive(Debug, Clone)]
pub struct Header(pub HeaderName, pub HeaderValue);

pub fn parse_header(s: &str) -> Result<Header, String> {
    let (k, v) = s
        .split_once('=')
        .ok_or_else(|| "expected NAME=VALUE".to_string())?;
    let name = HeaderName::try_from(k.trim()).map_err(|e| format!("header name `{k}`: {e}"))?;
    let mut value = HeaderValue::try_from(v.trim()).map_err(|e| format!("header value: {e}"))?;
    // Kept out of debug output: these are often credentials.
    value.set_sensitive(true);
    Ok(Header(name, value))
}

/// What became of one request.
#[derive(Debug, PartialEq)]
pub enum Outcome {
    /// Accepted; the collector may still have rejected some records.
    Sent { rejected: u64 },
    /// Worth trying again (the collector is away or busy).
    Retry {
        after: Option<Duration>,
        why: String,
    },
    /// Will never be accepted as it is (bad request, auth, payload size).
    Drop { why: String },
}

/// OTLP/HTTP: 429, 502, 503 and 504 are retryable, every other failure is
/// not.
pub fn classify(status: u16, retry_after: Option<&str>, body: &[u8]) -> Outcome {
    if (200..300).contains(&status) {
        let rejected = ExportLogsServiceResponse::decode(body)
            .ok()
            .and_then(|r| r.partial_success)
            .map_or(0, |p| p.rejected_log_records.max(0) as u64);
        return Outcome::Sent { rejected };
    }
    let why = format!(
        "collector answered {status}{}",
        StatusCode::from_u16(status)
            .ok()
            .and_then(|s| s.canonical_reason())
            .map_or(String::new(), |r| format!(" {r}"))
    );
    if matches!(status, 429 | 502 | 503 | 504) {
        // Seconds only; an HTTP date falls back to the back-off.
        let after = retry_after
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        Outcome::Retry { after, why }
    } else {
        Outcome::Drop { why }
    }
}

/// Collector answers beyond this are not read (a response is a few bytes).
const MAX_RESPONSE: usize = 64 * 1024;

pub struct Client {
    endpoint: Endpoint,
    headers: Vec<Header>,
    conn: Option<SendRequest<Full<Bytes>>>,
}

impl Client {
    pub fn new(endpoint: Endpoint, headers: Vec<Header>) -> Client {
        Client {
            endpoint,
            headers,
            conn: None,
        }
    }

    /// POSTs one `ExportLogsServiceRequest`, within `timeout` all told.
    pub async fn export(&mut self, body: Bytes, timeout: Duration) -> Outcome {
        match tokio::time::timeout(timeout, self.post(body)).await {
            Ok(Ok(o)) => o,
            Ok(Err(why)) => {
                self.conn = None;
                Outcome::Retry { after: None, why }
            }
            Err(_) => {
                // The request may be half-written: never reuse it.
                self.conn = None;
                Outcome::Retry {
                    after: None,
                    why: format!("no answer from {} within {timeout:?}", self.endpoint),
                }
            }
        }
    }

    async fn post(&mut self, body: Bytes) -> Result<Outcome, String> {
        let ep = &self.endpoint;
        let mut req = Request::post(ep.path.as_str())
            .header(header::HOST, ep.authority.as_str())
            .header(header::CONTENT_TYPE, "application/x-protobuf")
            .header(
                header::USER_AGENT,
                concat!("corral/", env!("CARGO_PKG_VERSION")),
            )
            .body(Full::new(body))
            .map_err(|e| e.to_string())?;
        for Header(k, v) in &self.headers {
            req.headers_mut().append(k.clone(), v.clone());
        }
        let conn = self.connection().await?;
        let resp = conn
            .send_request(req)
            .await
            .map_err(|e| format!("sending to {}: {e}", self.endpoint))?;
        let status = resp.status().as_u16();
        let retry_after = resp
            .headers()
            .get(header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let body = Limited::new(resp.into_body(), MAX_RESPONSE)
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        Ok(classify(status, retry_after.as_deref(), &body))
    }

    /// The kept connection, or a new one when the collector closed it.
    async fn connection(&mut self) -> Result<&mut SendRequest<Full<Bytes>>, String> {
        if let Some(c) = &mut self.conn
            && c.ready().await.is_err()
        {
            self.conn = None;
        }
        if self.conn.is_none() {
            let ep = &self.endpoint;
            let stream = tokio::net::TcpStream::connect((ep.host.as_str(), ep.port))
                .await
                .map_err(|e| format!("connecting to {ep}: {e}"))?;
            let _ = stream.set_nodelay(true);
            let (send, conn) = http1::handshake(TokioIo::new(stream))
                .await
                .map_err(|e| format!("connecting to {ep}: {e}"))?;
            // Ends by itself when the collector or this side closes.
            tokio::spawn(conn);
            self.conn = Some(send);
        }
        self.conn
            .as_mut()
            .ok_or_else(|| "no connection".to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_get_the_default_path_and_port() {
        let e = parse_endpoint("http://127.0.0.1:4318").unwrap();
        assert_eq!((e.host.as_str(), e.port), ("127.0.0.1", 4318));
        assert_eq!(e.to_string(), "http://127.0.0.1:4318/v1/logs");
        let e = parse_endpoint("http://collector/").unwrap();
        assert_eq!((e.port, e.path.as_str()), (80, "/v1/logs"));
        let e = parse_endpoint("http://[::1]:4318/custom/logs?tenant=a").unwrap();
        assert_eq!(e.host, "::1");
        assert_eq!(e.to_string(), "http://[::1]:4318/custom/logs?tenant=a");
        assert!(
            parse_endpoint("https://c:4318")
                .unwrap_err()
                .contains("https")
        );
        assert!(parse_endpoint("c:4318").is_err());
        assert!(parse_endpoint("http://u:p@c:4318").is_err());
    }

    #[test]
    fn headers_are_name_equals_value() {
        let Header(k, v) = parse_header("Authorization=Bearer x=y").unwrap();
        assert_eq!(
            (k.as_str(), v.to_str().unwrap()),
            ("authorization", "Bearer x=y")
        );
        assert!(v.is_sensitive());
        assert!(parse_header("novalue").is_err());
        assert!(parse_header("bad name=v").is_err());
    }

    #[test]
    fn answers_sort_into_sent_retry_and_drop() {
        assert_eq!(classify(200, None, b""), Outcome::Sent { rejected: 0 });
        let partial = super::super::proto::ExportLogsServiceResponse {
            partial_success: Some(super::super::proto::ExportLogsPartialSuccess {
                rejected_log_records: 3,
                error_message: "too old".into(),
            }),
        };
        let body = partial.encode_to_vec();
        assert_eq!(classify(200, None, &body), Outcome::Sent { rejected: 3 });
        for s in [429, 502, 503, 504] {
            assert!(matches!(
                classify(s, None, b""),
                Outcome::Retry { after: None, .. }
            ));
        }
        let Outcome::Retry { after, why } = classify(503, Some("7"), b"") else {
            panic!("retry");
        };
        assert_eq!(after, Some(Duration::from_secs(7)));
        assert_eq!(why, "collector answered 503 Service Unavailable");
        let date = classify(429, Some("Wed, 21 Oct 2015 07:28:00 GMT"), b"");
        assert!(matches!(date, Outcome::Retry { after: None, .. }));
        for s in [400, 401, 403, 404, 413, 500] {
            assert!(
                matches!(classify(s, None, b""), Outcome::Drop { .. }),
                "{s}"
            );
        }
    }
}
