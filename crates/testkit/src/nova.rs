//! One Nova metadata API stand-in on 127.0.0.1 that checks what Nova checks
//! (nova/api/metadata/handler.py, `_handle_instance_id_request`): `X-Instance-ID` and
//! `X-Tenant-ID` present (400), `X-Instance-ID-Signature` the lowercase hex HMAC-SHA256 of the
//! instance id keyed with the shared secret (403, Nova's words), and, when it knows the
//! instances, the tenant the instance's project (404). It records every request, and serves
//! plain HTTP or HTTPS (rustls) from std threads, so sync and async tests use it alike.
//!
//! Answers to a request that passes the checks: `/status/NNN` -> NNN `status NNN`;
//! `/empty/NNN` -> NNN with an empty body; `/untyped/NNN` -> the same without a
//! `Content-Type` (Neutron's agent fails on that and closes without a reply). Then, from an
//! echoing stand-in ([`Nova::echo`]), 200 with the request itself as JSON (read it with
//! [`Seen::from_echo`]); otherwise `/gzip` -> gzip bytes with `Content-Encoding: gzip`;
//! `...meta_data.json` -> JSON with `uuid`, `project_id`, `served_by: nova-stand-in`;
//! `.../instance-id` -> the id; anything else 200 `{"uuid": "<id>"}`. Every answer carries
//! `X-Nova-Test: relayed`; the answer to a HEAD has no body.
use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

/// gzip of "hi\n" (as `printf 'hi\n' | gzip -n` writes it).
pub const GZIP_BODY: &[u8] = &[
    0x1f, 0x8b, 0x08, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x03, 0xcb, 0xc8, 0xe4, 0x02, 0x00, 0x7a,
    0x7a, 0x6f, 0xed, 0x03, 0x00, 0x00, 0x00,
];

/// Nova's signature: hex(HMAC-SHA256(secret, instance_id)).
pub fn sign(secret: &str, instance_id: &str) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("hmac takes any key");
    mac.update(instance_id.as_bytes());
    hex::encode(mac.finalize().into_bytes())
}

/// Nova's check, independent of the code under test: lowercase hex of the right HMAC.
pub fn signature_ok(secret: &str, instance_id: &str, signature: &str) -> bool {
    signature == sign(secret, instance_id)
}

/// One request as the stand-in received it (also the body of an echoing stand-in's answer).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Seen {
    pub method: String,
    /// The request target as sent: path and query.
    pub path: String,
    /// Header names as sent.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// The status it was answered with (not part of an echo).
    #[serde(skip)]
    pub status: u16,
}

impl Seen {
    /// The request an echoing stand-in ([`Nova::echo`]) answered with; panics on another body.
    pub fn from_echo(body: &[u8]) -> Seen {
        serde_json::from_slice(body)
            .unwrap_or_else(|e| panic!("not a Nova echo ({e}): {}", crate::http::show(body)))
    }

    /// The path without the query.
    pub fn route(&self) -> &str {
        self.path.split('?').next().unwrap_or_default()
    }

    /// The query (after `?`), if any.
    pub fn query(&self) -> Option<&str> {
        self.path.split_once('?').map(|(_, q)| q)
    }

    /// The first header of that name (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

struct State {
    secret: String,
    /// instance uuid -> project id; `None`: any instance, any tenant.
    instances: Option<HashMap<String, String>>,
    /// Answer with the request itself (after the checks and the status routes).
    echo: bool,
    seen: Mutex<Vec<Seen>>,
}

/// The stand-in; stops accepting on drop.
pub struct Nova {
    pub addr: SocketAddr,
    state: Arc<State>,
    stop: Arc<AtomicBool>,
}

impl Nova {
    /// Plain HTTP, any instance.
    pub fn start(secret: &str) -> Nova {
        Nova::launch(secret, None, None, false)
    }

    /// Plain HTTP, knowing `instances` (uuid -> project id): others, or another tenant, 404.
    pub fn with_instances(secret: &str, instances: HashMap<String, String>) -> Nova {
        Nova::launch(secret, Some(instances), None, false)
    }

    /// HTTPS with this server configuration, any instance.
    pub fn start_tls(secret: &str, tls: Arc<rustls::ServerConfig>) -> Nova {
        Nova::launch(secret, None, Some(tls), false)
    }

    /// Plain HTTP, any instance, answering a signed request with the request itself as JSON
    /// ([`Seen::from_echo`]), so a test sees what reached Nova through the code under test.
    pub fn echo(secret: &str) -> Nova {
        Nova::launch(secret, None, None, true)
    }

