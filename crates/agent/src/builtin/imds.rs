//! IMDSv2 session tokens: issued by `PUT /latest/api/token` for 1..21600 s, bound to the
//! instance that asked, checked on EC2-tree reads. Bounded per instance.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use base64::Engine as _;
use rand::RngCore;

/// Request header carrying the token.
pub const TOKEN_HEADER: &str = "x-aws-ec2-metadata-token";
/// Request (and response) header with the lifetime in seconds.
pub const TTL_HEADER: &str = "x-aws-ec2-metadata-token-ttl-seconds";
/// AWS's maximum token lifetime (6 hours).
pub const MAX_TTL: u32 = 21_600;
/// Live tokens kept per instance; a new one beyond this replaces that instance's oldest, so
/// one guest asking in a loop cannot push out other guests' sessions.
const PER_INSTANCE: usize = 256;

#[derive(Default)]
struct Inner {
    /// token -> (instance uuid, expiry)
    by_token: HashMap<String, (String, Instant)>,
    /// instance uuid -> its tokens, oldest first
    by_instance: HashMap<String, VecDeque<String>>,
}

/// The live tokens. Memory is bounded by PER_INSTANCE times the instances in the inventory
/// (tokens are only issued to resolved instances).
#[derive(Default)]
pub struct Tokens {
    inner: Mutex<Inner>,
}

impl Tokens {
    pub fn new() -> Tokens {
        Tokens::default()
    }

    /// A new random token for `instance`, valid for `ttl` seconds.
    pub fn issue(&self, instance: &str, ttl: u32) -> String {
        let mut raw = [0u8; 32];
        rand::rng().fill_bytes(&mut raw);
        let token = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw);
        let now = Instant::now();
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let inner = &mut *g;
        let list = inner.by_instance.entry(instance.to_owned()).or_default();
        // Drop this instance's expired tokens, then its oldest if still at the cap.
        list.retain(|t| inner.by_token.get(t).is_some_and(|(_, exp)| *exp > now));
        while list.len() >= PER_INSTANCE {
            if let Some(old) = list.pop_front() {
                inner.by_token.remove(&old);
            }
        }
        list.push_back(token.clone());
        inner.by_token.insert(
            token.clone(),
            (
                instance.to_owned(),
                now + Duration::from_secs(u64::from(ttl)),
            ),
        );
        token
    }

    /// Whether `token` is live and belongs to `instance` (a token from another VM is invalid).
    pub fn check(&self, token: &str, instance: &str) -> bool {
        let g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        g.by_token
            .get(token)
            .is_some_and(|(owner, exp)| *exp > Instant::now() && owner == instance)
    }

    #[cfg(test)]
    pub(crate) fn expire_all(&self) {
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let past = Instant::now();
        for v in g.by_token.values_mut() {
            v.1 = past;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_guest_cannot_evict_anothers_token() {
        let t = Tokens::new();
        let other = t.issue("vm-b", 600);
        let first = t.issue("vm-a", 600);
        for _ in 0..PER_INSTANCE {
            t.issue("vm-a", 600);
        }
        assert!(t.check(&other, "vm-b"));
        assert!(!t.check(&first, "vm-a"), "vm-a's oldest token made room");
        assert!(!t.check(&other, "vm-a"));
    }
}
