//! A Nova metadata API stand-in on 127.0.0.1 that checks what real Nova checks
//! (nova/api/metadata/handler.py, `_handle_instance_id_request`): `X-Instance-ID-Signature` must
//! be the lowercase hex HMAC-SHA256 of `X-Instance-ID` keyed with the shared secret (403
//! otherwise), and `X-Tenant-ID` must be the instance's project (404 otherwise). It answers
//! `meta_data.json` with the instance's uuid and records every request for the test to inspect.
use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// One request as Nova received it (header names lowercased).
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub path: String,
    pub headers: HashMap<String, String>,
    pub status: u16,
}

/// The stand-in; stops on drop.
pub struct Nova {
    port: u16,
    seen: Arc<Mutex<Vec<Seen>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

/// Nova's signature: hex(HMAC-SHA256(secret, instance_id)).
pub fn sign(secret: &str, instance_id: &str) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("hmac takes any key");
    mac.update(instance_id.as_bytes());
    hex::encode(mac.finalize().into_bytes())
}

struct State {
    secret: String,
    /// instance uuid -> project id
    instances: HashMap<String, String>,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl Nova {
    /// Listen on 127.0.0.1 (ephemeral port) with Nova's `[neutron] metadata_proxy_shared_secret`
    /// = `secret`, knowing `instances` (uuid -> project id).
    pub fn start(secret: &str, instances: HashMap<String, String>) -> Nova {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind nova stand-in");
        let port = listener.local_addr().expect("local addr").port();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let state = Arc::new(State {
            secret: secret.to_owned(),
            instances,
            seen: seen.clone(),
        });
        let thread = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                for conn in listener.incoming() {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let Ok(conn) = conn else { continue };
                    let state = state.clone();
                    std::thread::spawn(move || serve(conn, &state));
                }
            })
        };
        Nova {
            port,
            seen,
            stop,
            thread: Some(thread),
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Every request received so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().expect("seen lock").clone()
    }
}

impl Drop for Nova {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = TcpStream::connect(("127.0.0.1", self.port)); // wake the accept loop
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Serve requests on one connection (keep-alive) until the client closes it.
fn serve(conn: TcpStream, state: &State) {
    let _ = conn.set_read_timeout(Some(Duration::from_secs(30)));
    let Ok(mut writer) = conn.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(conn);
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let mut parts = line.split_whitespace();
        let (method, path) = (
            parts.next().unwrap_or("").to_owned(),
            parts.next().unwrap_or("").to_owned(),
        );
        let mut headers = HashMap::new();
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
                headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_owned());
            }
        }
        let len: usize = headers
            .get("content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let mut body = vec![0u8; len.min(1 << 20)];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        let (status, ctype, text) = answer(state, &path, &headers);
        state.seen.lock().expect("seen lock").push(Seen {
            method,
            path,
            headers,
            status,
        });
        let reason = match status {
            200 => "OK",
            400 => "Bad Request",
            403 => "Forbidden",
            _ => "Not Found",
        };
        let resp = format!(
            "HTTP/1.1 {status} {reason}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\n\r\n{text}",
            text.len()
        );
        if writer.write_all(resp.as_bytes()).is_err() {
            return;
        }
    }
}

fn answer(
    state: &State,
    path: &str,
    headers: &HashMap<String, String>,
) -> (u16, &'static str, String) {
    let Some(instance) = headers.get("x-instance-id") else {
        return (
            400,
            "text/plain",
            "X-Instance-ID header is missing from request.".into(),
        );
    };
    let given = headers
        .get("x-instance-id-signature")
        .map(String::as_str)
        .unwrap_or("");
    if given != sign(&state.secret, instance) {
        // Nova's words for a bad signature (handler.py).
        return (403, "text/plain", "Invalid proxy request signature.".into());
    }
    match (state.instances.get(instance), headers.get("x-tenant-id")) {
        (Some(project), Some(tenant)) if project == tenant => {}
        _ => {
            return (
                404,
                "text/plain",
                "Instance not found or tenant mismatch.".into(),
            )
        }
    }
    let route = path.split('?').next().unwrap_or_default();
    if route.ends_with("meta_data.json") {
        let body = serde_json::json!({"uuid": instance, "project_id": headers.get("x-tenant-id"),
                                      "served_by": "nova-stand-in"});
        (200, "application/json", body.to_string())
    } else if route.ends_with("/instance-id") {
        (200, "text/plain", instance.clone())
    } else {
        (200, "text/plain", format!("nova-stand-in {path}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "3f2a91c0-0000-4000-8000-000000000001";

    fn ask(port: u16, headers: &[(&str, &str)]) -> (u16, String) {
        let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect stand-in");
        let mut req = String::from("GET /openstack/latest/meta_data.json HTTP/1.1\r\nHost: x\r\n");
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        req.push_str("\r\n");
        s.write_all(req.as_bytes()).expect("send");
        let mut buf = vec![0u8; 4096];
        let n = s.read(&mut buf).expect("read answer");
        let text = String::from_utf8_lossy(&buf[..n]).into_owned();
        let status = text[9..12].parse().expect("status code");
        let body = text
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_owned())
            .unwrap_or_default();
        (status, body)
    }

    #[test]
    fn signature_is_python_hmac_hexdigest() {
        // python3 -c "import hmac,hashlib; print(hmac.new(b'e2e-shared-secret', ID.encode(), hashlib.sha256).hexdigest())"
        assert_eq!(
            sign("e2e-shared-secret", ID),
            "724bedd98465773f4550d3e8fc3758ed1efb7c816c3814b72abf15e7d6316d9d"
        );
    }

    #[test]
    fn stand_in_refuses_a_bad_signature_and_a_wrong_tenant_like_nova() {
        let nova = Nova::start(
            "s3cret",
            HashMap::from([(ID.to_owned(), "proj".to_owned())]),
        );
        let good = sign("s3cret", ID);
        let (status, body) = ask(
            nova.port(),
            &[
                ("X-Instance-ID", ID),
                ("X-Tenant-ID", "proj"),
                ("X-Instance-ID-Signature", &good),
            ],
        );
        assert_eq!(status, 200, "{body}");
        assert!(body.contains(ID));
        let bad = sign("other", ID);
        let (status, _) = ask(
            nova.port(),
            &[
                ("X-Instance-ID", ID),
                ("X-Tenant-ID", "proj"),
                ("X-Instance-ID-Signature", &bad),
            ],
        );
        assert_eq!(status, 403);
        let (status, _) = ask(
            nova.port(),
            &[
                ("X-Instance-ID", ID),
                ("X-Tenant-ID", "nope"),
                ("X-Instance-ID-Signature", &good),
            ],
        );
        assert_eq!(status, 404);
        assert_eq!(nova.seen().len(), 3);
    }
}
