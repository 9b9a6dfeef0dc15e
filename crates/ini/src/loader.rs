//! Resolving a schema: layers merged key by key (defaults < `--config-file`s in order <
//! `--config-dir` files < `OS_<GROUP>__<OPTION>` environment < flags), then oslo's `$`
//! substitution over the final values, then every value checked against its kind.
//! The first bad value stops loading with one line naming its origin.

use std::collections::HashMap;
use std::ffi::OsString;
use std::path::PathBuf;

use clap::ArgMatches;

use crate::cli::{self, CliInput};
use crate::convert::{convert, Typed};
use crate::error::{ConfigError, ConfigResult};
use crate::lint::{lint, Warning};
use crate::origin::{Origin, Place};
use crate::schema::{same_group, DefaultValue, Kind, Opt, Schema, DEFAULT_GROUP};
use crate::sources::{config_dir_files, env_var, file_entry};
use crate::subst::{has_reference, substitute};
use crate::values::{Item, Values};
use crate::Ini;

/// What loading gives: the values and the warnings to log (unknown keys, typos, old names).
#[derive(Debug, Clone)]
pub struct Loaded {
    pub values: Values,
    pub warnings: Vec<Warning>,
}

/// Collects the layers for one schema, then [`Loader::load`]s them.
#[derive(Debug)]
pub struct Loader<'s> {
    schema: &'s Schema,
    input: CliInput,
    extra: Vec<Ini>,
    env: HashMap<String, String>,
    /// The first bad `(flag, value)` pair, reported by `load`.
    pending: Option<ConfigError>,
}

impl<'s> Loader<'s> {
    /// Defaults only, until layers are added.
    pub fn new(schema: &'s Schema) -> Loader<'s> {
        Loader {
            schema,
            input: CliInput::default(),
            extra: Vec::new(),
            env: HashMap::new(),
            pending: None,
        }
    }

    /// `--config-file`s, flags and `--config-dir`s from clap matches of a command built
    /// with [`Schema::augment`] (schema args missing from the command are skipped).
    pub fn matches(mut self, m: &ArgMatches) -> Self {
        match cli::from_matches(self.schema, m) {
            Ok(input) => {
                self.input.files.extend(input.files);
                self.input.dirs.extend(input.dirs);
                self.input.flags.extend(input.flags);
            }
            Err(e) => {
                self.pending.get_or_insert(e);
            }
        }
        self
    }

    /// One flag as `(flag, value)`: any spelling, with or without `--` (`"debug"`,
    /// `"--nova_metadata_port"`, `"nodebug"`), `config-file` and `config-dir` included.
    /// Later pairs win; list flags add up. An unknown flag fails `load`.
    pub fn flag(mut self, flag: &str, value: &str) -> Self {
        if let Err(e) = cli::push_pair(&mut self.input, self.schema, flag, value) {
            self.pending.get_or_insert(e);
        }
        self
    }

    /// Several `(flag, value)` pairs, in command-line order.
    pub fn flags<'a>(self, pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> Self {
        pairs.into_iter().fold(self, |l, (f, v)| l.flag(f, v))
    }

    pub fn config_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.input.files.push(path.into());
        self
    }

    pub fn config_dir(mut self, path: impl Into<PathBuf>) -> Self {
        self.input.dirs.push(path.into());
        self
    }

    /// Already parsed INI text, taken as one more `--config-file` after the others
    /// (for tests: `Ini::parse_str(text, Path::new("x.ini"))`).
    pub fn ini(mut self, ini: Ini) -> Self {
        self.extra.push(ini);
        self
    }

    /// The environment to read `OS_<GROUP>__<OPTION>` from (a test passes a list).
    pub fn env<K: Into<String>, V: Into<String>>(
        mut self,
        vars: impl IntoIterator<Item = (K, V)>,
    ) -> Self {
        self.env
            .extend(vars.into_iter().map(|(k, v)| (k.into(), v.into())));
        self
    }

    /// The process environment (only `OS_*` variables; non-UTF-8 ones are skipped).
    pub fn process_env(self) -> Self {
        let vars = std::env::vars_os().filter_map(|(k, v): (OsString, OsString)| {
            let k = k.into_string().ok().filter(|k| k.starts_with("OS_"))?;
            Some((k, v.into_string().ok()?))
        });
        self.env(vars)
    }

    /// Read the files, merge every layer, substitute and check.
    pub fn load(self) -> ConfigResult<Loaded> {
        if let Some(e) = self.pending {
            return Err(e);
        }
        let mut ini = Ini::load(&self.input.files)?;
        for extra in self.extra {
            ini.entries.extend(extra.entries);
        }
        for dir in &self.input.dirs {
            let files = config_dir_files(dir)?;
            ini.entries.extend(Ini::load(&files)?.entries);
        }
        let opts: Vec<&'static Opt> = self.schema.all().collect();
        let raws: Vec<Raw> = opts
            .iter()
            .copied()
            .map(|opt| raw(opt, &ini, &self.env, &self.input))
            .collect();
        let mut r = Resolver {
            opts: opts.clone(),
            raws,
            done: vec![None; opts.len()],
            stack: Vec::new(),
            finished: Vec::new(),
        };
        for i in 0..opts.len() {
            r.text(i)?;
        }
        // Check kinds in the order substitution finished, so a bad value is reported at
        // its own place before any value that references it (`state_path` before
        // `metadata_proxy_socket = $state_path/...`).
        let mut typed: Vec<Option<Typed>> = vec![None; opts.len()];
        for &i in &r.finished {
            let raw = &r.raws[i];
            let Some(Some(t)) = &r.done[i] else { continue };
            typed[i] = Some(
                convert(&opts[i].kind, t).map_err(|reason| ConfigError::Value {
                    place: raw.place.clone(),
                    reason: match &raw.text {
                        Some(before) if before != t => format!("{reason} (from {before:?})"),
                        _ => reason,
                    },
                })?,
            );
        }
        let items = opts
            .iter()
            .copied()
            .zip(r.raws)
            .zip(r.done)
            .zip(typed)
            .map(|(((opt, raw), text), typed)| Item {
                opt,
                place: raw.place,
                text: text.flatten(),
                typed,
            })
            .collect();
        Ok(Loaded {
            values: Values { items },
            warnings: lint(self.schema, &ini),
        })
    }
}

