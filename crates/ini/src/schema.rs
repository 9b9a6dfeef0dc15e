//! The option table a program declares: one [`Opt`] per option (group, name, kind, default,
//! help, flag, old names), plus the Neutron keys and sections it knows but does not read.
//! `Schema::check` finds table mistakes in a unit test instead of at an operator's prompt.

use std::collections::HashSet;

use crate::error::{ConfigError, ConfigResult};

/// oslo.config's name for the unnamed group.
pub const DEFAULT_GROUP: &str = "DEFAULT";

/// What an option's text must look like; the typed getter of [`crate::Values`] follows it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Kind {
    /// Any text (oslo `StrOpt`).
    Str,
    /// true/false, yes/no, on/off, 1/0, any case (oslo `BoolOpt`).
    Bool,
    /// An integer in `min..=max` (oslo `IntOpt` with min/max).
    Int { min: i64, max: i64 },
    /// Seconds, integer or decimal (`2.5`), in `min..=max`.
    Seconds { min: f64, max: f64 },
    /// A TCP/UDP port, 1..=65535 (use `Int` when 0 is meaningful).
    Port,
    /// An absolute path; an empty value means "unset".
    Path,
    /// Comma separated; items trimmed, empty items dropped (oslo `ListOpt`). A repeated
    /// flag adds items.
    List,
    /// One of these names, matched ignoring ASCII case; read back as the name listed here.
    Choice(&'static [&'static str]),
}

impl Kind {
    /// Short name used in schema-bug messages.
    pub fn name(&self) -> &'static str {
        match self {
            Kind::Str => "a string",
            Kind::Bool => "a boolean",
            Kind::Int { .. } => "an integer",
            Kind::Seconds { .. } => "seconds",
            Kind::Port => "a port",
            Kind::Path => "a path",
            Kind::List => "a list",
            Kind::Choice(_) => "a choice",
        }
    }

    /// Placeholder shown in `--help`.
    pub fn value_name(&self) -> String {
        match self {
            Kind::Str => "VALUE".into(),
            Kind::Bool => "BOOL".into(),
            Kind::Int { .. } => "N".into(),
            Kind::Seconds { .. } => "SECONDS".into(),
            Kind::Port => "PORT".into(),
            Kind::Path => "PATH".into(),
            Kind::List => "A,B,...".into(),
            Kind::Choice(names) => names.join("|"),
        }
    }
}

/// An option's value when no layer sets it. Text may hold `$other` references.
#[derive(Debug, Clone, Copy)]
pub enum DefaultValue {
    /// No value: getters answer `None` / empty (bool, int, seconds, port need a default).
    Unset,
    /// This text, substituted and checked like any other value.
    Text(&'static str),
    /// Computed when loading (CPU count, our executable's directory); `shown` is what
    /// `--help` prints as the default.
    Computed {
        value: fn() -> String,
        shown: &'static str,
    },
}

/// How the option appears on the command line.
#[derive(Debug, Clone, Copy)]
pub struct Flag {
    /// False: the option has no flag (file, environment and default only).
    pub enabled: bool,
    /// The long name without `--`; `None` means the option name with `-` for `_`.
    pub long: Option<&'static str>,
    pub short: Option<char>,
    /// Extra hidden spellings (without `--`), beyond the automatic underscore ones.
    pub aliases: &'static [&'static str],
    /// Overrides the kind's placeholder in `--help`.
    pub value_name: Option<&'static str>,
    /// Accepted but not listed in `--help`.
    pub hidden: bool,
}

impl Flag {
    /// `--name-with-dashes`, alias `--name_with_underscores`.
    pub const AUTO: Flag = Flag {
        enabled: true,
        long: None,
        short: None,
        aliases: &[],
        value_name: None,
        hidden: false,
    };
}

/// One option: where it lives in the files, what it holds, and its flag.
#[derive(Debug, Clone, Copy)]
pub struct Opt {
    /// INI section (`DEFAULT` for the unnamed group).
    pub group: &'static str,
    /// Key in the section (`snake_case`).
    pub name: &'static str,
    pub kind: Kind,
    pub default: DefaultValue,
    /// One line for `--help`; `[default: ...]` is appended.
    pub help: &'static str,
    pub flag: Flag,
    /// Old `(group, name)` spellings read when the new one is not set in the same file.
    pub deprecated: &'static [(&'static str, &'static str)],
}

impl Opt {
    /// An option with no default and the automatic flag.
    pub const fn new(
        group: &'static str,
        name: &'static str,
        kind: Kind,
        help: &'static str,
    ) -> Opt {
        Opt {
            group,
            name,
            kind,
            default: DefaultValue::Unset,
            help,
            flag: Flag::AUTO,
            deprecated: &[],
        }
    }

    /// Default text (may reference other options: `$state_path/metadata_proxy`).
    pub const fn default(self, text: &'static str) -> Opt {
        Opt {
            default: DefaultValue::Text(text),
            ..self
        }
    }