    fn launch(
        secret: &str,
        instances: Option<HashMap<String, String>>,
        tls: Option<Arc<rustls::ServerConfig>>,
        echo: bool,
    ) -> Nova {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind nova stand-in");
        let addr = listener.local_addr().expect("local addr");
        let state = Arc::new(State {
            secret: secret.to_owned(),
            instances,
            echo,
            seen: Mutex::new(Vec::new()),
        });
        let stop = Arc::new(AtomicBool::new(false));
        let (st, stop2) = (state.clone(), stop.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if stop2.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(conn) = conn else { continue };
                let _ = conn.set_read_timeout(Some(Duration::from_secs(30)));
                let (st, tls) = (st.clone(), tls.clone());
                std::thread::spawn(move || match tls {
                    None => serve(conn, &st),
                    Some(cfg) => {
                        let Ok(session) = rustls::ServerConnection::new(cfg) else {
                            return;
                        };
                        serve(rustls::StreamOwned::new(session, conn), &st);
                    }
                });
            }
        });
        Nova { addr, state, stop }
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Every request received so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.state.seen.lock().expect("seen lock").clone()
    }

    /// The last request received; panics if there was none.
    pub fn last(&self) -> Seen {
        self.seen().pop().expect("nova saw a request")
    }
}

impl Drop for Nova {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(self.addr); // wake the accept loop
    }
}

/// Serve requests on one connection (keep-alive) until the client closes it.
fn serve(conn: impl Read + Write, state: &State) {
    let mut reader = BufReader::new(conn);
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let mut parts = line.split_whitespace();
        let method = parts.next().unwrap_or("").to_owned();
        let path = parts.next().unwrap_or("").to_owned();
        let mut headers = Vec::new();
        loop {
            let mut h = String::new();
            if reader.read_line(&mut h).unwrap_or(0) == 0 {
                return;
            }
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                headers.push((k.trim().to_owned(), v.trim().to_owned()));
            }
        }
        let mut seen = Seen {
            method,
            path,
            headers,
            body: Vec::new(),
            status: 0,
        };
        let len: usize = seen
            .header("content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        seen.body = vec![0u8; len.min(1 << 20)];
        if reader.read_exact(&mut seen.body).is_err() {
            return;
        }
        let Answer {
            status,
            ctype,
            body,
            gzip,
        } = answer(state, &seen);
        seen.status = status;
        let head_only = seen.method == "HEAD";
        state.seen.lock().expect("seen lock").push(seen);
        let reason = match status {
            200 => "OK",
            400 => "Bad Request",
            403 => "Forbidden",
            404 => "Not Found",
            _ => "Status",
        };
        let mut out = format!(
            "HTTP/1.1 {status} {reason}\r\nContent-Length: {}\r\nX-Nova-Test: relayed\r\n",
            body.len()
        );
        if let Some(ctype) = ctype {
            out.push_str(&format!("Content-Type: {ctype}\r\n"));
        }
        if gzip {
            out.push_str("Content-Encoding: gzip\r\n");
        }
        out.push_str("\r\n");
        let mut out = out.into_bytes();
        if !head_only {
            out.extend_from_slice(&body);
        }
        let w = reader.get_mut();
        if w.write_all(&out).and_then(|()| w.flush()).is_err() {
            return;
        }
    }
}

/// What the stand-in answers one request with.
struct Answer {
    status: u16,
    /// `None`: no `Content-Type` header at all.
    ctype: Option<&'static str>,
    body: Vec<u8>,
    gzip: bool,
}

impl Answer {
    fn new(status: u16, ctype: &'static str, body: impl Into<Vec<u8>>) -> Answer {
        Answer {
            status,
            ctype: Some(ctype),
            body: body.into(),
            gzip: false,
        }
    }

    fn text(status: u16, text: &str) -> Answer {
        Answer::new(status, "text/plain", text)
    }
}

