//! Turning an option's final text into its typed value, per [`Kind`]; the reasons returned
//! here become the tail of `place: reason` messages.

use std::path::PathBuf;
use std::time::Duration;

use crate::schema::Kind;

/// A checked value.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Typed {
    Str(String),
    Bool(bool),
    Int(i64),
    Seconds(Duration),
    Path(Option<PathBuf>),
    List(Vec<String>),
    Choice(&'static str),
}

/// Check `text` against `kind`.
pub(crate) fn convert(kind: &Kind, text: &str) -> Result<Typed, String> {
    let t = text.trim();
    Ok(match *kind {
        Kind::Str => Typed::Str(text.to_owned()),
        Kind::Bool => Typed::Bool(crate::parse_bool(t).ok_or_else(|| {
            format!("invalid boolean {text:?}: expected true/false, yes/no, on/off or 1/0")
        })?),
        Kind::Int { min, max } => Typed::Int(int(t, min, max, "integer")?),
        Kind::Port => Typed::Int(int(t, 1, 65_535, "port")?),
        Kind::Seconds { min, max } => {
            let s: f64 = t
                .parse()
                .ok()
                .filter(|s: &f64| s.is_finite())
                .ok_or_else(|| format!("invalid number of seconds {text:?}"))?;
            if s < min || s > max {
                return Err(format!("{t} is out of range {min}..={max} seconds"));
            }
            Typed::Seconds(
                Duration::try_from_secs_f64(s)
                    .map_err(|_| format!("{t} is out of range {min}..={max} seconds"))?,
            )
        }
        Kind::Path if t.is_empty() => Typed::Path(None),
        Kind::Path => {
            let p = PathBuf::from(t);
            if p.is_relative() {
                return Err(format!("{t:?} must be an absolute path"));
            }
            Typed::Path(Some(p))
        }
        Kind::List => Typed::List(
            t.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect(),
        ),
        Kind::Choice(names) => Typed::Choice(
            names
                .iter()
                .find(|n| n.eq_ignore_ascii_case(t))
                .copied()
                .ok_or_else(|| {
                    format!(
                        "invalid value {text:?}: expected one of {}",
                        names.join(", ")
                    )
                })?,
        ),
    })
}

fn int(t: &str, min: i64, max: i64, what: &str) -> Result<i64, String> {
    let n: i64 = t.parse().map_err(|_| format!("invalid {what} {t:?}"))?;
    if n < min || n > max {
        return Err(format!("{n} is out of range {min}..={max}"));
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(kind: Kind, text: &str) -> Typed {
        convert(&kind, text).expect(text)
    }

    fn err(kind: Kind, text: &str) -> String {
        convert(&kind, text).expect_err(text)
    }

    #[test]
    fn booleans_take_oslo_spellings() {
        for (t, b) in [("True", true), ("yes", true), ("ON", true), ("1", true)] {
            assert_eq!(ok(Kind::Bool, t), Typed::Bool(b));
        }
        for t in ["false", "No", "off", "0"] {
            assert_eq!(ok(Kind::Bool, t), Typed::Bool(false));
        }
        assert!(err(Kind::Bool, "maybe").starts_with("invalid boolean \"maybe\""));
    }

    #[test]
    fn integers_ports_and_ranges() {
        let k = Kind::Int { min: 0, max: 10 };
        assert_eq!(ok(k, " 7 "), Typed::Int(7));
        assert_eq!(err(k, "x"), "invalid integer \"x\"");
        assert_eq!(err(k, "11"), "11 is out of range 0..=10");
        assert_eq!(ok(Kind::Port, "8775"), Typed::Int(8775));
        assert_eq!(err(Kind::Port, "0"), "0 is out of range 1..=65535");
        assert_eq!(err(Kind::Port, "http"), "invalid port \"http\"");
    }

    #[test]
    fn seconds_accept_decimals_within_range() {
        let k = Kind::Seconds {
            min: 0.0,
            max: 86_400.0,
        };
        assert_eq!(ok(k, "2.5"), Typed::Seconds(Duration::from_millis(2500)));
        assert_eq!(ok(k, "60"), Typed::Seconds(Duration::from_secs(60)));
        assert_eq!(err(k, "-1"), "-1 is out of range 0..=86400 seconds");
        assert!(err(k, "soon").starts_with("invalid number of seconds"));
        assert!(err(k, "nan").starts_with("invalid number of seconds"));
    }

    #[test]
    fn paths_lists_choices() {
        assert_eq!(ok(Kind::Path, ""), Typed::Path(None));
        assert_eq!(ok(Kind::Path, "/a"), Typed::Path(Some("/a".into())));
        assert_eq!(err(Kind::Path, "a/b"), "\"a/b\" must be an absolute path");
        assert_eq!(
            ok(Kind::List, " 4, 6,,"),
            Typed::List(vec!["4".into(), "6".into()])
        );
        let c = Kind::Choice(&["http", "https"]);
        assert_eq!(ok(c, "HTTPS"), Typed::Choice("https"));
        assert_eq!(
            err(c, "ftp"),
            "invalid value \"ftp\": expected one of http, https"
        );
    }
}
