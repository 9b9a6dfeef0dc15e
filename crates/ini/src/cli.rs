//! The command-line side of a schema: `clap::Arg`s generated from the option table
//! (`--name-with-dashes`, alias `--name_with_underscores`, oslo's `--noflag` for booleans,
//! `--config-file`, `--config-dir`), and reading them back from `ArgMatches` or from plain
//! `(flag, value)` pairs into the loader's flag layer.

use std::path::PathBuf;

use clap::parser::ValueSource;
use clap::{Arg, ArgAction, ArgMatches, Command};

use crate::error::{ConfigError, ConfigResult};
use crate::schema::{DefaultValue, Kind, Opt, Schema, DEFAULT_GROUP};

/// Arg id of `--config-file` (oslo's dest name).
pub const CONFIG_FILE_ID: &str = "config_file";
/// Arg id of `--config-dir`.
pub const CONFIG_DIR_ID: &str = "config_dir";

/// Spellings the layer itself uses; no option may take them.
pub(crate) const RESERVED: &[&str] = &["config-file", "config_file", "config-dir", "config_dir"];

/// One flag given on the command line, in command-line order.
#[derive(Debug, Clone)]
pub(crate) struct FlagValue {
    pub opt: &'static Opt,
    /// Canonical spelling, with `--`: what errors name.
    pub name: String,
    pub value: String,
}

/// What the command line contributes: files, directories and flag values.
#[derive(Debug, Default, Clone)]
pub(crate) struct CliInput {
    pub files: Vec<PathBuf>,
    pub dirs: Vec<PathBuf>,
    pub flags: Vec<FlagValue>,
}

/// The flag's long name, without `--`.
pub(crate) fn long(opt: &Opt) -> String {
    opt.flag
        .long
        .map_or_else(|| opt.name.replace('_', "-"), str::to_owned)
}

/// Hidden spellings: the underscore form of the long name, the option's own name in both
/// forms when the long name differs, and the declared extras.
fn aliases(opt: &Opt) -> Vec<String> {
    let long = long(opt);
    let mut out: Vec<String> = Vec::new();
    let candidates = [
        long.replace('-', "_"),
        opt.name.to_owned(),
        opt.name.replace('_', "-"),
    ];
    for a in candidates
        .into_iter()
        .chain(opt.flag.aliases.iter().map(|a| a.to_string()))
    {
        if a != long && !out.contains(&a) {
            out.push(a);
        }
    }
    out
}

/// Every spelling the option's flags answer to (long, aliases, `no` forms for booleans).
pub(crate) fn spellings(opt: &Opt) -> Vec<String> {
    if !opt.flag.enabled {
        return Vec::new();
    }
    let mut out = vec![long(opt)];
    out.extend(aliases(opt));
    if opt.kind == Kind::Bool {
        let neg: Vec<String> = out.iter().map(|s| format!("no{s}")).collect();
        out.extend(neg);
    }
    out
}

fn id(opt: &Opt) -> String {
    format!("{}.{}", opt.group, opt.name)
}

fn neg_id(opt: &Opt) -> String {
    format!("{}.{}!no", opt.group, opt.name)
}

fn help(opt: &Opt) -> String {
    let mut h = opt.help.to_owned();
    if opt.group != DEFAULT_GROUP || long(opt) != opt.name.replace('_', "-") {
        h.push_str(&format!(" [config: [{}] {}]", opt.group, opt.name));
    }
    match opt.default {
        DefaultValue::Unset => {}
        DefaultValue::Text(t) => h.push_str(&format!(" [default: {t}]")),
        DefaultValue::Computed { shown, .. } => h.push_str(&format!(" [default: {shown}]")),
    }
    h
}

/// `--config-file PATH`, repeatable (alias `--config_file`); later files win key by key.
/// The `--help` heading of the flags of an INI section.
fn heading(group: &str) -> String {
    format!("[{group}] options")
}

/// The `--help` heading of `--config-file` and `--config-dir`.
const FILES_HEADING: &str = "Configuration files";

