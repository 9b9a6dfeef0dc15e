//! Watching `/run/netns` with inotify: a stream of namespaces appearing and disappearing.

use std::ffi::OsString;
use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::task::{Context, Poll};

use futures::Stream;
use inotify::{EventMask, EventStream, Inotify, WatchMask};

use crate::error::{Error, Result};

/// A change under the watched directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NetnsEvent {
    /// A file appeared (IN_CREATE or IN_MOVED_TO).
    Added(String),
    /// A file disappeared (IN_DELETE or IN_MOVED_FROM).
    Removed(String),
}

/// Watch `/run/netns` (created if missing); see [`watch_dir`].
pub fn watch() -> Result<NetnsWatcher> {
    watch_dir(Path::new(crate::NETNS_RUN_DIR))
}

/// Watch `dir` (created if missing) with inotify: a stream of Added/Removed names.
///
/// Must be called within a tokio runtime. Things to know when consuming it:
/// - `ip netns add` (and [`crate::create`]) creates the file *before* bind-mounting the
///   namespace on it, so right after `Added` an open may briefly fail with
///   [`Error::NotNetns`]: retry, or reconcile against [`crate::list`].
/// - Events present before the watch started are not replayed: list the directory after
///   starting the watch, then apply events.
/// - If the kernel queue overflows, the stream yields an `Err` (events were lost: rescan)
///   and continues. If the directory itself is removed, it yields an `Err` and ends.
/// - Names that are not UTF-8 and subdirectories are skipped (they cannot be namespaces
///   this API can name).
pub fn watch_dir(dir: &Path) -> Result<NetnsWatcher> {
    let target = || dir.display().to_string();
    tokio::runtime::Handle::try_current().map_err(|e| Error::Io {
        op: "watch",
        target: target(),
        source: io::Error::other(e),
    })?;
    std::fs::create_dir_all(dir).map_err(|e| Error::from_io("create", dir, "directory", e))?;
    let inotify = Inotify::init().map_err(|e| Error::from_io("inotify_init", dir, "inotify", e))?;
    inotify
        .watches()
        .add(
            dir,
            WatchMask::CREATE
                | WatchMask::DELETE
                | WatchMask::MOVED_FROM
                | WatchMask::MOVED_TO
                | WatchMask::DELETE_SELF
                | WatchMask::MOVE_SELF
                | WatchMask::ONLYDIR,
        )
        .map_err(|e| Error::from_io("watch", dir, &format!("directory {}", dir.display()), e))?;
    let events = inotify
        .into_event_stream(vec![0u8; 4096])
        .map_err(|e| Error::from_io("watch", dir, "directory", e))?;
    Ok(NetnsWatcher {
        events,
        dir: dir.to_owned(),
        done: false,
    })
}

/// The stream returned by [`watch`] and [`watch_dir`]. `Send + Unpin`.
#[derive(Debug)]
pub struct NetnsWatcher {
    events: EventStream<Vec<u8>>,
    dir: PathBuf,
    done: bool,
}

impl NetnsWatcher {
    /// The watched directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn error(&self, source: io::Error) -> Error {
        Error::Io {
            op: "watch",
            target: self.dir.display().to_string(),
            source,
        }
    }
}

/// What one inotify event means for the stream.
#[derive(Debug, PartialEq, Eq)]
enum Meaning {
    Event(NetnsEvent),
    Skip,
    Overflow,
    DirGone,
}

fn classify(mask: EventMask, name: Option<OsString>) -> Meaning {
    if mask.contains(EventMask::Q_OVERFLOW) {
        return Meaning::Overflow;
    }
    if mask.intersects(EventMask::DELETE_SELF | EventMask::MOVE_SELF | EventMask::IGNORED) {
        return Meaning::DirGone;
    }
    if mask.contains(EventMask::ISDIR) {
        return Meaning::Skip;
    }
    let Some(name) = name.and_then(|n| n.into_string().ok()) else {
        return Meaning::Skip;
    };
    if mask.intersects(EventMask::CREATE | EventMask::MOVED_TO) {
        Meaning::Event(NetnsEvent::Added(name))
    } else if mask.intersects(EventMask::DELETE | EventMask::MOVED_FROM) {
        Meaning::Event(NetnsEvent::Removed(name))
    } else {
        Meaning::Skip
    }
}

