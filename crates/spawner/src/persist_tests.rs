//! Tests of `persist.rs`: saving, the previous copy, recovery, and the journal's replay
//! and rotation (`journal.rs`) as loading sees them.

use super::*;
use crate::records::{Change, Router};

fn dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("ns-persist-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    statedir::prepare(&d).expect("mkdir");
    d
}

fn set(ids: &[&str]) -> RecordSet {
    RecordSet {
        routers: ids
            .iter()
            .map(|id| Router {
                id: (*id).into(),
                netns: None,
                ha_state: None,
                distributed: false,
            })
            .collect(),
        networks: Vec::new(),
    }
}

/// Load `d`: the records and the recovery.
fn loaded(d: &Path) -> (RecordSet, Recovery) {
    let l = load(d).expect("load");
    (l.set, l.recovery)
}

fn router(id: &str, netns: Option<&str>) -> Router {
    Router {
        id: id.into(),
        netns: netns.map(str::to_owned),
        ha_state: None,
        distributed: false,
    }
}

fn put(id: &str) -> Change {
    Change::PutRouter(router(id, None))
}

/// A journal line as the journal writes it.
fn line(seq: u64, change: &Change) -> String {
    let change = serde_json::to_string(change).expect("json");
    format!("{{\"seq\":{seq},\"change\":{change}}}\n")
}

fn ids(set: &RecordSet) -> Vec<&str> {
    set.routers.iter().map(|r| r.id.as_str()).collect()
}

fn set_aside_files(d: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(d)
        .expect("ls")
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.contains(".bad-"))
        .collect();
    v.sort();
    v
}