pub fn config_file_arg() -> Arg {
    Arg::new(CONFIG_FILE_ID)
        .help_heading(FILES_HEADING)
        .long("config-file")
        .alias("config_file")
        .value_name("PATH")
        .action(ArgAction::Append)
        .value_parser(clap::value_parser!(PathBuf))
        .help("INI file; repeatable, later files win key by key")
}

/// `--config-dir DIR`, repeatable (alias `--config_dir`): its `*.conf` files, sorted, win
/// over every `--config-file`.
pub fn config_dir_arg() -> Arg {
    Arg::new(CONFIG_DIR_ID)
        .help_heading(FILES_HEADING)
        .long("config-dir")
        .alias("config_dir")
        .value_name("DIR")
        .action(ArgAction::Append)
        .value_parser(clap::value_parser!(PathBuf))
        .help("Directory of *.conf files read in sorted order after every --config-file")
}

/// The args for one option: the flag, plus its hidden `--no` form for a boolean.
fn opt_args(opt: &Opt) -> Vec<Arg> {
    let long = long(opt);
    let value_name = opt
        .flag
        .value_name
        .map_or_else(|| opt.kind.value_name(), str::to_owned);
    let mut arg = Arg::new(id(opt))
        .long(long.clone())
        .aliases(aliases(opt))
        .value_name(value_name)
        .help(help(opt))
        // `--help` groups the flags by the INI section they set.
        .help_heading(heading(opt.group))
        .action(ArgAction::Append)
        .hide(opt.flag.hidden);
    if let Some(c) = opt.flag.short {
        arg = arg.short(c);
    }
    if opt.kind != Kind::Bool {
        return vec![arg];
    }
    // `--debug` alone is true; `=` is required so `--debug router` never eats a word.
    let arg = arg
        .num_args(0..=1)
        .require_equals(true)
        .default_missing_value("true");
    let neg = Arg::new(neg_id(opt))
        .long(format!("no{long}"))
        .aliases(aliases(opt).into_iter().map(|a| format!("no{a}")))
        .action(ArgAction::Count)
        .hide(true);
    vec![arg, neg]
}

impl Schema {
    /// Every flag of the table plus `--config-file` and `--config-dir`.
    pub fn args(&self) -> Vec<Arg> {
        let mut out = vec![config_file_arg(), config_dir_arg()];
        for o in self.all().filter(|o| o.flag.enabled) {
            out.extend(opt_args(o));
        }
        out
    }

    /// `cmd` with [`Schema::args`] added (a derive `Command` with its own flags works).
    pub fn augment(&self, cmd: Command) -> Command {
        cmd.args(self.args())
    }
}

/// The opt a spelling (with or without `--`) names, and whether it is the `no` form.
fn by_spelling(schema: &Schema, name: &str) -> Option<(&'static Opt, bool)> {
    let name = name.trim_start_matches("--");
    schema.all().find_map(|o| {
        let s = spellings(o);
        let pos = s.iter().position(|x| x == name)?;
        let negative = o.kind == Kind::Bool && pos >= s.len() / 2;
        Some((o, negative))
    })
}

/// Add one `(flag, value)` pair (flag with or without `--`; a `no` boolean ignores value).
pub(crate) fn push_pair(
    input: &mut CliInput,
    schema: &Schema,
    flag: &str,
    value: &str,
) -> ConfigResult<()> {
    let bare = flag.trim_start_matches("--");
    match bare {
        "config-file" | "config_file" => input.files.push(value.into()),
        "config-dir" | "config_dir" => input.dirs.push(value.into()),
        _ => {
            let (opt, negative) =
                by_spelling(schema, bare).ok_or_else(|| ConfigError::UnknownFlag {
                    name: bare.to_owned(),
                })?;
            let long = long(opt);
            input.flags.push(if negative {
                FlagValue {
                    opt,
                    name: format!("--no{long}"),
                    value: "false".into(),
                }
            } else {
                FlagValue {
                    opt,
                    name: format!("--{long}"),
                    value: value.to_owned(),
                }
            });
        }
    }
    Ok(())
}

