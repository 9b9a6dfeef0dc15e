//! Warnings about the files (never printed here; the program logs them): unknown keys in
//! sections we read (with clap-style "did you mean"), section names one edit away from ours
//! unless Neutron uses them, and deprecated names. Keys the schema lists as Neutron's own
//! stay quiet, and so do sections we do not read (one file serves several programs).

use std::fmt;

use crate::origin::{Origin, Place};
use crate::schema::{norm, same_group, Schema};
use crate::Ini;

/// What a warning is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WarningKind {
    /// A key we do not know in a section we read; `suggestion` is one of ours close to it.
    UnknownKey { suggestion: Option<&'static str> },
    /// A section we do not read, one edit away from `suggestion`, one of ours.
    UnknownSection { suggestion: &'static str },
    /// An old name; `group`/`name` is the option to use instead.
    Deprecated {
        group: &'static str,
        name: &'static str,
    },
}

/// One warning, at the file and line it is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Warning {
    /// The file and line, the section, and the key (empty for a section warning).
    pub place: Place,
    pub kind: WarningKind,
}

impl fmt::Display for Warning {
    /// `file:line: [section] key: message`, or `file:line: [section]: message`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            WarningKind::UnknownKey { suggestion } => {
                write!(f, "{}: unknown option, ignored", self.place)?;
                match suggestion {
                    Some(s) => write!(f, " (did you mean `{s}`?)"),
                    None => Ok(()),
                }
            }
            WarningKind::UnknownSection { suggestion } => match &self.place.origin {
                Origin::File { path, line } => write!(
                    f,
                    "{}:{line}: [{}]: unknown section, ignored (did you mean [{suggestion}]?)",
                    path.display(),
                    self.place.group
                ),
                _ => write!(
                    f,
                    "[{}]: unknown section (did you mean [{suggestion}]?)",
                    self.place.group
                ),
            },
            WarningKind::Deprecated { group, name } => {
                write!(f, "{}: deprecated name, use [{group}] {name}", self.place)
            }
        }
    }
}

/// The warnings for `ini` under `schema`, each reported once, in file order.
pub(crate) fn lint(schema: &Schema, ini: &Ini) -> Vec<Warning> {
    let ours = schema.groups();
    let mut out: Vec<Warning> = Vec::new();
    let mut seen: Vec<(String, String)> = Vec::new();
    for e in ini.entries() {
        let section_key = (e.section.to_ascii_lowercase(), e.key.clone());
        if seen.contains(&section_key) {
            continue;
        }
        let place = |key: &str| Place {
            origin: Origin::File {
                path: e.path.clone(),
                line: e.line,
            },
            group: e.section.clone(),
            key: key.to_owned(),
        };
        let kind = if let Some(opt) = schema.lookup(&e.section, &e.key) {
            if opt.name == e.key && same_group(opt.group, &e.section) {
                continue;
            }
            WarningKind::Deprecated {
                group: opt.group,
                name: opt.name,
            }
        } else if ours.iter().any(|g| same_group(g, &e.section)) {
            let quiet = schema
                .ignored
                .iter()
                .filter(|(s, _)| same_group(s, &e.section))
                .any(|(_, keys)| keys.iter().any(|k| norm(k) == e.key));
            if quiet {
                continue;
            }
            let names = schema
                .all()
                .filter(|o| same_group(o.group, &e.section))
                .map(|o| o.name);
            WarningKind::UnknownKey {
                suggestion: closest(&e.key, names, 2),
            }
        } else {
            // A section we do not read: warn once per section, only for a likely typo.
            let section_seen = seen.iter().any(|(s, _)| *s == section_key.0);
            seen.push(section_key);
            let foreign = schema
                .foreign_sections
                .iter()
                .any(|s| same_group(s, &e.section));
            if section_seen || foreign {
                continue;
            }
            let lower = e.section.to_ascii_lowercase();
            let near = ours
                .iter()
                .copied()
                .filter(|g| distance(&g.to_ascii_lowercase(), &lower) == 1)
                .min_by_key(|g| *g);
            if let Some(suggestion) = near {
                out.push(Warning {
                    place: place(""),
                    kind: WarningKind::UnknownSection { suggestion },
                });
            }
            continue;
        };
        seen.push(section_key);
        out.push(Warning {
            place: place(&e.key),
            kind,
        });
    }
    out
}

