//! Where raw option text comes from, one layer at a time: the files of `--config-dir`
//! (oslo: `sorted(glob(DIR/*.conf))`), environment variable names
//! (oslo's `OS_<GROUP>__<OPTION>`), and the winning file entry for an option when old and
//! new names are mixed (oslo `_get_file_value`: the latest file holding either name wins;
//! inside that file the new name wins).

use std::path::{Path, PathBuf};

use crate::error::{ConfigError, ConfigResult};
use crate::schema::Opt;
use crate::{Entry, Ini};

/// `DIR/*.conf` as Python's `sorted(glob.glob(...))` lists them: names not starting with
/// `.` (glob skips hidden files), byte order; only regular files (or links to them).
pub(crate) fn config_dir_files(dir: &Path) -> ConfigResult<Vec<PathBuf>> {
    let bad = |reason: String| ConfigError::ConfigDir {
        path: dir.to_owned(),
        reason,
    };
    let listing = std::fs::read_dir(dir).map_err(|e| bad(e.to_string()))?;
    let mut files = Vec::new();
    for entry in listing {
        let entry = entry.map_err(|e| bad(e.to_string()))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if name.starts_with('.') || !name.ends_with(".conf") {
            continue;
        }
        let path = entry.path();
        if path.is_file() {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

/// oslo.config's environment variable for `[group] name`: `OS_DEFAULT__DEBUG`,
/// `OS_METADATA_RATE_LIMITING__BASE_WINDOW_DURATION`.
pub fn env_var(group: &str, name: &str) -> String {
    format!("OS_{}__{}", group.to_uppercase(), name.to_uppercase())
}

/// The entry that sets `opt` in the files, if any (see the module comment for the rule).
pub(crate) fn file_entry<'a>(ini: &'a Ini, opt: &Opt) -> Option<&'a Entry> {
    let entries = ini.entries();
    let latest = entries
        .iter()
        .rev()
        .find(|e| opt.answers_to(&e.section, &e.key))?;
    let is_new = |e: &Entry| crate::schema::same_group(&e.section, opt.group) && e.key == opt.name;
    if is_new(latest) {
        return Some(latest);
    }
    entries
        .iter()
        .rev()
        .find(|e| e.path == latest.path && is_new(e))
        .or(Some(latest))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::Kind;

    #[test]
    fn env_names_follow_oslo() {
        assert_eq!(env_var("DEFAULT", "debug"), "OS_DEFAULT__DEBUG");
        assert_eq!(
            env_var("metadata_rate_limiting", "base_window_duration"),
            "OS_METADATA_RATE_LIMITING__BASE_WINDOW_DURATION"
        );
    }

    #[test]
    fn config_dir_lists_visible_conf_files_sorted() {
        let dir = std::env::temp_dir().join(format!("ns-ini-dir-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("sub.conf")).expect("mkdir");
        for f in [
            "b.conf",
            "a.conf",
            "10.conf",
            "c.ini",
            ".hidden.conf",
            "d.conf.bak",
        ] {
            std::fs::write(dir.join(f), "").expect("write");
        }
        let names: Vec<String> = config_dir_files(&dir)
            .expect("lists")
            .iter()
            .filter_map(|p| p.file_name()?.to_str().map(str::to_owned))
            .collect();
        assert_eq!(names, vec!["10.conf", "a.conf", "b.conf"]);
        let err = config_dir_files(&dir.join("missing")).expect_err("missing dir");
        assert!(err.to_string().starts_with("--config-dir "), "{err}");
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }

    #[test]
    fn new_name_wins_within_a_file_latest_file_wins_across() {
        const OPT: Opt = Opt::new("DEFAULT", "nova_metadata_host", Kind::Str, "")
            .deprecated(&[("DEFAULT", "nova_metadata_ip")]);
        let mut ini = Ini::parse_str(
            "[DEFAULT]\nnova_metadata_host = new\nnova_metadata_ip = old\n",
            Path::new("a.ini"),
        )
        .expect("parses");
        assert_eq!(
            file_entry(&ini, &OPT).map(|e| e.value.as_str()),
            Some("new")
        );
        let later = Ini::parse_str("[DEFAULT]\nnova_metadata_ip = later\n", Path::new("b.ini"))
            .expect("parses");
        ini.entries.extend(later.entries);
        assert_eq!(
            file_entry(&ini, &OPT).map(|e| e.value.as_str()),
            Some("later")
        );
    }
}
