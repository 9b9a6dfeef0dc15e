//! Name-based UUIDs, version 5 (RFC 4122 §4.3, SHA-1), as Python's `uuid.uuid5`, and the
//! parsing rule of Python's `uuid.UUID(str)` that Neutron applies to the chassis name.

use sha1::{Digest, Sha1};

/// A UUID as 16 bytes.
pub type Bytes = [u8; 16];

/// `uuid.uuid5(namespace, name)`.
pub fn uuid5(namespace: &Bytes, name: &str) -> Bytes {
    let mut h = Sha1::new();
    h.update(namespace);
    h.update(name.as_bytes());
    let digest = h.finalize();
    let mut out = [0u8; 16];
    out.copy_from_slice(&digest[..16]);
    out[6] = (out[6] & 0x0f) | 0x50; // version 5
    out[8] = (out[8] & 0x3f) | 0x80; // RFC 4122 variant
    out
}

/// `uuid.UUID(s)`: `urn:uuid:` and braces dropped, hyphens ignored, 32 hex digits.
pub fn parse(s: &str) -> Option<Bytes> {
    let s = s.replace("urn:", "").replace("uuid:", "");
    let hex: String = s
        .trim_matches(|c| c == '{' || c == '}')
        .chars()
        .filter(|c| *c != '-')
        .collect();
    if hex.len() != 32 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let mut out = [0u8; 16];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

/// The canonical lowercase 8-4-4-4-12 form.
pub fn format(u: &Bytes) -> String {
    let h = hex::encode(u);
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_python() {
        // python3 -c "import uuid; print(uuid.uuid5(uuid.NAMESPACE_DNS, 'python.org'))"
        let dns = parse("6ba7b810-9dad-11d1-80b4-00c04fd430c8").expect("ns");
        assert_eq!(
            format(&uuid5(&dns, "python.org")),
            "886313e1-3b8a-5372-9b90-0c9aee199e5d"
        );
        assert_eq!(
            parse("{6BA7B810-9DAD-11D1-80B4-00C04FD430C8}"),
            Some(dns),
            "braces and upper case, as uuid.UUID"
        );
        assert_eq!(
            parse("urn:uuid:6ba7b8109dad11d180b400c04fd430c8"),
            Some(dns)
        );
        assert_eq!(parse("compute-1"), None);
        assert_eq!(parse("6ba7b810-9dad-11d1-80b4-00c04fd430cz"), None);
    }
}
