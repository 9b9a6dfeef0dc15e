//! The resolved options a config module reads: typed getters that follow the schema's
//! kinds, the origin of every value, and `error()` so cross-field checks blame the right
//! place. Asking for an option the schema lacks, or with the wrong getter, is an error
//! (`NotInSchema`, `WrongKind`), never a panic.

use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use crate::convert::Typed;
use crate::error::{ConfigError, ConfigResult};
use crate::origin::{Origin, Place};
use crate::schema::{same_group, Opt};

/// One option after every layer, substitution and check.
#[derive(Debug, Clone)]
pub(crate) struct Item {
    pub opt: &'static Opt,
    pub place: Place,
    /// Final text after `$` substitution; `None` when unset.
    pub text: Option<String>,
    pub typed: Option<Typed>,
}

/// Every option of a schema, resolved.
#[derive(Debug, Clone)]
pub struct Values {
    pub(crate) items: Vec<Item>,
}

impl Values {
    fn item(&self, group: &str, name: &str) -> ConfigResult<&Item> {
        self.items
            .iter()
            .find(|i| same_group(i.opt.group, group) && i.opt.name == name)
            .ok_or_else(|| ConfigError::NotInSchema {
                group: group.to_owned(),
                name: name.to_owned(),
            })
    }

    fn typed(&self, group: &str, name: &str, wanted: &'static str) -> ConfigResult<Option<&Typed>> {
        let item = self.item(group, name)?;
        let kind_ok = match (&item.opt.kind, wanted) {
            (crate::Kind::Port, "an integer") => true,
            (k, w) => k.name() == w,
        };
        if !kind_ok {
            return Err(ConfigError::WrongKind {
                group: group.to_owned(),
                name: name.to_owned(),
                kind: item.opt.kind.name(),
                wanted,
            });
        }
        Ok(item.typed.as_ref())
    }

