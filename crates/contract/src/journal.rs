//! Logs under journald. systemd connects a service's stderr to the journal and sets
//! `JOURNAL_STREAM=<dev>:<ino>` of that stream; when stderr is that stream (checked, as
//! systemd asks, since a child may inherit the variable with another stderr), every line
//! starts with its syslog priority `<N>` (sd-daemon(3): error 3, warning 4, info 6, debug 7),
//! so `journalctl -p warning` finds warnings, and carries no timestamp (the journal stamps each
//! line itself). Elsewhere lines are as before: a timestamp, and colour only on a terminal.

use std::fmt;

use tracing::{Event, Level, Subscriber};
use tracing_subscriber::fmt::format::{DefaultFields, Format, Full, Writer};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

/// Whether our stderr is the journal stream systemd gave us (`JOURNAL_STREAM` names its
/// device and inode).
pub fn stderr_is_journal() -> bool {
    use std::os::unix::fs::MetadataExt;
    let Some(v) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    // /proc/self/fd/2 resolves to the stream itself (a socket or pipe): its dev and ino.
    std::fs::metadata("/proc/self/fd/2")
        .is_ok_and(|m| v.to_str().is_some_and(|v| names(v, m.dev(), m.ino())))
}

/// Whether a `JOURNAL_STREAM` value (`<dev>:<ino>`, decimal) names the stream `dev`/`ino`.
fn names(value: &str, dev: u64, ino: u64) -> bool {
    value
        .split_once(':')
        .is_some_and(|(d, i)| d.parse() == Ok(dev) && i.parse() == Ok(ino))
}

/// The syslog priority of a level (sd-daemon(3)'s `SD_ERR` ... `SD_DEBUG`).
pub fn priority(level: &Level) -> u8 {
    match *level {
        Level::ERROR => 3,
        Level::WARN => 4,
        Level::INFO => 6,
        _ => 7,
    }
}

/// The event format of every binary's stderr log: [`stderr_is_journal`] decides once.
pub struct StderrFormat {
    journal: bool,
    plain: Format<Full>,
    journal_format: Format<Full, ()>,
}

impl StderrFormat {
    /// Journal lines when stderr is the journal, else timestamped lines (ANSI colour on a
    /// terminal only).
    pub fn detect() -> StderrFormat {
        let tty = std::io::IsTerminal::is_terminal(&std::io::stderr());
        StderrFormat::new(stderr_is_journal(), tty)
    }

    /// With the choice made by the caller (tests).
    pub fn new(journal: bool, ansi: bool) -> StderrFormat {
        StderrFormat {
            journal,
            plain: Format::default().with_ansi(ansi && !journal),
            journal_format: Format::default().without_time().with_ansi(false),
        }
    }

    /// Whether lines go to the journal (then a subscriber must not add colour either).
    pub fn journal(&self) -> bool {
        self.journal
    }
}

impl<S, N> FormatEvent<S, N> for StderrFormat
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        if self.journal {
            write!(writer, "<{}>", priority(event.metadata().level()))?;
            self.journal_format.format_event(ctx, writer, event)
        } else {
            self.plain.format_event(ctx, writer, event)
        }
    }
}

/// The default fields formatter, named for the subscribers that take [`StderrFormat`].
pub type Fields = DefaultFields;

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().expect("lock").extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn lines(journal: bool) -> String {
        let buf = Buf::default();
        let out = buf.clone();
        let sub = tracing_subscriber::fmt()
            .event_format(StderrFormat::new(journal, false))
            .with_writer(move || out.clone())
            .finish();
        tracing::subscriber::with_default(sub, || {
            tracing::error!(id = "r1", "broken");
            tracing::warn!("careful");
            tracing::info!("fine");
        });
        let v = buf.0.lock().expect("lock").clone();
        String::from_utf8(v).expect("utf8")
    }

    #[test]
    fn journal_lines_carry_their_priority_and_no_timestamp() {
        let text = lines(true);
        let l: Vec<&str> = text.lines().collect();
        assert_eq!(l.len(), 3, "{text}");
        assert!(
            l[0].starts_with("<3>ERROR ") && l[0].contains("broken id=\"r1\""),
            "{text}"
        );
        assert!(l[1].starts_with("<4> WARN "), "{text}");
        assert!(l[2].starts_with("<6> INFO "), "{text}");
        let plain = lines(false);
        assert!(
            plain.lines().all(|l| l.starts_with("20")),
            "timestamped: {plain}"
        );
    }

    #[test]
    fn journal_stream_must_name_our_stderr() {
        assert!(names("8:12345", 8, 12345));
        // Inherited by a child whose stderr is another file: not the journal.
        assert!(!names("8:12345", 8, 999));
        assert!(!names("9:12345", 8, 12345));
        assert!(!names("8-12345", 8, 12345));
        assert!(!names("", 8, 12345));
        assert_eq!(priority(&Level::DEBUG), 7);
        assert_eq!(priority(&Level::TRACE), 7);
    }
}
