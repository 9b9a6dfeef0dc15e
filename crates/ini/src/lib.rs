//! INI files as oslo.config reads them (Neutron's `*.ini`), with every value remembering the
//! file and line it came from, so a bad value is reported as `file:line: [section] key: reason`.
//!
//! Rules (oslo.config's `iniparser`): `[section]` headers; `key = value` or `key: value`;
//! comment lines start with `#` or `;` (no inline comments: `#` inside a value is kept);
//! an indented line continues the previous value (joined with `\n`); a value wrapped in
//! matching quotes loses them. Keys are matched with `-` and `_` treated alike. When several
//! files are loaded, later files win, as with repeated `--config-file`.
//!
//! On top of the parser sits the option layer a program declares its options with: a
//! [`Schema`] table, precedence over defaults, files, `--config-dir`, environment and flags,
//! oslo's `$` substitution, generated `clap` args and typed reads with origins (README.md).
#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};
use std::str::FromStr;

mod cli;
mod convert;
mod error;
mod lint;
mod loader;
mod origin;
mod schema;
mod sources;
mod subst;
mod values;

pub use cli::{config_dir_arg, config_file_arg, CONFIG_DIR_ID, CONFIG_FILE_ID};
pub use error::{ConfigError, ConfigResult};
pub use lint::{Warning, WarningKind};
pub use loader::{Loaded, Loader};
pub use origin::{Origin, Place};
pub use schema::{DefaultValue, Flag, Kind, Opt, Schema, DEFAULT_GROUP};
pub use sources::env_var;
pub use subst::escape;
pub use values::Values;

/// Result alias for this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What went wrong, always with the place it went wrong.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{}: cannot read: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}:{line}: {reason}", path.display())]
    Syntax {
        path: PathBuf,
        line: usize,
        reason: String,
    },
    #[error("{}:{line}: [{section}] {key}: {reason}", path.display())]
    Value {
        path: PathBuf,
        line: usize,
        section: String,
        key: String,
        reason: String,
    },
}

/// One `key = value` line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub section: String,
    pub key: String,
    pub value: String,
    pub path: PathBuf,
    pub line: usize,
}

impl Entry {
    /// An error about this entry's value, naming file, line, section and key.
    pub fn error(&self, reason: impl Into<String>) -> Error {
        Error::Value {
            path: self.path.clone(),
            line: self.line,
            section: self.section.clone(),
            key: self.key.clone(),
            reason: reason.into(),
        }
    }

    /// Parse the value with `FromStr`; the error names the entry and quotes the value.
    pub fn parse<T>(&self) -> Result<T>
    where
        T: FromStr,
        T::Err: std::fmt::Display,
    {
        self.value
            .trim()
            .parse()
            .map_err(|e| self.error(format!("invalid value {:?}: {e}", self.value)))
    }

    /// oslo.config booleans: true/false, yes/no, on/off, 1/0, any letter case.
    pub fn bool(&self) -> Result<bool> {
        parse_bool(&self.value).ok_or_else(|| {
            self.error(format!(
                "invalid boolean {:?}: expected true/false, yes/no, on/off or 1/0",
                self.value
            ))
        })
    }

    /// oslo.config lists: comma separated, items trimmed, empty items dropped.
    pub fn list(&self) -> Vec<String> {
        self.value
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect()
    }
}

/// oslo.config's boolean spellings.
pub fn parse_bool(s: &str) -> Option<bool> {
    match s.trim().to_ascii_lowercase().as_str() {
        "true" | "yes" | "on" | "1" => Some(true),
        "false" | "no" | "off" | "0" => Some(false),
        _ => None,
    }
}

/// oslo.config's interpolation of one option in a value: `$name` and `${name}` become
/// `with`. `$name` followed by more identifier characters names another option and is
/// left alone (`$state_path_x` is not `$state_path`). Neutron's default
/// `metadata_proxy_socket = $state_path/metadata_proxy` is the case that matters.
pub fn interpolate(value: &str, name: &str, with: &str) -> String {
    let braced = format!("${{{name}}}");
    let plain = format!("${name}");
    let mut out = String::with_capacity(value.len());
    let mut rest = value;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let tail = &rest[i..];
        if let Some(after) = tail.strip_prefix(&braced) {
            out.push_str(with);
            rest = after;
        } else if let Some(after) = tail
            .strip_prefix(&plain)
            .filter(|a| !a.starts_with(|c: char| c.is_ascii_alphanumeric() || c == '_'))
        {
            out.push_str(with);
            rest = after;
        } else {
            out.push('$');
            rest = &tail[1..];
        }
    }
    out.push_str(rest);
    out
}

/// Every entry of one or more files, in load order.
#[derive(Debug, Clone, Default)]
pub struct Ini {
    entries: Vec<Entry>,
}

fn norm(key: &str) -> String {
    key.trim().replace('-', "_")
}

