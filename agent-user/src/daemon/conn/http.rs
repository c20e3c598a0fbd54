//! HTTP answers both sockets give: JSON bodies, JSON errors, query
//! pairs. A leaf under `conn`, so the connection code and every route use
//! the same responders without the routes' module.

use std::convert::Infallible;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full, combinators::BoxBody};
use hyper::{Request, Response, StatusCode, body::Incoming};
use serde_json::{Value, json};

pub type RespBody = BoxBody<Bytes, Infallible>;

pub fn json_resp(code: StatusCode, v: Value) -> Response<RespBody> {
    let mut body = serde_json::to_vec_pretty(&v).expect("json");
    body.push(b'\n');
    Response::builder()
        .status(code)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)).boxed())
        .expect("response")
}

pub fn error(code: StatusCode, msg: impl ToString) -> Response<RespBody> {
    json_resp(code, json!({ "error": msg.to_string() }))
}

pub fn query(req: &Request<Incoming>) -> Vec<(String, String)> {
    req.uri()
        .query()
        .unwrap_or("")
        .split('&')
        .filter(|s| !s.is_empty())
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (k.to_string(), v.to_string())
        })
        .collect()
}
