//! The built-in metadata responder: answers from the inventory as Nova's metadata API
//! would for the same instance (nova/api/metadata/handler.py and base.py), plus IMDSv2
//! session tokens on the EC2 tree.

mod ec2;
mod imds;
mod netdata;
mod openstack;

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;

use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use ns_contract::headers::X_NS_METADATA_CLIENT_FORWARDED;
use serde_json::Value;

use crate::inventory::{Instance, Snapshot};
use crate::respond::{error, text, Resp};

pub use imds::{Tokens, TOKEN_HEADER, TTL_HEADER};

/// Options of the built-in responder.
#[derive(Debug, Clone)]
pub struct BuiltinOptions {
    /// Appended to the hostname, as Nova's `[api] dhcp_domain` (default "novalocal").
    pub dhcp_domain: String,
    /// Refuse EC2-tree reads that carry no IMDSv2 token.
    pub require_token: bool,
}

/// What the responder knows about the request.
pub struct Ctx<'a> {
    pub snap: &'a Snapshot,
    pub inst: &'a Instance,
    /// The client address (X-Forwarded-For): EC2 `local-ipv4` when the instance has none.
    pub client_ip: IpAddr,
}

/// Shared state: IMDSv2 tokens and passwords posted by guests (in memory only).
pub struct Builtin {
    opts: BuiltinOptions,
    tokens: Tokens,
    passwords: Mutex<HashMap<String, String>>,
}

/// Nova's password size limit (password.py: 4 chunks of 255).
const MAX_PASSWORD: usize = 4 * 255;

/// The path as Nova sees it: percent-decoded (webob's PATH_INFO), then `posixpath.normpath`:
/// collapse `//`, drop `.`, resolve `..`; no trailing slash.
pub fn normpath(path: &str) -> Vec<String> {
    let decoded = percent_decode(path);
    let mut out: Vec<String> = Vec::new();
    for seg in decoded.split('/') {
        match seg {
            "" | "." => {}
            ".." => {
                out.pop();
            }
            s => out.push(s.to_owned()),
        }
    }
    out
}

/// `%XX` to bytes (invalid escapes are kept as they are), read as UTF-8 (lossy).
fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        if b[i] == b'%' && i + 2 < b.len() {
            if let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2])) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

impl Builtin {
    pub fn new(opts: BuiltinOptions) -> Builtin {
        Builtin {
            opts,
            tokens: Tokens::new(),
            passwords: Mutex::new(HashMap::new()),
        }
    }

    /// Answer one request for the instance in `ctx`.
    pub fn respond(
        &self,
        method: &Method,
        path: &str,
        headers: &HeaderMap,
        body: &Bytes,
        ctx: &Ctx<'_>,
    ) -> Resp {
        let owned = normpath(path);
        let mut tokens: Vec<&str> = owned.iter().map(String::as_str).collect();
        // Nova: anything not under /openstack or /ec2 is the EC2 tree.
        if tokens
            .first()
            .is_none_or(|t| *t != "openstack" && *t != "ec2")
        {
            tokens.insert(0, "ec2");
        }
        let (tree, rest) = tokens.split_at(1);
        if tree[0] == "openstack" {
            return self.openstack(method, rest, body, ctx);
        }
        if rest.len() == 3 && rest[1..] == ["api", "token"] {
            return self.token(method, rest[0], headers, ctx);
        }
        if let Some(t) = headers.get(TOKEN_HEADER) {
            let ok = t
                .to_str()
                .is_ok_and(|t| self.tokens.check(t, &ctx.inst.uuid));
            if !ok {
                return error(
                    StatusCode::UNAUTHORIZED,
                    "The IMDSv2 session token is invalid or expired.",
                );
            }
        } else if self.opts.require_token && !rest.is_empty() {
            return error(
                StatusCode::UNAUTHORIZED,
                "An IMDSv2 session token is required: PUT /latest/api/token first.",
            );
        }
        ec2::respond(rest, ctx, &self.opts)
    }