impl Stream for NetnsWatcher {
    type Item = Result<NetnsEvent>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        loop {
            if self.done {
                return Poll::Ready(None);
            }
            let event = match Pin::new(&mut self.events).poll_next(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(None) => return Poll::Ready(None),
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(self.error(e)))),
                Poll::Ready(Some(Ok(event))) => event,
            };
            match classify(event.mask, event.name) {
                Meaning::Event(ev) => return Poll::Ready(Some(Ok(ev))),
                Meaning::Skip => continue,
                Meaning::Overflow => {
                    let e = io::Error::other("inotify queue overflowed, events were lost: rescan");
                    return Poll::Ready(Some(Err(self.error(e))));
                }
                Meaning::DirGone => {
                    self.done = true;
                    let e = io::Error::from(io::ErrorKind::NotFound);
                    return Poll::Ready(Some(Err(self.error(e))));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;
    use std::time::Duration;

    fn name(s: &str) -> Option<OsString> {
        Some(OsString::from(s))
    }

    #[test]
    fn classify_maps_inotify_masks() {
        use NetnsEvent::*;
        assert_eq!(
            classify(EventMask::CREATE, name("a")),
            Meaning::Event(Added("a".into()))
        );
        assert_eq!(
            classify(EventMask::MOVED_TO, name("a")),
            Meaning::Event(Added("a".into()))
        );
        assert_eq!(
            classify(EventMask::DELETE, name("a")),
            Meaning::Event(Removed("a".into()))
        );
        assert_eq!(
            classify(EventMask::MOVED_FROM, name("a")),
            Meaning::Event(Removed("a".into()))
        );
        assert_eq!(
            classify(EventMask::CREATE | EventMask::ISDIR, name("d")),
            Meaning::Skip
        );
        assert_eq!(classify(EventMask::Q_OVERFLOW, None), Meaning::Overflow);
        assert_eq!(classify(EventMask::DELETE_SELF, None), Meaning::DirGone);
        assert_eq!(classify(EventMask::IGNORED, None), Meaning::DirGone);
    }

    async fn next(w: &mut NetnsWatcher) -> Result<NetnsEvent> {
        tokio::time::timeout(Duration::from_secs(5), w.next())
            .await
            .expect("event within 5 s")
            .expect("stream not ended")
    }

    /// Unprivileged: any directory works, and a missing one is created.
    #[tokio::test]
    async fn watch_dir_reports_files_appearing_and_vanishing() {
        let base = std::env::temp_dir().join(format!("ns-netns-watch-{}", std::process::id()));
        let dir = base.join("netns");
        let _ = std::fs::remove_dir_all(&base);
        let mut w = watch_dir(&dir).expect("watch creates the directory");
        assert!(dir.is_dir());
        std::fs::write(dir.join("qrouter-1"), b"").expect("create");
        std::fs::create_dir(dir.join("subdir")).expect("mkdir is skipped");
        std::fs::rename(dir.join("qrouter-1"), dir.join("qrouter-2")).expect("rename");
        std::fs::remove_file(dir.join("qrouter-2")).expect("remove");
        assert_eq!(
            next(&mut w).await.expect("ev"),
            NetnsEvent::Added("qrouter-1".into())
        );
        assert_eq!(
            next(&mut w).await.expect("ev"),
            NetnsEvent::Removed("qrouter-1".into())
        );
        assert_eq!(
            next(&mut w).await.expect("ev"),
            NetnsEvent::Added("qrouter-2".into())
        );
        assert_eq!(
            next(&mut w).await.expect("ev"),
            NetnsEvent::Removed("qrouter-2".into())
        );
        std::fs::remove_dir_all(&base).expect("cleanup");
        let e = next(&mut w).await.expect_err("dir gone");
        assert!(e.to_string().contains("netns"), "{e}");
        let end = tokio::time::timeout(Duration::from_secs(5), w.next()).await;
        assert!(
            matches!(end, Ok(None)),
            "stream ends after its directory is gone"
        );
    }

    #[test]
    fn watch_outside_a_runtime_is_an_error_not_a_panic() {
        let e = watch_dir(Path::new("/tmp")).expect_err("no runtime");
        assert!(e.to_string().starts_with("watch /tmp"), "{e}");
    }
}
