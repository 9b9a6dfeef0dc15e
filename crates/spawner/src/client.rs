//! The control API client used by the CLI subcommands: one HTTP/1.1 request over the Unix
//! socket.

use std::path::Path;

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};

use crate::{Error, Result};

/// Send one request; returns the status and body.
pub async fn call(
    socket: &Path,
    method: Method,
    path: &str,
    body: Option<Vec<u8>>,
) -> Result<(StatusCode, Bytes)> {
    let stream = tokio::net::UnixStream::connect(socket).await.map_err(|e| {
        Error::io(
            "connect to control socket (is `ns-metadata-spawner run` running?)",
            socket,
            e,
        )
    })?;
    let (mut send, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(|e| Error::Invalid(format!("control socket {}: {e}", socket.display())))?;
    tokio::spawn(conn);
    let has_body = body.is_some();
    let mut req = Request::builder()
        .method(method)
        .uri(path)
        .header(http::header::HOST, "localhost");
    if has_body {
        req = req.header(http::header::CONTENT_TYPE, "application/json");
    }
    let req = req
        .body(Full::new(Bytes::from(body.unwrap_or_default())))
        .map_err(|e| Error::Invalid(format!("request: {e}")))?;
    let resp = send
        .send_request(req)
        .await
        .map_err(|e| Error::Invalid(format!("control socket {}: {e}", socket.display())))?;
    let status = resp.status();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| Error::Invalid(format!("control socket {}: {e}", socket.display())))?
        .to_bytes();
    Ok((status, body))
}

/// The `error` field of an error body, or the body itself.
pub fn reason(body: &[u8]) -> String {
    serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_owned))
        .unwrap_or_else(|| String::from_utf8_lossy(body).trim().to_owned())
}