/// Read the schema's args back from `m`; args the program did not add are skipped.
pub(crate) fn from_matches(schema: &Schema, m: &ArgMatches) -> ConfigResult<CliInput> {
    let mut input = CliInput::default();
    let paths = |id: &str| -> Vec<PathBuf> {
        m.try_get_many::<PathBuf>(id)
            .ok()
            .flatten()
            .map(|v| v.cloned().collect())
            .unwrap_or_default()
    };
    input.files = paths(CONFIG_FILE_ID);
    input.dirs = paths(CONFIG_DIR_ID);
    for opt in schema.all().filter(|o| o.flag.enabled) {
        let long = long(opt);
        // (argv index, canonical name, value), sorted so the last one given wins.
        let mut given: Vec<(usize, String, String)> = Vec::new();
        let id = id(opt);
        // `try_get_raw` first: `value_source`/`indices_of` panic (debug) on an unknown id.
        let raw = m
            .try_get_raw(&id)
            .ok()
            .flatten()
            .filter(|_| m.value_source(&id) == Some(ValueSource::CommandLine));
        if let Some(raw) = raw {
            let indices: Vec<usize> = m.indices_of(&id).map(Iterator::collect).unwrap_or_default();
            for (i, v) in raw.enumerate() {
                let name = format!("--{long}");
                let value = v.to_str().ok_or_else(|| ConfigError::Value {
                    place: crate::origin::Place {
                        origin: crate::Origin::Flag { name: name.clone() },
                        group: opt.group.into(),
                        key: opt.name.into(),
                    },
                    reason: "not valid UTF-8".into(),
                })?;
                given.push((indices.get(i).copied().unwrap_or(i), name, value.to_owned()));
            }
        }
        let neg = neg_id(opt);
        if opt.kind == Kind::Bool
            && m.try_get_raw(&neg).is_ok()
            && m.value_source(&neg) == Some(ValueSource::CommandLine)
        {
            for i in m.indices_of(&neg).into_iter().flatten() {
                given.push((i, format!("--no{long}"), "false".into()));
            }
        }
        given.sort_by_key(|g| g.0);
        input
            .flags
            .extend(
                given
                    .into_iter()
                    .map(|(_, name, value)| FlagValue { opt, name, value }),
            );
    }
    Ok(input)
}

#[cfg(test)]
mod tests {
    use super::*;

    static OPTS: &[Opt] = &[
        Opt::new("DEFAULT", "debug", Kind::Bool, "Log more")
            .default("false")
            .short('d'),
        Opt::new("DEFAULT", "nova_metadata_port", Kind::Port, "Nova port").default("8775"),
        Opt::new("DEFAULT", "metadata_proxy_user", Kind::Str, "User").long("user"),
        Opt::new("DEFAULT", "bind", Kind::List, "Binds"),
        Opt::new("metadata_haproxy", "timeout_server", Kind::Port, "T").long("timeout-server"),
        Opt::new("DEFAULT", "secret", Kind::Str, "S").no_flag(),
    ];
    static SCHEMA: Schema = Schema::new(OPTS);

    fn cmd() -> Command {
        // The program's own flag mixes with the generated ones.
        SCHEMA.augment(Command::new("t").arg(Arg::new("router_id").long("router-id")))
    }

    fn parse(argv: &[&str]) -> (ArgMatches, Vec<(String, String)>) {
        let m = cmd()
            .try_get_matches_from(std::iter::once("t").chain(argv.iter().copied()))
            .expect("parses");
        let input = from_matches(&SCHEMA, &m).expect("reads");
        let flags = input.flags.into_iter().map(|f| (f.name, f.value)).collect();
        (m, flags)
    }

    fn pair(name: &str, value: &str) -> (String, String) {
        (name.to_owned(), value.to_owned())
    }

    #[test]
    fn generated_command_is_valid_clap() {
        cmd().debug_assert();
        assert_eq!(SCHEMA.check().map_err(|e| e.to_string()), Ok(()));
    }