impl Schema {
    /// The usual start-up: flags and files from `m`, the process environment, then load.
    pub fn load(&self, m: &ArgMatches) -> ConfigResult<Loaded> {
        Loader::new(self).matches(m).process_env().load()
    }
}

/// An option's text before substitution, and where it came from.
#[derive(Debug, Clone)]
struct Raw {
    text: Option<String>,
    place: Place,
}

/// The highest layer that sets `opt`.
fn raw(opt: &'static Opt, ini: &Ini, env: &HashMap<String, String>, input: &CliInput) -> Raw {
    let place = |origin: Origin, group: &str, key: &str| Place {
        origin,
        group: group.to_owned(),
        key: key.to_owned(),
    };
    let mut flag: Option<(String, String)> = None;
    for f in input.flags.iter().filter(|f| std::ptr::eq(f.opt, opt)) {
        flag = Some(match (flag, opt.kind) {
            (Some((_, prev)), Kind::List) => (f.name.clone(), format!("{prev},{}", f.value)),
            _ => (f.name.clone(), f.value.clone()),
        });
    }
    if let Some((name, value)) = flag {
        return Raw {
            text: Some(value),
            place: place(Origin::Flag { name }, opt.group, opt.name),
        };
    }
    let var = env_var(opt.group, opt.name);
    if let Some(value) = env.get(&var) {
        return Raw {
            text: Some(value.clone()),
            place: place(Origin::Env { var }, opt.group, opt.name),
        };
    }
    if let Some(e) = file_entry(ini, opt) {
        let origin = Origin::File {
            path: e.path.clone(),
            line: e.line,
        };
        return Raw {
            text: Some(e.value.clone()),
            place: place(origin, &e.section, &e.key),
        };
    }
    let text = match opt.default {
        DefaultValue::Unset => None,
        DefaultValue::Text(t) => Some(t.to_owned()),
        DefaultValue::Computed { value, .. } => Some(value()),
    };
    Raw {
        text,
        place: place(Origin::Default, opt.group, opt.name),
    }
}

/// Substitutes `$` references, depth first, each option once.
struct Resolver {
    /// The schema's options (`Schema::all`), indexed like `raws`.
    opts: Vec<&'static Opt>,
    raws: Vec<Raw>,
    done: Vec<Option<Option<String>>>,
    /// Options being substituted, to report a cycle instead of recursing forever.
    stack: Vec<usize>,
    /// Options in the order their substitution finished (what they reference first).
    finished: Vec<usize>,
}

impl Resolver {
    fn text(&mut self, i: usize) -> ConfigResult<Option<String>> {
        if let Some(done) = &self.done[i] {
            return Ok(done.clone());
        }
        let Some(raw_text) = self.raws[i].text.clone() else {
            self.done[i] = Some(None);
            self.finished.push(i);
            return Ok(None);
        };
        if !has_reference(&raw_text) {
            let t = substitute(&raw_text, |_| Ok::<_, ConfigError>(String::new()))?;
            self.done[i] = Some(Some(t.clone()));
            self.finished.push(i);
            return Ok(Some(t));
        }
        if let Some(at) = self.stack.iter().position(|&s| s == i) {
            let names: Vec<&str> = self.stack[at..]
                .iter()
                .chain(std::iter::once(&i))
                .map(|&s| self.opts[s].name)
                .collect();
            return Err(self.blame(i, format!("reference cycle: {}", names.join(" -> "))));
        }
        self.stack.push(i);
        let group = self.opts[i].group;
        let result = substitute(&raw_text, |name| -> ConfigResult<String> {
            let j = self.target(group, name).ok_or_else(|| {
                let scope = match name.split_once('.') {
                    Some((g, _)) => format!("[{g}]"),
                    None if same_group(group, DEFAULT_GROUP) => "[DEFAULT]".to_owned(),
                    None => format!("[{group}] or [DEFAULT]"),
                };
                // Most often a password holding `$`: say how to write one.
                self.blame(
                    i,
                    format!(
                        "undefined reference ${{{name}}}: no option {name} in {scope} \
                         (write $$ for a literal $)"
                    ),
                )
            })?;
            Ok(self.text(j)?.unwrap_or_default())
        });
        self.stack.pop();
        let t = result?;
        self.done[i] = Some(Some(t.clone()));
        self.finished.push(i);
        Ok(Some(t))
    }

    /// oslo `StrSubWrapper`: `group.name` names that group's option; a plain name is
    /// looked up in the referencing option's group, then in DEFAULT. Old names count.
    fn target(&self, group: &str, name: &str) -> Option<usize> {
        let index = |g: &str, n: &str| {
            self.opts
                .iter()
                .position(|o| same_group(o.group, g) && o.name == n)
                .or_else(|| self.opts.iter().position(|o| o.answers_to(g, n)))
        };
        match name.split_once('.') {
            Some((g, n)) => index(g, n),
            None => index(group, name).or_else(|| index(DEFAULT_GROUP, name)),
        }
    }

    fn blame(&self, i: usize, reason: String) -> ConfigError {
        ConfigError::Value {
            place: self.raws[i].place.clone(),
            reason,
        }
    }
}

#[cfg(test)]
#[path = "loader_tests.rs"]
mod tests;
