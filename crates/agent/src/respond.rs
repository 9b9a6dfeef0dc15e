//! Building responses: Neutron's plain-text error page, and plain/JSON bodies.

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};
use http_body_util::Full;

/// The response type every handler returns.
pub type Resp = Response<Full<Bytes>>;

/// A body with a content type.
pub fn body(status: StatusCode, content_type: &'static str, data: impl Into<Bytes>) -> Resp {
    let mut r = Response::new(Full::new(data.into()));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}

/// `text/plain` 200.
pub fn text(data: impl Into<Bytes>) -> Resp {
    body(StatusCode::OK, "text/plain; charset=UTF-8", data)
}

/// `application/json` 200.
pub fn json(data: impl Into<Bytes>) -> Resp {
    body(StatusCode::OK, "application/json", data)
}

/// An error page shaped like the one Neutron's agent writes (common/metadata.py
/// `encode_http_reponse`): a title and a one-line explanation.
pub fn error(status: StatusCode, explanation: &str) -> Resp {
    let title = format!(
        "{} {}",
        status.as_u16(),
        status.canonical_reason().unwrap_or("Error")
    );
    let page = format!(
        "<html>\n <head>\n  <title>{title}</title>\n </head>\n <body>\n  <h1>{title}</h1>\n  {}<br /><br />\n\n\n </body>\n</html>",
        escape(explanation)
    );
    body(status, "text/plain; charset=UTF-8", page)
}

/// Keep client-controlled text (ids, paths) from being read as markup.
fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}