#[test]
fn failed_save_leaves_no_temp_file() {
    let d = dir("fail");
    // The target's name is taken by a non-empty directory: the rename fails.
    std::fs::create_dir_all(d.join(FILE).join("x")).expect("mkdir");
    assert!(save(&d, &RecordSet::default()).is_err());
    assert!(!d.join(format!(".{FILE}.tmp")).exists(), "temp file left");
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn each_save_keeps_the_previous_good_copy() {
    let d = dir("prev");
    save(&d, &set(&["a"])).expect("save");
    assert!(!d.join(PREV).exists(), "nothing to keep on the first save");
    save(&d, &set(&["a", "b"])).expect("save");
    assert_eq!(loaded(&d), (set(&["a", "b"]), Recovery::Clean));
    let prev = parse(&d.join(PREV)).expect("prev").expect("there");
    assert_eq!(prev, set(&["a"]));
    let _ = std::fs::remove_dir_all(&d);
}

/// Issue "hardening" item 9: an empty or truncated file after a power loss.
#[test]
fn a_damaged_file_is_set_aside_and_the_previous_copy_loaded() {
    for damage in ["", "{\"routers\": [{\"id\": \"a\"}, {\"id"] {
        let d = dir("damaged");
        save(&d, &set(&["a"])).expect("save");
        save(&d, &set(&["a", "b"])).expect("save");
        std::fs::write(d.join(FILE), damage).expect("damage");
        let (got, rec) = loaded(&d);
        assert_eq!(got, set(&["a"]), "the previous copy");
        let Recovery::FromPrevious { bad, .. } = &rec else {
            panic!("{rec:?}")
        };
        assert_eq!(std::fs::read_to_string(bad).expect("set aside"), damage);
        assert!(rec.note().expect("note").contains("records.json.bad-"));
        // It lacks "b": a proxy of b found running may not be stopped for not being wanted.
        assert!(rec.records_lost(), "{rec:?}");
        assert!(rec.note().expect("note").contains("none is stopped"));
        // Written back: the next start loads it cleanly.
        assert_eq!(loaded(&d), (set(&["a"]), Recovery::Clean));
        let _ = std::fs::remove_dir_all(&d);
    }
}

#[test]
fn a_damaged_file_without_a_previous_copy_starts_empty_and_says_records_are_lost() {
    let d = dir("lost");
    std::fs::write(d.join(FILE), "{\"routers\": [").expect("damage");
    let (got, rec) = loaded(&d);
    assert_eq!(got, RecordSet::default());
    assert!(rec.records_lost(), "{rec:?}");
    assert!(rec.note().expect("note").contains("none is stopped"));
    assert!(!d.join(FILE).exists(), "set aside");
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn a_symlink_in_place_of_the_file_is_not_followed() {
    let d = dir("link");
    let target = d.join("elsewhere.json");
    std::fs::write(&target, "{\"routers\": []}").expect("target");
    std::os::unix::fs::symlink(&target, d.join(FILE)).expect("symlink");
    let (got, rec) = loaded(&d);
    assert_eq!(got, RecordSet::default());
    assert!(rec.records_lost(), "{rec:?}");
    let _ = std::fs::remove_dir_all(&d);
}

/// `.old` then the journal, in order, onto the snapshot, whether or not the snapshot has
/// the `.old` lines already (applying them again is harmless: the same records either way);
/// the result is saved as a snapshot (in the format an older spawner reads), the journal
/// cleared, and the next line gets the next sequence.
#[test]
fn replay_applies_old_then_journal_whether_or_not_the_snapshot_has_them() {
    let old =
        line(1, &put("x")) + &line(2, &Change::RemoveRouter("x".into())) + &line(3, &put("b"));
    let cur = line(4, &Change::RemoveRouter("a".into()))
        + &line(5, &put("c"))
        + &line(6, &Change::RemoveRouter("b".into()))
        + &line(7, &Change::PutRouter(router("a", Some("elsewhere"))));
    // The snapshot before the `.old` lines, and after them (a death before `.old` went).
    for snapshot in [&["a"][..], &["a", "b"][..]] {
        let d = dir("replay");
        save(&d, &set(snapshot)).expect("save");
        std::fs::write(d.join(journal::OLD), &old).expect("old");
        std::fs::write(d.join(journal::FILE), &cur).expect("journal");
        let l = load(&d).expect("load");
        assert_eq!(ids(&l.set), ["a", "c"], "from {snapshot:?}");
        assert_eq!(
            l.set.routers[0].netns.as_deref(),
            Some("elsewhere"),
            "line 7 last"
        );
        assert_eq!(l.recovery, Recovery::Clean);
        assert_eq!(l.journal.seq(), 7);
        assert_eq!(l.journal.note(), None);
        assert!(!d.join(journal::OLD).exists(), "cleared");
        let fresh = std::fs::read(d.join(journal::FILE)).expect("a fresh journal");
        assert!(fresh.is_empty(), "cleared");
        let text = std::fs::read(d.join(FILE)).expect("snapshot");
        let snap: serde_json::Value = serde_json::from_slice(&text).expect("json");
        assert_eq!(
            snap.as_object()
                .map(|o| o.keys().cloned().collect::<Vec<_>>()),
            Some(vec!["networks".to_owned(), "routers".to_owned()]),
            "the records file an older spawner reads: {snap}"
        );
        assert_eq!(
            ids(&parse(&d.join(FILE)).expect("parses").expect("there")),
            ["a", "c"]
        );
        let mut j = l.journal;
        assert_eq!(j.append(&put("d")).expect("append"), 8);
        let text = std::fs::read_to_string(d.join(journal::FILE)).expect("journal");
        assert_eq!(text, line(8, &put("d")));
        let _ = std::fs::remove_dir_all(&d);
    }
}

/// A last line without its newline (the spawner died in the middle of the write) is
/// ignored; everything before it is applied and nothing is set aside.
#[test]
fn a_torn_last_line_is_ignored() {
    let d = dir("torn");
    let whole = line(1, &put("a")) + &line(2, &put("b"));
    let torn = &line(3, &put("c"))[..20];
    std::fs::write(d.join(journal::FILE), whole + torn).expect("journal");
    let l = load(&d).expect("load");
    assert_eq!(ids(&l.set), ["a", "b"]);
    assert_eq!((l.journal.seq(), l.journal.note()), (2, None));
    assert!(set_aside_files(&d).is_empty());
    assert_eq!(loaded(&d).0, set(&["a", "b"]), "saved as a snapshot");
    let _ = std::fs::remove_dir_all(&d);
}

/// A line that does not parse (or names an invalid id) stops the replay there: the lines
/// before it are applied, that file and the later one are set aside as `.bad-<secs>`, the
/// status note names file, line and reason, and the spawner starts (a fresh journal).
#[test]
fn a_bad_line_stops_the_replay_and_its_file_is_set_aside() {
    for (bad, reason) in [
        (
            "{\"seq\":2,\"change\":{\"put_rooter\":{}}}\n",
            "unknown variant",
        ),
        ("not json\n", "expected"),
        (
            "{\"seq\":2,\"change\":{\"remove_router\":\"../etc\"}}\n",
            "invalid id",
        ),
    ] {
        let d = dir("bad");
        std::fs::write(
            d.join(journal::OLD),
            line(1, &put("a")) + bad + &line(3, &put("b")),
        )
        .expect("old");
        std::fs::write(d.join(journal::FILE), line(4, &put("c"))).expect("journal");
        let l = load(&d).expect("load: never a crash loop");
        assert_eq!(ids(&l.set), ["a"], "the lines before the bad one");
        let note = l.journal.note().expect("note").to_owned();
        let at = format!("{}:2: ", d.join(journal::OLD).display());
        assert!(note.contains(&at) && note.contains(reason), "{note}");
        let aside = set_aside_files(&d);
        assert_eq!(aside.len(), 2, "{aside:?}");
        assert!(aside[0].starts_with("records.journal.bad-"), "{aside:?}");
        assert!(
            aside[1].starts_with("records.journal.old.bad-"),
            "{aside:?}"
        );
        assert!(
            note.contains(&aside[0]) && note.contains(&aside[1]),
            "{note}"
        );
        let kept = std::fs::read_to_string(d.join(&aside[1])).expect("kept");
        assert!(kept.contains(bad), "set aside as it was");
        // The next start is clean: the snapshot holds a, the journal is fresh.
        let again = load(&d).expect("again");
        assert_eq!((ids(&again.set), again.journal.note()), (vec!["a"], None));
        let _ = std::fs::remove_dir_all(&d);
    }
}

/// The save's crash points: after the journal was rotated but before the snapshot was
/// written, and after the snapshot but before `.old` was removed. Either way every change
/// is there once, in order.
#[test]
fn a_crash_at_any_point_of_a_save_loses_nothing() {
    // Rotated, then killed before the snapshot: `.old` and the journal hold everything.
    let d = dir("crash-rotated");
    save(&d, &set(&["z"])).expect("first snapshot");
    let mut j = Journal::open(&d, 0, None);
    j.append(&put("a")).expect("a");
    j.append(&Change::RemoveRouter("z".into())).expect("rm z");
    assert_eq!(j.rotate(), 2, "the copy includes lines 1 and 2");
    assert!(d.join(journal::OLD).exists());
    j.append(&put("b")).expect("b");
    drop(j);
    assert_eq!(loaded(&d).0, set(&["a", "b"]));
    let _ = std::fs::remove_dir_all(&d);

    // Snapshot written, then killed before `.old` was removed: its lines are applied again,
    // to the same effect.
    let d = dir("crash-saved");
    let mut j = Journal::open(&d, 0, None);
    j.append(&put("a")).expect("a");
    j.append(&put("b")).expect("b");
    assert_eq!(j.rotate(), 2);
    save(&d, &set(&["a", "b"])).expect("snapshot");
    j.append(&Change::RemoveRouter("a".into())).expect("rm a");
    j.append(&put("c")).expect("c");
    drop(j);
    assert!(d.join(journal::OLD).exists(), "the crash left it");
    let l = load(&d).expect("load");
    assert_eq!(ids(&l.set), ["b", "c"]);
    assert_eq!(l.journal.seq(), 4);
    let _ = std::fs::remove_dir_all(&d);
}

/// An `.old` left by a failed snapshot is never overwritten by the next rotation: the
/// journal keeps growing instead, and its lines the next snapshot includes are applied
/// again at the next start, to the same effect.
#[test]
fn a_left_old_journal_is_not_overwritten() {
    let d = dir("left-old");
    let mut j = Journal::open(&d, 0, None);
    j.append(&put("a")).expect("a");
    assert_eq!(j.rotate(), 1);
    // The snapshot of line 1 failed: `.old` stays.
    j.append(&put("b")).expect("b");
    assert_eq!(j.rotate(), 2, "not rotated: `.old` is still needed");
    assert_eq!(
        std::fs::read_to_string(d.join(journal::OLD)).expect("old"),
        line(1, &put("a"))
    );
    j.append(&put("c")).expect("c");
    // The second snapshot (lines up to 2) is written; `.old` goes, line 2 stays behind.
    save(&d, &set(&["a", "b"])).expect("snapshot");
    journal::remove_old(&d);
    drop(j);
    assert_eq!(loaded(&d).0, set(&["a", "b", "c"]));
    let _ = std::fs::remove_dir_all(&d);
}

/// The journal is never written through a link planted in its place: the append fails
/// naming the file (the API answers "not saved") and the link's target is untouched.
#[test]
fn the_journal_does_not_follow_a_symlink() {
    let d = dir("journal-link");
    let victim = d.join("victim");
    std::fs::write(&victim, "keep").expect("victim");
    std::os::unix::fs::symlink(&victim, d.join(journal::FILE)).expect("symlink");
    let mut j = Journal::open(&d, 0, None);
    let e = j.append(&put("a")).expect_err("a link").to_string();
    assert!(e.contains("records.journal"), "{e}");
    assert_eq!(std::fs::read_to_string(&victim).expect("victim"), "keep");
    let _ = std::fs::remove_dir_all(&d);
}
