//! oslo.config's template syntax (`ConfigOpts._substitute` over `string.Template` with
//! `idpattern = [_a-z][._a-z0-9]*`, case-insensitive, `safe_substitute`): `$$` and `\$` are a
//! literal `$`; `$name`, `${name}` and `${group.name}` are replaced by what `lookup` answers;
//! a `$` not followed by a name (`$/`, `${a b}`, a trailing `$`) stays as it is. Replacement
//! text is not scanned again. Which option a name means is the caller's business.

/// A literal text as a value that substitutes back to itself: every `$` doubled. For a
/// program that passes values it has already resolved to another one that reads them through
/// this layer (the spawner's flags to its proxies). oslo cannot express a backslash directly
/// before a literal `$` (`\$` is its escape), so such a text does not survive.
pub fn escape(text: &str) -> String {
    text.replace('$', "$$")
}

/// Replace every reference in `value`; the first `lookup` error stops it.
pub(crate) fn substitute<E>(
    value: &str,
    mut lookup: impl FnMut(&str) -> Result<String, E>,
) -> Result<String, E> {
    // oslo: "Treat a backslash followed by the dollar sign \$ the same as $$".
    let value = value.replace(r"\$", "$$");
    let mut out = String::with_capacity(value.len());
    let mut rest = value.as_str();
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(n) = ident_len(after) {
            out.push_str(&lookup(&after[..n])?);
            rest = &after[n..];
        } else if let Some(n) = after
            .strip_prefix('{')
            .and_then(|b| ident_len(b).filter(|&n| b[n..].starts_with('}')))
        {
            out.push_str(&lookup(&after[1..=n])?);
            rest = &after[n + 2..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    Ok(out)
}

/// Whether `value` holds a reference (anything `substitute` would call `lookup` for).
pub(crate) fn has_reference(value: &str) -> bool {
    let mut found = false;
    let _ = substitute(value, |_| -> Result<String, ()> {
        found = true;
        Err(())
    });
    found
}

/// Length of the name at the start of `s`: `[_a-zA-Z][._a-zA-Z0-9]*`.
fn ident_len(s: &str) -> Option<usize> {
    let b = s.as_bytes();
    if !b
        .first()
        .is_some_and(|c| c.is_ascii_alphabetic() || *c == b'_')
    {
        return None;
    }
    Some(
        b.iter()
            .position(|c| !(c.is_ascii_alphanumeric() || *c == b'_' || *c == b'.'))
            .unwrap_or(b.len()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sub(v: &str) -> String {
        substitute(v, |name| -> Result<String, String> {
            match name {
                "state_path" => Ok("/s".into()),
                "ovn.host" => Ok("h".into()),
                "cost" => Ok("$5".into()),
                other => Err(format!("undefined {other}")),
            }
        })
        .unwrap_or_else(|e| e)
    }

    #[test]
    fn dollar_dollar_and_backslash_are_literal() {
        assert_eq!(sub("pa$$word"), "pa$word");
        assert_eq!(sub(r"pa\$word"), "pa$word");
        assert_eq!(sub("$$state_path"), "$state_path");
    }

    #[test]
    fn plain_braced_and_dotted_names() {
        assert_eq!(sub("$state_path/m"), "/s/m");
        assert_eq!(sub("${state_path}/m"), "/s/m");
        assert_eq!(sub("x${ovn.host}y"), "xhy");
        assert_eq!(sub("$ovn.host:1"), "h:1");
        // Replacement text is not scanned again.
        assert_eq!(sub("$cost"), "$5");
    }

    #[test]
    fn longest_name_is_taken_as_oslo_does() {
        assert_eq!(sub("$state_path_x"), "undefined state_path_x");
        assert_eq!(sub("$state_path.bak"), "undefined state_path.bak");
        assert_eq!(sub("$STATE_PATH"), "undefined STATE_PATH");
    }

    #[test]
    fn a_dollar_without_a_name_stays() {
        assert_eq!(sub("a$"), "a$");
        assert_eq!(sub("$/x $1 ${a b} ${"), "$/x $1 ${a b} ${");
        assert_eq!(sub("é$é"), "é$é");
        assert!(has_reference("${x}") && has_reference("a$b"));
        assert!(!has_reference("a$$b $1 plain"));
    }

    #[test]
    fn escaped_text_substitutes_back_to_itself() {
        for t in ["/srv/$state_path/x", "pa$$word", "$", "${a}", "plain"] {
            assert_eq!(sub(&escape(t)), t, "{t}");
        }
    }
}