    /// Default computed at load time; `shown` goes into `--help`.
    pub const fn computed(self, value: fn() -> String, shown: &'static str) -> Opt {
        Opt {
            default: DefaultValue::Computed { value, shown },
            ..self
        }
    }

    /// The flag is `--long` instead of the option name (e.g. `user` for metadata_proxy_user).
    pub const fn long(self, long: &'static str) -> Opt {
        let mut o = self;
        o.flag.long = Some(long);
        o
    }

    pub const fn short(self, short: char) -> Opt {
        let mut o = self;
        o.flag.short = Some(short);
        o
    }

    /// Extra hidden flag spellings, without `--`.
    pub const fn aliases(self, aliases: &'static [&'static str]) -> Opt {
        let mut o = self;
        o.flag.aliases = aliases;
        o
    }

    pub const fn value_name(self, value_name: &'static str) -> Opt {
        let mut o = self;
        o.flag.value_name = Some(value_name);
        o
    }

    /// Accepted on the command line but not listed in `--help`.
    pub const fn hidden(self) -> Opt {
        let mut o = self;
        o.flag.hidden = true;
        o
    }

    /// No command-line flag at all.
    pub const fn no_flag(self) -> Opt {
        let mut o = self;
        o.flag.enabled = false;
        o
    }

    /// Old `(group, name)` spellings of this option.
    pub const fn deprecated(self, old: &'static [(&'static str, &'static str)]) -> Opt {
        Opt {
            deprecated: old,
            ..self
        }
    }

    /// Whether this option answers to `[group] name` (its own name or an old one).
    pub fn answers_to(&self, group: &str, name: &str) -> bool {
        let name = norm(name);
        (same_group(self.group, group) && self.name == name)
            || self
                .deprecated
                .iter()
                .any(|(g, n)| same_group(g, group) && *n == name)
    }
}

/// Everything a program declares about its configuration.
#[derive(Debug, Clone, Copy)]
pub struct Schema {
    /// The binary's own options.
    pub opts: &'static [Opt],
    /// Option groups shared with other binaries (e.g. `ns_contract`'s `[metadata_haproxy]`
    /// table), read as if they were listed after `opts`.
    pub shared: &'static [&'static [Opt]],
    /// Neutron's keys in our sections that we accept silently: `(section, keys)`.
    pub ignored: &'static [(&'static str, &'static [&'static str])],
    /// Sections of Neutron's sample files that we never read and that are not typos of
    /// ours even when one edit away (`ovs` next to our `ovn`).
    pub foreign_sections: &'static [&'static str],
}

impl Schema {
    pub const fn new(opts: &'static [Opt]) -> Schema {
        Schema {
            opts,
            shared: &[],
            ignored: &[],
            foreign_sections: &[],
        }
    }

    pub const fn ignored(
        self,
        ignored: &'static [(&'static str, &'static [&'static str])],
    ) -> Schema {
        Schema { ignored, ..self }
    }

    /// Add option groups shared with other binaries (each a `static` table).
    pub const fn shared(self, shared: &'static [&'static [Opt]]) -> Schema {
        Schema { shared, ..self }
    }

    /// Every option: the binary's own, then the shared groups, in order.
    pub fn all(&self) -> impl Iterator<Item = &'static Opt> + Clone {
        self.opts
            .iter()
            .chain(self.shared.iter().flat_map(|part| part.iter()))
    }

    pub const fn foreign_sections(self, sections: &'static [&'static str]) -> Schema {
        Schema {
            foreign_sections: sections,
            ..self
        }
    }

    /// The option declared as `[group] name` (not by an old name).
    pub fn find(&self, group: &str, name: &str) -> Option<&'static Opt> {
        let name = norm(name);
        self.all()
            .find(|o| same_group(o.group, group) && o.name == name)
    }

    /// The option `[group] name` refers to, by its name or an old one.
    pub fn lookup(&self, group: &str, name: &str) -> Option<&'static Opt> {
        self.find(group, name)
            .or_else(|| self.all().find(|o| o.answers_to(group, name)))
    }

    /// Sections holding at least one of our options.
    pub fn groups(&self) -> Vec<&'static str> {
        let mut out: Vec<&'static str> = Vec::new();
        for o in self.all() {
            if !out.iter().any(|g| same_group(g, o.group)) {
                out.push(o.group);
            }
        }
        out
    }

    /// Table mistakes: duplicate options or flags, bad names, empty ranges, defaults that
    /// do not fit their kind. Call it from a unit test of the program's config module.
    pub fn check(&self) -> ConfigResult<()> {
        let bad = |m: String| Err(ConfigError::Schema(m));
        let mut names = HashSet::new();
        let mut flags = HashSet::new();
        for spelling in crate::cli::RESERVED {
            flags.insert(spelling.to_string());
        }
        for o in self.all() {
            let id = format!("[{}] {}", o.group, o.name);
            if o.group.is_empty()
                || o.name.is_empty()
                || !o
                    .name
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
            {
                return bad(format!("{id}: names are lowercase letters, digits and '_'"));
            }
            let own = [(o.group, o.name)];
            for (g, n) in own.iter().chain(o.deprecated) {
                if !names.insert((g.to_ascii_lowercase(), norm(n))) {
                    return bad(format!("[{g}] {n} is declared twice"));
                }
            }
            match o.kind {
                Kind::Int { min, max } if min > max => return bad(format!("{id}: empty range")),
                Kind::Seconds { min, max } if min.is_nan() || max.is_nan() || min > max => {
                    return bad(format!("{id}: empty range"))
                }
                Kind::Choice([]) => return bad(format!("{id}: no choices")),
                _ => {}
            }
            let default = match o.default {
                DefaultValue::Unset => None,
                DefaultValue::Text(t) => Some(t.to_owned()),
                DefaultValue::Computed { value, .. } => Some(value()),
            };
            if let Some(text) = default.filter(|t| !t.contains('$')) {
                if let Err(reason) = crate::convert::convert(&o.kind, &text) {
                    return bad(format!("{id}: default: {reason}"));
                }
            }
            for spelling in crate::cli::spellings(o) {
                if !flags.insert(spelling.clone()) {
                    return bad(format!("{id}: flag --{spelling} is used twice"));
                }
            }
        }
        Ok(())
    }
}

