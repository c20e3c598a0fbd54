//! Request bodies, bounded: every body the API takes is a small JSON
//! document, so one read helper for both sockets caps its size and the time
//! a client may take to send it.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Limited};
use hyper::{Request, Response, StatusCode, body::Incoming, header};
use serde::Deserialize;

use super::http::{RespBody, error};

/// Largest request body either socket reads.
pub const MAX: usize = 64 * 1024;
/// A body not complete this long after its headers is dropped: a client
/// dribbling bytes would otherwise hold its connection slot forever.
pub const READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Answers before routing when the headers already say the body is not
/// acceptable: declared too large (413), or sent without a length (411),
/// which would make the cap a mid-stream error instead.
pub fn precheck(req: &Request<Incoming>) -> Option<Response<RespBody>> {
    let h = req.headers();
    if h.contains_key(header::TRANSFER_ENCODING) {
        return Some(error(
            StatusCode::LENGTH_REQUIRED,
            "send request bodies with a Content-Length (chunked bodies are not accepted)",
        ));
    }
    let len = h
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    match len {
        Some(n) if n > MAX as u64 => Some(error(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("request body of {n} bytes is over the limit of {MAX} bytes"),
        )),
        _ => None,
    }
}

/// The body's bytes, within `MAX` and `READ_TIMEOUT`.
pub async fn read(req: Request<Incoming>) -> Result<Bytes, String> {
    let limited = Limited::new(req.into_body(), MAX);
    match tokio::time::timeout(READ_TIMEOUT, limited.collect()).await {
        Err(_) => Err(format!("request body not received within {READ_TIMEOUT:?}")),
        Ok(Err(e)) => Err(format!("reading the request body: {e}")),
        Ok(Ok(c)) => Ok(c.to_bytes()),
    }
}

/// A JSON body, or `T::default()` for an empty (or all-whitespace) one.
pub async fn json<T: for<'de> Deserialize<'de> + Default>(
    req: Request<Incoming>,
) -> Result<T, String> {
    let bytes = read(req).await?;
    parse(&bytes)
}

pub fn parse<T: for<'de> Deserialize<'de> + Default>(bytes: &[u8]) -> Result<T, String> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(bytes).map_err(|e| format!("bad JSON body: {e}"))
}