/// A file that is not UTF-8 (a Latin-1 secret, a binary file): the line of the first bad
/// byte, not only "stream did not contain valid UTF-8".
fn not_utf8(path: &Path, e: &std::string::FromUtf8Error) -> Error {
    let bytes = e.as_bytes();
    let at = e.utf8_error().valid_up_to();
    Error::Syntax {
        path: path.to_owned(),
        line: 1 + bytes[..at].iter().filter(|&&b| b == b'\n').count(),
        reason: format!(
            "not UTF-8 text (byte {:#04x}); oslo.config reads files as UTF-8",
            bytes.get(at).copied().unwrap_or(0)
        ),
    }
}

impl Ini {
    /// Read the files in order; a later file overrides an earlier one key by key.
    pub fn load<P: AsRef<Path>>(paths: &[P]) -> Result<Self> {
        let mut ini = Ini::default();
        for p in paths {
            let path = p.as_ref();
            let bytes = std::fs::read(path).map_err(|source| Error::Read {
                path: path.to_owned(),
                source,
            })?;
            let text = String::from_utf8(bytes).map_err(|e| not_utf8(path, &e))?;
            ini.add_str(&text, path)?;
        }
        Ok(ini)
    }

    /// Parse one file's text (`origin` is only used in messages).
    pub fn parse_str(text: &str, origin: &Path) -> Result<Self> {
        let mut ini = Ini::default();
        ini.add_str(text, origin)?;
        Ok(ini)
    }

    fn add_str(&mut self, text: &str, origin: &Path) -> Result<()> {
        let syntax = |line: usize, reason: &str| Error::Syntax {
            path: origin.to_owned(),
            line,
            reason: reason.to_owned(),
        };
        let mut section: Option<String> = None;
        // Index into self.entries of the entry a continuation line extends.
        let mut last: Option<usize> = None;
        for (i, raw) in text.lines().enumerate() {
            let lineno = i + 1;
            let line = raw.trim_end_matches('\r');
            let trimmed = line.trim();
            if trimmed.is_empty() {
                last = None;
                continue;
            }
            if trimmed.starts_with('#') || trimmed.starts_with(';') {
                continue;
            }
            if line.starts_with([' ', '\t']) {
                if let Some(idx) = last {
                    let e = &mut self.entries[idx];
                    if !e.value.is_empty() {
                        e.value.push('\n');
                    }
                    e.value.push_str(trimmed);
                    continue;
                }
            }
            if let Some(rest) = trimmed.strip_prefix('[') {
                let name = rest
                    .strip_suffix(']')
                    .ok_or_else(|| syntax(lineno, "section header without closing ']'"))?
                    .trim();
                if name.is_empty() {
                    return Err(syntax(lineno, "empty section name"));
                }
                section = Some(name.to_owned());
                last = None;
                continue;
            }
            let sep = trimmed.find(['=', ':']).ok_or_else(|| {
                syntax(lineno, "expected 'key = value', '[section]' or a comment")
            })?;
            let key = trimmed[..sep].trim();
            if key.is_empty() {
                return Err(syntax(lineno, "empty key"));
            }
            let section = section.clone().ok_or_else(|| {
                syntax(lineno, "key outside any section (add [DEFAULT] above it)")
            })?;
            let mut value = trimmed[sep + 1..].trim().to_owned();
            let bytes = value.as_bytes();
            if bytes.len() >= 2
                && (bytes[0] == b'"' || bytes[0] == b'\'')
                && bytes[bytes.len() - 1] == bytes[0]
            {
                value = value[1..value.len() - 1].to_owned();
            }
            self.entries.push(Entry {
                section,
                key: norm(key),
                value,
                path: origin.to_owned(),
                line: lineno,
            });
            last = Some(self.entries.len() - 1);
        }
        Ok(())
    }

    /// The winning entry for `[section] key` (the last one loaded), if any.
    pub fn get(&self, section: &str, key: &str) -> Option<&Entry> {
        let key = norm(key);
        self.entries
            .iter()
            .rev()
            .find(|e| e.section.eq_ignore_ascii_case(section) && e.key == key)
    }