/// Keys are matched with `-` and `_` treated alike (as `Ini` does).
pub(crate) fn norm(key: &str) -> String {
    key.trim().replace('-', "_")
}

/// Section names: `DEFAULT` and the rest compared ignoring ASCII case (oslo lowercases
/// group names when it looks them up).
pub(crate) fn same_group(a: &str, b: &str) -> bool {
    a.eq_ignore_ascii_case(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    const FOO: Opt = Opt::new("DEFAULT", "foo", Kind::Str, "foo");

    fn check(opts: &'static [Opt]) -> String {
        match Schema::new(opts).check() {
            Ok(()) => "ok".into(),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn a_good_table_passes() {
        static OPTS: &[Opt] = &[
            FOO,
            Opt::new("DEFAULT", "port", Kind::Port, "p").default("8775"),
            Opt::new("DEFAULT", "sock", Kind::Path, "s").default("$foo/x"),
            Opt::new("ovn", "mode", Kind::Choice(&["a", "b"]), "m").default("a"),
            Opt::new("ovn", "n", Kind::Int { min: 0, max: 9 }, "n")
                .computed(|| "3".into(), "3")
                .deprecated(&[("DEFAULT", "ovn_n")]),
        ];
        assert_eq!(check(OPTS), "ok");
        let s = Schema::new(OPTS);
        assert_eq!(s.groups(), vec!["DEFAULT", "ovn"]);
        assert!(s.lookup("DEFAULT", "ovn-n").is_some_and(|o| o.name == "n"));
        assert!(s.find("DEFAULT", "ovn_n").is_none());
        assert!(s.find("OVN", "mode").is_some());
    }

    #[test]
    fn table_mistakes_are_found() {
        static DUP: &[Opt] = &[FOO, FOO];
        assert!(check(DUP).contains("[DEFAULT] foo is declared twice"));
        static OLD_IS_NEW: &[Opt] = &[
            FOO,
            Opt::new("DEFAULT", "bar", Kind::Str, "").deprecated(&[("DEFAULT", "foo")]),
        ];
        assert!(check(OLD_IS_NEW).contains("declared twice"));
        static FLAG: &[Opt] = &[FOO, Opt::new("x", "bar", Kind::Str, "").long("foo")];
        assert!(
            check(FLAG).contains("flag --foo is used twice"),
            "{}",
            check(FLAG)
        );
        static RESERVED: &[Opt] = &[Opt::new("DEFAULT", "config_file", Kind::Str, "")];
        assert!(check(RESERVED).contains("used twice"));
        static DEFAULT: &[Opt] = &[Opt::new("DEFAULT", "p", Kind::Port, "").default("0")];
        assert!(check(DEFAULT).contains("[DEFAULT] p: default: "));
        static CHOICE: &[Opt] = &[Opt::new("DEFAULT", "c", Kind::Choice(&["a"]), "").default("b")];
        assert!(check(CHOICE).contains("default"));
        static RANGE: &[Opt] = &[Opt::new("DEFAULT", "r", Kind::Int { min: 2, max: 1 }, "")];
        assert!(check(RANGE).contains("empty range"));
        static NAME: &[Opt] = &[Opt::new("DEFAULT", "Bad-Name", Kind::Str, "")];
        assert!(check(NAME).contains("lowercase"));
    }
}