    fn required<'a>(
        &'a self,
        group: &str,
        name: &str,
        wanted: &'static str,
    ) -> ConfigResult<&'a Typed> {
        self.typed(group, name, wanted)?
            .ok_or_else(|| self.error(group, name, "has no value (and no default)"))
    }

    /// `origin: reason` for `[group] name`, where origin is whatever set its value.
    pub fn error(&self, group: &str, name: &str, reason: impl std::fmt::Display) -> ConfigError {
        let place = match self.item(group, name) {
            Ok(i) => i.place.clone(),
            Err(e) => return e,
        };
        ConfigError::Value {
            place,
            reason: reason.to_string(),
        }
    }

    /// Where `[group] name` was set, and under which spelling.
    pub fn place(&self, group: &str, name: &str) -> ConfigResult<&Place> {
        Ok(&self.item(group, name)?.place)
    }

    /// Which layer set `[group] name`.
    pub fn origin(&self, group: &str, name: &str) -> ConfigResult<&Origin> {
        Ok(&self.item(group, name)?.place.origin)
    }

    /// True when some layer above the default set `[group] name`.
    pub fn is_set(&self, group: &str, name: &str) -> ConfigResult<bool> {
        Ok(!self.origin(group, name)?.is_default())
    }

    /// The final text of any option (after `$` substitution); `None` when unset.
    pub fn text(&self, group: &str, name: &str) -> ConfigResult<Option<&str>> {
        Ok(self.item(group, name)?.text.as_deref())
    }

    /// A `Str` option; unset reads as "".
    pub fn str(&self, group: &str, name: &str) -> ConfigResult<String> {
        Ok(self.opt_str(group, name)?.unwrap_or_default())
    }

    /// A `Str` option; `None` when unset or empty (user, group, host...).
    pub fn opt_str(&self, group: &str, name: &str) -> ConfigResult<Option<String>> {
        Ok(match self.typed(group, name, "a string")? {
            Some(Typed::Str(s)) if !s.is_empty() => Some(s.clone()),
            _ => None,
        })
    }

    pub fn bool(&self, group: &str, name: &str) -> ConfigResult<bool> {
        match self.required(group, name, "a boolean")? {
            Typed::Bool(b) => Ok(*b),
            _ => Err(self.mismatch(group, name, "a boolean")),
        }
    }

    /// An `Int` or `Port` option, converted to `T`; a value that does not fit `T` is an
    /// error at its origin (declare the range so it cannot happen).
    pub fn int<T: TryFrom<i64>>(&self, group: &str, name: &str) -> ConfigResult<T> {
        match self.required(group, name, "an integer")? {
            Typed::Int(n) => {
                T::try_from(*n).map_err(|_| self.error(group, name, format!("{n} is out of range")))
            }
            _ => Err(self.mismatch(group, name, "an integer")),
        }
    }

    /// A `Port` option.
    pub fn port(&self, group: &str, name: &str) -> ConfigResult<u16> {
        self.int(group, name)
    }

    pub fn seconds(&self, group: &str, name: &str) -> ConfigResult<Duration> {
        match self.required(group, name, "seconds")? {
            Typed::Seconds(d) => Ok(*d),
            _ => Err(self.mismatch(group, name, "seconds")),
        }
    }

    /// A `Path` option; `None` when unset or empty.
    pub fn path(&self, group: &str, name: &str) -> ConfigResult<Option<PathBuf>> {
        Ok(match self.typed(group, name, "a path")? {
            Some(Typed::Path(p)) => p.clone(),
            _ => None,
        })
    }

    /// A `List` option; unset reads as empty.
    pub fn list(&self, group: &str, name: &str) -> ConfigResult<Vec<String>> {
        Ok(match self.typed(group, name, "a list")? {
            Some(Typed::List(l)) => l.clone(),
            _ => Vec::new(),
        })
    }

    /// A `Choice` option, as spelled in the schema.
    pub fn choice(&self, group: &str, name: &str) -> ConfigResult<&'static str> {
        match self.required(group, name, "a choice")? {
            Typed::Choice(c) => Ok(c),
            _ => Err(self.mismatch(group, name, "a choice")),
        }
    }

    /// A `Choice` option mapped through `table` (`(name, value)` for every choice).
    pub fn choice_as<T: Copy>(
        &self,
        group: &str,
        name: &str,
        table: &[(&str, T)],
    ) -> ConfigResult<T> {
        let c = self.choice(group, name)?;
        table
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(c))
            .map(|(_, t)| *t)
            .ok_or_else(|| {
                ConfigError::Schema(format!("[{group}] {name}: choice {c:?} is not mapped"))
            })
    }

    /// Any option's text parsed with `FromStr` (ids, bind specs, modes); `None` when unset
    /// or empty. A parse error is reported at the value's origin.
    pub fn parse<T>(&self, group: &str, name: &str) -> ConfigResult<Option<T>>
    where
        T: FromStr,
        T::Err: std::fmt::Display,
    {
        match self
            .text(group, name)?
            .map(str::trim)
            .filter(|t| !t.is_empty())
        {
            None => Ok(None),
            Some(t) => t
                .parse()
                .map(Some)
                .map_err(|e| self.error(group, name, format!("invalid value {t:?}: {e}"))),
        }
    }

    /// Every option with where it was set and its final text, in table order (for a
    /// debug log of the effective configuration; mind secrets).
    pub fn iter(&self) -> impl Iterator<Item = (&'static Opt, &Place, Option<&str>)> + '_ {
        self.items
            .iter()
            .map(|i| (i.opt, &i.place, i.text.as_deref()))
    }

    fn mismatch(&self, group: &str, name: &str, wanted: &'static str) -> ConfigError {
        ConfigError::WrongKind {
            group: group.to_owned(),
            name: name.to_owned(),
            kind: self
                .item(group, name)
                .map(|i| i.opt.kind.name())
                .unwrap_or("unknown"),
            wanted,
        }
    }
}