    fn token(&self, method: &Method, version: &str, headers: &HeaderMap, ctx: &Ctx<'_>) -> Resp {
        if version != "latest" {
            return error(
                StatusCode::NOT_FOUND,
                "Session tokens are issued at /latest/api/token.",
            );
        }
        if method != Method::PUT {
            let mut r = error(
                StatusCode::METHOD_NOT_ALLOWED,
                "Use PUT to get a session token.",
            );
            r.headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static("PUT"));
            return r;
        }
        // AWS's anti-SSRF rule: a token PUT that came through a reverse proxy (it carries
        // X-Forwarded-For) is refused. Our proxy replaces the guest's X-Forwarded-For and
        // marks the request instead; Neutron's haproxy does not, so behind it this rule is off.
        if headers.contains_key(X_NS_METADATA_CLIENT_FORWARDED.lower) {
            return error(
                StatusCode::FORBIDDEN,
                "Session tokens are not issued to requests forwarded by a proxy (X-Forwarded-For).",
            );
        }
        let ttl = headers
            .get(TTL_HEADER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u32>().ok())
            .filter(|t| (1..=imds::MAX_TTL).contains(t));
        let Some(ttl) = ttl else {
            return error(
                StatusCode::BAD_REQUEST,
                "X-aws-ec2-metadata-token-ttl-seconds must be an integer from 1 to 21600.",
            );
        };
        let token = self.tokens.issue(&ctx.inst.uuid, ttl);
        let mut r = text(token);
        r.headers_mut().insert(TTL_HEADER, HeaderValue::from(ttl));
        r
    }

    fn openstack(&self, method: &Method, rest: &[&str], body: &Bytes, ctx: &Ctx<'_>) -> Resp {
        if rest.len() == 2 && rest[1] == "password" && openstack::version(rest[0]).is_some() {
            return self.password(method, rest[0], body, ctx);
        }
        openstack::respond(rest, ctx, &self.opts)
    }

    /// nova/api/metadata/password.py: GET reads, POST sets once (409 after), max 1020 bytes.
    fn password(&self, method: &Method, version: &str, body: &Bytes, ctx: &Ctx<'_>) -> Resp {
        if openstack::version(version).is_none_or(|v| v < openstack::GRIZZLY) {
            return error(StatusCode::NOT_FOUND, "The resource could not be found.");
        }
        let mut pw = self.passwords.lock().unwrap_or_else(|p| p.into_inner());
        match *method {
            Method::GET | Method::HEAD => text(pw.get(&ctx.inst.uuid).cloned().unwrap_or_default()),
            Method::POST => {
                if pw.get(&ctx.inst.uuid).is_some_and(|p| !p.is_empty()) {
                    return error(StatusCode::CONFLICT, "A password is already set.");
                }
                if body.len() > MAX_PASSWORD {
                    return error(StatusCode::BAD_REQUEST, "Request is too large.");
                }
                pw.insert(
                    ctx.inst.uuid.clone(),
                    String::from_utf8_lossy(body).into_owned(),
                );
                text(Bytes::new())
            }
            _ => error(StatusCode::BAD_REQUEST, "GET and POST only are supported."),
        }
    }
}

/// The hostname Nova reports: `hostname[.dhcp_domain]`, falling back to the name or uuid.
pub(crate) fn hostname(inst: &Instance, opts: &BuiltinOptions) -> String {
    let base = inst
        .hostname
        .clone()
        .or_else(|| inst.name.clone())
        .unwrap_or_else(|| inst.uuid.clone());
    if opts.dhcp_domain.is_empty() {
        base
    } else {
        format!("{base}.{}", opts.dhcp_domain)
    }
}

/// Vendor data: the instance's own, else the file-wide one, else `{}` (Nova's StaticJSON).
pub(crate) fn vendor_data(ctx: &Ctx<'_>) -> Value {
    ctx.inst
        .vendor_data
        .clone()
        .or_else(|| ctx.snap.inventory.vendor_data.clone())
        .unwrap_or_else(|| Value::Object(Default::default()))
}

#[cfg(test)]
mod tests;