/// The candidate nearest to `word`, if within `max` edits (ties: the first listed).
fn closest(
    word: &str,
    candidates: impl Iterator<Item = &'static str>,
    max: usize,
) -> Option<&'static str> {
    let len = word.chars().count();
    candidates
        // The lengths' difference is a lower bound of the distance: a long garbage key is
        // not compared letter by letter with every option.
        .filter(|c| len.abs_diff(c.chars().count()) <= max)
        .map(|c| (distance(word, c), c))
        .filter(|(d, _)| *d <= max)
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

/// Levenshtein distance over chars.
fn distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = if ca == *cb {
                prev
            } else {
                1 + prev.min(row[j]).min(cur)
            };
            prev = cur;
        }
    }
    row[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::{Kind, Opt};
    use std::path::Path;

    static OPTS: &[Opt] = &[
        Opt::new("DEFAULT", "nova_metadata_host", Kind::Str, "")
            .deprecated(&[("DEFAULT", "nova_metadata_ip")]),
        Opt::new("DEFAULT", "debug", Kind::Bool, "").default("false"),
        Opt::new("ovn", "ovn_sb_connection", Kind::Str, ""),
    ];
    static SCHEMA: Schema = Schema::new(OPTS)
        .ignored(&[("DEFAULT", &["auth_url", "nova-client-cert"])])
        .foreign_sections(&["ovs"]);

    fn warnings(text: &str) -> Vec<String> {
        let ini = Ini::parse_str(text, Path::new("m.ini")).expect("parses");
        lint(&SCHEMA, &ini)
            .iter()
            .map(ToString::to_string)
            .collect()
    }

    #[test]
    fn unknown_keys_once_with_did_you_mean() {
        let w = warnings("[DEFAULT]\nnova_metadata_hots = x\ndebgu = 1\nzzz = 1\nzzz = 2\n");
        assert_eq!(
            w,
            vec![
                "m.ini:2: [DEFAULT] nova_metadata_hots: unknown option, ignored (did you mean `nova_metadata_host`?)",
                "m.ini:3: [DEFAULT] debgu: unknown option, ignored (did you mean `debug`?)",
                "m.ini:4: [DEFAULT] zzz: unknown option, ignored",
            ]
        );
    }

    #[test]
    fn neutron_keys_and_foreign_sections_stay_quiet() {
        let w = warnings(
            "[DEFAULT]\nauth_url = x\nnova_client_cert = /c\n[ovs]\nbridge = br\n[agent]\nx = 1\n[OVN]\novn_sb_connection = tcp:1\n",
        );
        assert!(w.is_empty(), "{w:?}");
    }

    #[test]
    fn section_one_edit_away_is_a_typo_once() {
        let w = warnings("[ovm]\na = 1\nb = 2\n[ovnn]\nc = 1\n[ovs]\nd = 1\n[xyz]\ne = 1\n");
        assert_eq!(
            w,
            vec![
                "m.ini:2: [ovm]: unknown section, ignored (did you mean [ovn]?)",
                "m.ini:5: [ovnn]: unknown section, ignored (did you mean [ovn]?)",
            ]
        );
    }

    #[test]
    fn deprecated_names_warn() {
        let w = warnings("[DEFAULT]\nnova_metadata_ip = 10.0.0.1\n");
        assert_eq!(
            w,
            vec!["m.ini:2: [DEFAULT] nova_metadata_ip: deprecated name, use [DEFAULT] nova_metadata_host"]
        );
    }

    #[test]
    fn edit_distance() {
        assert_eq!(distance("kitten", "sitting"), 3);
        assert_eq!(distance("", "ab"), 2);
        assert_eq!(distance("ovn", "ovs"), 1);
        assert_eq!(
            closest("debgu", ["debug", "dhcp"].into_iter(), 2),
            Some("debug")
        );
        assert_eq!(closest("xxxxx", ["debug"].into_iter(), 2), None);
    }
}