    #[test]
    fn dashes_underscores_custom_long_and_own_flags_mix() {
        let (m, flags) = parse(&[
            "--nova_metadata_port",
            "1",
            "--router-id",
            "r",
            "--metadata_proxy_user=n",
            "--timeout_server",
            "5",
        ]);
        assert_eq!(
            flags,
            vec![
                pair("--nova-metadata-port", "1"),
                pair("--user", "n"),
                pair("--timeout-server", "5"),
            ]
        );
        assert_eq!(
            m.get_one::<String>("router_id").map(String::as_str),
            Some("r")
        );
        // An option without a flag has none.
        assert!(cmd().try_get_matches_from(["t", "--secret", "x"]).is_err());
    }

    #[test]
    fn booleans_bare_with_value_and_negated_last_wins() {
        assert_eq!(parse(&["--debug"]).1, vec![pair("--debug", "true")]);
        assert_eq!(parse(&["-d"]).1, vec![pair("--debug", "true")]);
        assert_eq!(parse(&["--debug=off"]).1, vec![pair("--debug", "off")]);
        let (_, f) = parse(&["--debug", "--nodebug"]);
        assert_eq!(f.last(), Some(&pair("--nodebug", "false")));
        let (_, f) = parse(&["--nodebug", "--debug"]);
        assert_eq!(f.last(), Some(&pair("--debug", "true")));
        // `=` is required, so a following word is not taken as the value.
        assert!(cmd().try_get_matches_from(["t", "--debug", "no"]).is_err());
    }

    #[test]
    fn config_files_dirs_and_repeated_lists() {
        let (m, flags) = parse(&[
            "--config-file",
            "/a",
            "--config_file=/b",
            "--config-dir",
            "/d",
            "--bind",
            "x",
            "--bind",
            "y,z",
        ]);
        let input = from_matches(&SCHEMA, &m).expect("reads");
        assert_eq!(input.files, vec![PathBuf::from("/a"), PathBuf::from("/b")]);
        assert_eq!(input.dirs, vec![PathBuf::from("/d")]);
        assert_eq!(flags, vec![pair("--bind", "x"), pair("--bind", "y,z")]);
    }

    #[test]
    fn args_the_program_left_out_are_skipped() {
        let m = Command::new("t")
            .arg(Arg::new("x").long("x"))
            .try_get_matches_from(["t", "--x", "1"])
            .expect("parses");
        let input = from_matches(&SCHEMA, &m).expect("no panic, nothing read");
        assert!(input.flags.is_empty() && input.files.is_empty());
    }

    #[test]
    fn help_shows_default_and_config_place() {
        let mut c = cmd();
        let help = c.render_long_help().to_string();
        assert!(help.contains("[default: 8775]"), "{help}");
        assert!(
            help.contains("[config: [metadata_haproxy] timeout_server]"),
            "{help}"
        );
        assert!(help.contains("--config-file"), "{help}");
        assert!(!help.contains("--nodebug"), "{help}");
        // Grouped by the section each flag sets, the files first.
        let files = help.find("Configuration files:").expect("files heading");
        let default = help.find("[DEFAULT] options:").expect("DEFAULT heading");
        let haproxy = help
            .find("[metadata_haproxy] options:")
            .expect("section heading");
        assert!(files < default && default < haproxy, "{help}");
        assert!(help[haproxy..].contains("--timeout-server"), "{help}");
    }

    #[test]
    fn pairs_accept_any_spelling() {
        let mut input = CliInput::default();
        for (f, v) in [
            ("--debug", "yes"),
            ("nodebug", ""),
            ("metadata_proxy_user", "u"),
            ("config-file", "/c"),
            ("config_dir", "/d"),
        ] {
            push_pair(&mut input, &SCHEMA, f, v).expect(f);
        }
        let got: Vec<_> = input
            .flags
            .iter()
            .map(|f| (f.name.as_str(), f.value.as_str()))
            .collect();
        assert_eq!(
            got,
            vec![("--debug", "yes"), ("--nodebug", "false"), ("--user", "u")]
        );
        assert_eq!(input.files, vec![PathBuf::from("/c")]);
        assert_eq!(input.dirs, vec![PathBuf::from("/d")]);
        let err = push_pair(&mut input, &SCHEMA, "--nope", "1").expect_err("unknown");
        assert_eq!(err.to_string(), "--nope: unknown option");
    }
}