fn answer(state: &State, req: &Seen) -> Answer {
    let (Some(instance), Some(tenant)) = (req.header("x-instance-id"), req.header("x-tenant-id"))
    else {
        return Answer::text(
            400,
            "X-Instance-ID or X-Tenant-ID header is missing from request.",
        );
    };
    let given = req.header("x-instance-id-signature").unwrap_or("");
    if !signature_ok(&state.secret, instance, given) {
        // Nova's words for a bad signature (handler.py).
        return Answer::text(403, "Invalid proxy request signature.");
    }
    if let Some(known) = &state.instances {
        if known.get(instance).map(String::as_str) != Some(tenant) {
            return Answer::text(404, "Instance not found or tenant mismatch.");
        }
    }
    let route = req.route();
    let code = |rest: &str| rest.parse().unwrap_or(500);
    if let Some(c) = route.strip_prefix("/status/") {
        return Answer::text(code(c), &format!("status {c}"));
    }
    if let Some(c) = route.strip_prefix("/empty/") {
        return Answer::text(code(c), "");
    }
    if let Some(c) = route.strip_prefix("/untyped/") {
        return Answer {
            ctype: None,
            ..Answer::text(code(c), "")
        };
    }
    if state.echo {
        let echo = serde_json::to_vec(req).expect("a request serialises");
        return Answer::new(200, "application/json", echo);
    }
    if route == "/gzip" {
        // Already-compressed user data (LP#2156587): must reach the VM byte for byte.
        return Answer {
            gzip: true,
            ..Answer::new(200, "application/octet-stream", GZIP_BODY)
        };
    }
    if route.ends_with("meta_data.json") {
        let body = serde_json::json!({"uuid": instance, "project_id": tenant,
                                      "served_by": "nova-stand-in"});
        return Answer::new(200, "application/json", body.to_string());
    }
    if route.ends_with("/instance-id") {
        return Answer::text(200, instance);
    }
    Answer::new(
        200,
        "application/json",
        format!("{{\"uuid\": \"{instance}\"}}"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::Blocking;

    const ID: &str = "3f2a91c0-0000-4000-8000-000000000001";

    fn ask(nova: &Nova, headers: &[(&str, &str)]) -> (u16, String) {
        let mut c = Blocking::tcp(nova.addr, Duration::from_secs(2)).expect("connect");
        let mut req = String::from("GET /openstack/latest/meta_data.json HTTP/1.1\r\nHost: x\r\n");
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        req.push_str("\r\n");
        c.send(req.as_bytes()).expect("send");
        let r = c.read(false, Duration::from_secs(5)).expect("answer");
        (r.status, r.text())
    }

    #[test]
    fn signature_is_python_hmac_hexdigest() {
        // python3 -c "import hmac,hashlib; print(hmac.new(b'e2e-shared-secret', ID.encode(), hashlib.sha256).hexdigest())"
        assert_eq!(
            sign("e2e-shared-secret", ID),
            "724bedd98465773f4550d3e8fc3758ed1efb7c816c3814b72abf15e7d6316d9d"
        );
        assert!(!signature_ok(
            "e2e-shared-secret",
            ID,
            &sign("e2e-shared-secret", ID).to_uppercase()
        ));
    }

    #[test]
    fn refuses_a_bad_signature_and_a_wrong_tenant_like_nova() {
        let nova = Nova::with_instances("s3cret", HashMap::from([(ID.into(), "proj".into())]));
        let good = sign("s3cret", ID);
        let h = |tenant, sig| {
            [
                ("X-Instance-ID", ID),
                ("X-Tenant-ID", tenant),
                ("X-Instance-ID-Signature", sig),
            ]
        };
        let (status, body) = ask(&nova, &h("proj", &good));
        assert_eq!(status, 200, "{body}");
        assert!(body.contains(ID));
        let bad = sign("other", ID);
        assert_eq!(ask(&nova, &h("proj", &bad)).0, 403);
        assert_eq!(ask(&nova, &h("nope", &good)).0, 404);
        assert_eq!(ask(&nova, &[("X-Instance-ID", ID)]).0, 400);
        assert_eq!(nova.seen().len(), 4);
        assert_eq!(nova.last().header("x-instance-id"), Some(ID));
    }

    #[test]
    fn echo_answers_with_the_request_and_bare_statuses() {
        let nova = Nova::echo("s3cret");
        let sig = sign("s3cret", ID);
        let send = |raw: String| {
            let mut c = Blocking::tcp(nova.addr, Duration::from_secs(2)).expect("connect");
            c.send(raw.as_bytes()).expect("send");
            c.read(false, Duration::from_secs(5)).expect("answer")
        };
        let ids =
            format!("X-Instance-ID: {ID}\r\nX-Tenant-ID: p\r\nX-Instance-ID-Signature: {sig}\r\n");
        let r = send(format!(
            "POST /a/instance-id?n=1 HTTP/1.1\r\n{ids}Content-Length: 2\r\n\r\nhi"
        ));
        let echo = Seen::from_echo(&r.body);
        assert_eq!(
            (echo.method.as_str(), echo.route(), echo.query()),
            ("POST", "/a/instance-id", Some("n=1"))
        );
        assert_eq!(
            (echo.header("x-tenant-id"), echo.body.as_slice()),
            (Some("p"), &b"hi"[..])
        );
        let r = send(format!("GET /untyped/404 HTTP/1.1\r\n{ids}\r\n"));
        assert_eq!(
            (r.status, r.header("content-type"), r.body.len()),
            (404, None, 0)
        );
        let r = send(format!("GET /empty/404 HTTP/1.1\r\n{ids}\r\n"));
        assert_eq!(
            (r.status, r.header("content-type")),
            (404, Some("text/plain"))
        );
    }
}
