//! Where a resolved option value came from, and the one-line prefix every message about it
//! starts with (`file:line: [group] key`, `OS_GROUP__KEY`, `--flag`, `key (default)`).

use std::fmt;
use std::path::PathBuf;

/// The layer (and exact place) a value was taken from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// The schema's default (possibly computed).
    Default,
    /// A `key = value` line of a `--config-file` or a `--config-dir` file.
    File { path: PathBuf, line: usize },
    /// An `OS_<GROUP>__<OPTION>` environment variable.
    Env { var: String },
    /// A command-line flag, by its canonical spelling (`--nova-metadata-host`).
    Flag { name: String },
}

impl Origin {
    /// True when nobody set the option (the schema's default is in effect).
    pub fn is_default(&self) -> bool {
        matches!(self, Origin::Default)
    }
}

/// `origin` + the option (as spelled where it was found), formatted as the message prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Place {
    pub origin: Origin,
    pub group: String,
    /// The key as found: a deprecated name when the value came from one.
    pub key: String,
}

impl fmt::Display for Place {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.origin {
            Origin::File { path, line } => {
                write!(
                    f,
                    "{}:{line}: [{}] {}",
                    path.display(),
                    self.group,
                    self.key
                )
            }
            Origin::Env { var } => f.write_str(var),
            Origin::Flag { name } => f.write_str(name),
            Origin::Default if self.group == "DEFAULT" => write!(f, "{} (default)", self.key),
            Origin::Default => write!(f, "[{}] {} (default)", self.group, self.key),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn place(origin: Origin, group: &str) -> String {
        Place {
            origin,
            group: group.into(),
            key: "k".into(),
        }
        .to_string()
    }

    #[test]
    fn each_origin_formats_as_one_prefix() {
        let file = Origin::File {
            path: "/etc/a.ini".into(),
            line: 3,
        };
        assert_eq!(place(file, "ovn"), "/etc/a.ini:3: [ovn] k");
        let env = Origin::Env {
            var: "OS_DEFAULT__K".into(),
        };
        assert_eq!(place(env, "DEFAULT"), "OS_DEFAULT__K");
        let flag = Origin::Flag { name: "--k".into() };
        assert_eq!(place(flag, "DEFAULT"), "--k");
        assert_eq!(place(Origin::Default, "DEFAULT"), "k (default)");
        assert_eq!(place(Origin::Default, "ovn"), "[ovn] k (default)");
        assert!(Origin::Default.is_default());
    }
}