    /// Every entry, in load order (including overridden ones).
    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    /// Entries whose section is one of `known` but whose key that section does not list,
    /// plus entries in sections that appear in `known` as `(section, &[])`. Sections not
    /// named at all are ignored, so one file can serve several programs (as Neutron's do).
    pub fn unknown_keys<'a>(&'a self, known: &[(&str, &[&str])]) -> Vec<&'a Entry> {
        self.entries
            .iter()
            .filter(|e| {
                known
                    .iter()
                    .find(|(s, _)| e.section.eq_ignore_ascii_case(s))
                    .is_some_and(|(_, keys)| !keys.iter().any(|k| norm(k) == e.key))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(text: &str) -> Ini {
        Ini::parse_str(text, Path::new("t.ini")).expect("parses")
    }

    #[test]
    fn sections_keys_comments_quotes() {
        let ini = p("# c\n[DEFAULT]\na = 1\nb: two words # kept\n; c\n[x]\nc = \"q\"\nd-e = 'z'\n");
        assert_eq!(ini.get("DEFAULT", "a").map(|e| e.value.as_str()), Some("1"));
        assert_eq!(
            ini.get("default", "b").map(|e| e.value.as_str()),
            Some("two words # kept")
        );
        assert_eq!(ini.get("x", "c").map(|e| e.value.as_str()), Some("q"));
        assert_eq!(ini.get("x", "d_e").map(|e| e.value.as_str()), Some("z"));
        assert_eq!(ini.get("x", "d-e").map(|e| e.line), Some(8));
        assert!(ini.get("x", "a").is_none());
    }

    #[test]
    fn continuation_lines_and_last_wins() {
        let ini = p("[DEFAULT]\nk = a\n  b\nk = c\n");
        assert_eq!(ini.get("DEFAULT", "k").map(|e| e.value.as_str()), Some("c"));
        assert_eq!(ini.entries()[0].value, "a\nb");
    }

    #[test]
    fn syntax_errors_name_file_and_line() {
        let err = Ini::parse_str("[DEFAULT]\nnonsense\n", Path::new("/etc/x.ini"))
            .expect_err("must fail")
            .to_string();
        assert!(err.starts_with("/etc/x.ini:2: "), "{err}");
        let err = Ini::parse_str("k = v\n", Path::new("a.ini"))
            .expect_err("must fail")
            .to_string();
        assert!(err.contains("outside any section"), "{err}");
        assert!(Ini::parse_str("[DEFAULT\n", Path::new("a")).is_err());
    }

    #[test]
    fn value_errors_name_file_line_section_key() {
        let ini = p("[DEFAULT]\n\nport = eighty\nflag = maybe\n");
        let e = ini.get("DEFAULT", "port").expect("present");
        let err = e.parse::<u16>().expect_err("must fail").to_string();
        assert!(
            err.starts_with("t.ini:3: [DEFAULT] port: invalid value \"eighty\""),
            "{err}"
        );
        let err = ini
            .get("DEFAULT", "flag")
            .expect("present")
            .bool()
            .expect_err("fail");
        assert!(err.to_string().contains("invalid boolean"), "{err}");
    }

    #[test]
    fn booleans_and_lists() {
        for (s, b) in [
            ("True", true),
            ("yes", true),
            ("ON", true),
            ("0", false),
            ("no", false),
        ] {
            assert_eq!(parse_bool(s), Some(b), "{s}");
        }
        assert_eq!(parse_bool("2"), None);
        let ini = p("[a]\nl = 4, 6,,\n");
        assert_eq!(ini.get("a", "l").expect("present").list(), vec!["4", "6"]);
    }

    #[test]
    fn unknown_keys_only_in_known_sections() {
        let ini = p("[DEFAULT]\na = 1\nzz = 2\n[other]\nq = 1\n[mine]\nb = 1\n");
        let unknown: Vec<_> = ini
            .unknown_keys(&[("DEFAULT", &["a"]), ("mine", &[])])
            .into_iter()
            .map(|e| e.key.as_str())
            .collect();
        assert_eq!(unknown, vec!["zz", "b"]);
    }

    #[test]
    fn load_reads_files_in_order() {
        let dir = std::env::temp_dir().join(format!("ns-ini-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("mkdir");
        let a = dir.join("a.ini");
        let b = dir.join("b.ini");
        std::fs::write(&a, "[DEFAULT]\nk = 1\nj = 1\n").expect("write");
        std::fs::write(&b, "[DEFAULT]\nk = 2\n").expect("write");
        let ini = Ini::load(&[&a, &b]).expect("load");
        assert_eq!(ini.get("DEFAULT", "k").map(|e| e.value.as_str()), Some("2"));
        assert_eq!(
            ini.get("DEFAULT", "j").map(|e| e.path.clone()),
            Some(a.clone())
        );
        let missing = Ini::load(&[dir.join("nope.ini")]).expect_err("fails");
        assert!(missing.to_string().contains("nope.ini: cannot read"));
        // Not UTF-8 (a Latin-1 secret, a binary file): the line of the first bad byte.
        let latin = dir.join("latin1.ini");
        std::fs::write(&latin, b"[DEFAULT]\nk = 1\nsecret = s\xe9cret\n").expect("write");
        let bad = Ini::load(&[&latin]).expect_err("not UTF-8").to_string();
        assert_eq!(
            bad,
            format!(
                "{}:3: not UTF-8 text (byte 0xe9); oslo.config reads files as UTF-8",
                latin.display()
            )
        );
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }

    #[test]
    fn interpolate_state_path() {
        let i = |v: &str| interpolate(v, "state_path", "/s");
        assert_eq!(i("$state_path/metadata_proxy"), "/s/metadata_proxy");
        assert_eq!(i("${state_path}/m"), "/s/m");
        assert_eq!(i("/a/$state_path_x/$state_path"), "/a/$state_path_x//s");
        assert_eq!(i("/plain/é$"), "/plain/é$");
    }
}
