//! IMDSv2 session tokens: issued by `PUT /latest/api/token` for 1..21600 s, bound to the
//! instance that asked, checked on EC2-tree reads. Bounded in number.

use std::collections::HashMap;
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
/// Tokens kept at most; beyond that the ones closest to expiry go first.
const MAX_TOKENS: usize = 100_000;

/// The live tokens: token -> (instance uuid, expiry).
pub struct Tokens {
    map: Mutex<HashMap<String, (String, Instant)>>,
}

impl Default for Tokens {
    fn default() -> Self {
        Self::new()
    }
}

impl Tokens {
    pub fn new() -> Tokens {
        Tokens {
            map: Mutex::new(HashMap::new()),
        }
    }

    /// A new random token for `instance`, valid for `ttl` seconds.
    pub fn issue(&self, instance: &str, ttl: u32) -> String {
        let mut raw = [0u8; 32];
        rand::rng().fill_bytes(&mut raw);
        let token = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw);
        let now = Instant::now();
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() >= MAX_TOKENS {
            map.retain(|_, (_, exp)| *exp > now);
            while map.len() >= MAX_TOKENS {
                let oldest = map
                    .iter()
                    .min_by_key(|(_, (_, e))| *e)
                    .map(|(k, _)| k.clone());
                match oldest {
                    Some(k) => map.remove(&k),
                    None => break,
                };
            }
        }
        map.insert(
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
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        match map.get(token) {
            Some((owner, exp)) if *exp > Instant::now() => owner == instance,
            Some(_) => {
                map.remove(token);
                false
            }
            None => false,
        }
    }

    #[cfg(test)]
    pub(crate) fn expire_all(&self) {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        let past = Instant::now();
        for v in map.values_mut() {
            v.1 = past;
        }
    }
}
