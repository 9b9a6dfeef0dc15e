//! The access line's writer (issue #19: its cost). The line is formatted by hand into a
//! reused buffer, byte for byte as the `tracing` fmt layer would print it (same destinations,
//! same journald priority prefix or timestamp), without the field machinery. Lines for stderr
//! and `--log-file` are batched: appended to a pending buffer and written with one `write(2)`
//! when 32 KiB are pending, [`FLUSH_AFTER`] after the oldest pending line (a timer on the
//! serving thread, armed by the first line of each batch), before any other log line (so the
//! order of lines is kept), and at exit. A SIGKILL loses at most the last 50 ms of lines (at
//! most 32 KiB). Syslog gets one datagram per line at once, as before (and as haproxy sends
//! its own).
//!
//! Why not one write per runtime turn, as before: under load that was a write every few
//! requests, and a small append to a file costs more than its bytes (on the bench machine's
//! ext4, Linux 6.18, most of it zeroing the unwritten part of the page-cache folio each
//! append begins). Paired on loopback at c32 keep-alive with the log in a file, CPU per
//! request 24.7 → 23.4 and 24.7 → 22.7 µs with 32–64 KiB writes (21.0–21.7 with stderr to
//! `/dev/null`; bench/README.md, figure 12).
//!
//! The line being formatted and the pending buffer are per serving thread
//! ([`crate::workers`]): two threads appending to one buffer under one lock bounced it
//! between the cores on every request. Each thread writes its own batch (the writes are
//! serialized, so batches never interleave); [`flush`] writes the calling thread's.
//!
//! Without [`install`] (the library used on its own) the line goes through `tracing`.

use std::cell::RefCell;
use std::fmt::Display;
use std::io::Write as _;
use std::net::IpAddr;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tracing_subscriber::fmt::MakeWriter;

use crate::syslog::Syslog;

/// Pending bytes that are written at once.
const FLUSH_AT: usize = 32 * 1024;
/// The longest a line waits in the pending buffer.
pub const FLUSH_AFTER: Duration = Duration::from_millis(50);

static SINK: OnceLock<Sink> = OnceLock::new();

thread_local! {
    /// This thread's line buffers and pending lines.
    static STATE: RefCell<State> = RefCell::new(State::default());
}

/// Where the process's log lines go (chosen once, by `main`).
pub struct Sink {
    /// Stderr, with journald priority prefixes (and no timestamp) when `journal`.
    stderr: bool,
    journal: bool,
    file: Option<&'static ns_contract::logfile::LogFile>,
    syslog: Option<Syslog>,
    /// Held while a batch is written (threads' batches never interleave).
    writing: Mutex<()>,
}

#[derive(Default)]
struct State {
    /// Whole lines not yet written to stderr / the log file.
    pending: Vec<u8>,
    /// When the oldest pending line was added.
    since: Option<Instant>,
    /// The line being formatted, and its syslog datagram (both reused).
    line: Vec<u8>,
    dgram: Vec<u8>,
    /// The cached `YYYY-MM-DDTHH:MM:SS` of `sec` (seconds since the epoch).
    sec: u64,
    stamp: Vec<u8>,
    /// The microseconds of the last [`State::refresh_stamp`].
    micros: u32,
    /// A reading of the wall clock (since the epoch) and the `Instant` it was taken at.
    base: Option<(Instant, Duration)>,
}

/// One access line's fields, in the order they are printed.
pub struct Access<'a> {
    pub client: IpAddr,
    pub client_port: u16,
    pub method: &'a str,
    pub path: &'a str,
    pub http: &'a str,
    pub status: u16,
    pub bytes: u64,
    pub request_us: u64,
    pub agent_us: u64,
    pub duration_us: u64,
    pub term: &'a str,
    pub reason: Option<&'a dyn Display>,
    pub id: &'a str,
}

/// Make `sink` the process's log destination (first call wins). `stderr` when neither a
/// file nor syslog is used; `journal` when that stderr is the journal stream.
pub fn install(
    stderr: bool,
    journal: bool,
    file: Option<&'static ns_contract::logfile::LogFile>,
    syslog: Option<Syslog>,
) -> &'static Sink {
    SINK.get_or_init(|| Sink {
        stderr,
        journal: stderr && journal,
        file,
        syslog,
        writing: Mutex::new(()),
    })
}

/// Log one request's access line (if `access` lines are enabled at info).
pub fn log(a: &Access<'_>, now: Instant) {
    if !tracing::enabled!(target: "access", tracing::Level::INFO) {
        return;
    }
    match SINK.get() {
        Some(sink) => sink.log(a, now),
        None => via_tracing(a),
    }
}

/// Write the calling thread's pending access lines now (exit, the flush timer, and before
/// any other log line).
pub fn flush() {
    if let Some(sink) = SINK.get() {
        // Not while this thread is formatting a line (a log line from inside it).
        let _ = STATE.try_with(|st| {
            if let Ok(mut st) = st.try_borrow_mut() {
                sink.flush_state(&mut st);
            }
        });
    }
}

/// SIGHUP: reopen `--log-file` by its path ([`ns_contract::logfile::reopen`]), after writing
/// the pending access lines to the old file, where they belong.
pub fn reopen_log_file() -> std::io::Result<bool> {
    flush();
    ns_contract::logfile::reopen()
}

impl Sink {
    fn log(&self, a: &Access<'_>, now: Instant) {
        let _ = STATE.try_with(|st| {
            if let Ok(mut st) = st.try_borrow_mut() {
                self.log_into(&mut st, a, now);
            }
        });
    }

    fn log_into(&self, st: &mut State, a: &Access<'_>, now: Instant) {
        let mut line = std::mem::take(&mut st.line);
        line.clear();
        fields(&mut line, a);
        let plain_prefix =
            !self.journal && (self.stderr || self.file.is_some()) || self.syslog.is_some();
        if plain_prefix {
            st.refresh_stamp(now);
        }
        if let Some(s) = &self.syslog {
            // `<PRI>TAG[PID]: ` + the line as the fmt layer prints it, one datagram.
            let mut dgram = std::mem::take(&mut st.dgram);
            dgram.clear();
            s.push_head(6, &mut dgram);
            push_plain_head(&mut dgram, &st.stamp, st.micros);
            dgram.extend_from_slice(&line);
            s.send_raw(&dgram);
            st.dgram = dgram;
        }
        if self.stderr || self.file.is_some() {
            if self.journal {
                st.pending.extend_from_slice(b"<6> INFO access: ");
            } else {
                push_plain_head(&mut st.pending, &st.stamp, st.micros);
            }
            st.pending.extend_from_slice(&line);
            st.pending.push(b'\n');
            let first = st.since.is_none();
            let since = *st.since.get_or_insert(now);
            let due = st.pending.len() >= FLUSH_AT
                || now.saturating_duration_since(since) >= FLUSH_AFTER
                // The first pending line arms the timer; outside a runtime, now.
                || (first && !flush_later());
            if due {
                self.flush_state(st);
            }
        }
        st.line = line;
    }

    fn flush_state(&self, st: &mut State) {
        st.since = None;
        if st.pending.is_empty() {
            return;
        }
        let _writing = self.writing.lock().unwrap_or_else(|p| p.into_inner());
        // As the fmt layer does: a failed log write is not the request's failure.
        if self.stderr {
            let _ = std::io::stderr().lock().write_all(&st.pending);
        }
        if let Some(f) = self.file {
            // A failure is said once per run of them (`LogFile::write_all`).
            f.write_all(&st.pending);
        }
        st.pending.clear();
        // A burst must not keep a large buffer for ever.
        if st.pending.capacity() > 4 * FLUSH_AT {
            st.pending.shrink_to(FLUSH_AT * 2);
        }
    }
}

/// Write this thread's pending lines [`FLUSH_AFTER`] from now, on its runtime (a timer, no
/// syscall of its own); `false` outside a runtime (write now).
fn flush_later() -> bool {
    match tokio::runtime::Handle::try_current() {
        Ok(rt) => {
            drop(rt.spawn(async {
                tokio::time::sleep(FLUSH_AFTER).await;
                flush();
            }));
            true
        }
        Err(_) => false,
    }
}

impl State {
    /// The wall-clock time of `now` (the request's end, already read for its timers): the
    /// clock is read at most once a second, the rest is `now`'s distance from that reading
    /// (a clock step shows within a second). The date and time are reformatted only when
    /// the second changed.
    fn refresh_stamp(&mut self, now: Instant) {
        let t = match self.base {
            Some((at, wall)) if now >= at && now.duration_since(at) < Duration::from_secs(1) => {
                wall + now.duration_since(at)
            }
            _ => {
                let wall = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .unwrap_or_default();
                self.base = Some((now, wall));
                wall
            }
        };
        let sec = t.as_secs();
        if self.stamp.is_empty() || sec != self.sec {
            self.sec = sec;
            self.stamp.clear();
            civil(&mut self.stamp, sec);
        }
        self.micros = t.subsec_micros();
    }
}

/// `2026-12-03T10:19:17.123456Z  INFO access: ` (the fmt layer's `Full` format).
fn push_plain_head(out: &mut Vec<u8>, stamp: &[u8], micros: u32) {
    out.extend_from_slice(stamp);
    out.push(b'.');
    push_padded(out, u64::from(micros), 6);
    out.extend_from_slice(b"Z  INFO access: ");
}

/// The fields, as the fmt layer prints them (`key=value`, values plainly).
fn fields(out: &mut Vec<u8>, a: &Access<'_>) {
    out.extend_from_slice(b"client=");
    push_ip(out, a.client);
    out.extend_from_slice(b" client_port=");
    push_u64(out, u64::from(a.client_port));
    out.extend_from_slice(b" method=");
    out.extend_from_slice(a.method.as_bytes());
    out.extend_from_slice(b" path=");
    out.extend_from_slice(a.path.as_bytes());
    out.extend_from_slice(b" http=");
    out.extend_from_slice(a.http.as_bytes());
    out.extend_from_slice(b" status=");
    push_u64(out, u64::from(a.status));
    out.extend_from_slice(b" bytes=");
    push_u64(out, a.bytes);
    out.extend_from_slice(b" request_us=");
    push_u64(out, a.request_us);
    out.extend_from_slice(b" agent_us=");
    push_u64(out, a.agent_us);
    out.extend_from_slice(b" duration_us=");
    push_u64(out, a.duration_us);
    out.extend_from_slice(b" term=");
    out.extend_from_slice(a.term.as_bytes());
    if let Some(r) = a.reason {
        out.extend_from_slice(b" reason=");
        let _ = write!(out, "{r}");
    }
    out.extend_from_slice(b" id=");
    out.extend_from_slice(a.id.as_bytes());
}

/// The same line through `tracing` (no sink installed).
fn via_tracing(a: &Access<'_>) {
    let mut line = Vec::with_capacity(256);
    fields(&mut line, a);
    let line = String::from_utf8_lossy(&line);
    tracing::info!(target: "access", "{line}");
}

/// `ip` as text, as `Display` writes it: IPv4 by hand, without the formatting machinery
/// (every request's access line and `X-Forwarded-For`), IPv6 through `Display`.
pub fn push_ip(out: &mut Vec<u8>, ip: IpAddr) {
    match ip {
        IpAddr::V4(v4) => {
            for (i, o) in v4.octets().iter().enumerate() {
                if i > 0 {
                    out.push(b'.');
                }
                push_u64(out, u64::from(*o));
            }
        }
        IpAddr::V6(v6) => {
            let _ = write!(out, "{v6}");
        }
    }
}

fn push_u64(out: &mut Vec<u8>, mut n: u64) {
    let mut tmp = [0u8; 20];
    let mut i = tmp.len();
    loop {
        i -= 1;
        tmp[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&tmp[i..]);
}

fn push_padded(out: &mut Vec<u8>, n: u64, width: usize) {
    let start = out.len();
    push_u64(out, n);
    let len = out.len() - start;
    if len < width {
        let pad = width - len;
        out.splice(start..start, std::iter::repeat_n(b'0', pad));
    }
}

/// `YYYY-MM-DDTHH:MM:SS` (UTC) of `secs` since the epoch (H. Hinnant's civil_from_days).
fn civil(out: &mut Vec<u8>, secs: u64) {
    let days = secs / 86_400;
    let rem = secs % 86_400;
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    push_padded(out, year.max(0) as u64, 4);
    out.push(b'-');
    push_padded(out, month as u64, 2);
    out.push(b'-');
    push_padded(out, day as u64, 2);
    out.push(b'T');
    push_padded(out, rem / 3600, 2);
    out.push(b':');
    push_padded(out, rem % 3600 / 60, 2);
    out.push(b':');
    push_padded(out, rem % 60, 2);
}

/// The `tracing` writer of every other log line: writes the pending access lines first,
/// so lines stay in the order they were logged.
pub struct Ordered<W>(pub W);

impl<'a, W: MakeWriter<'a>> MakeWriter<'a> for Ordered<W> {
    type Writer = W::Writer;

    fn make_writer(&'a self) -> W::Writer {
        flush();
        self.0.make_writer()
    }

    fn make_writer_for(&'a self, meta: &tracing::Metadata<'_>) -> W::Writer {
        flush();
        self.0.make_writer_for(meta)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_as_the_fmt_layer_prints_them() {
        for (secs, want) in [
            (0, "1970-01-01T00:00:00"),
            (951_782_400, "2000-02-29T00:00:00"),
            (1_796_292_757, "2026-12-03T10:12:37"),
            (4_102_444_799, "2099-12-31T23:59:59"),
        ] {
            let mut v = Vec::new();
            civil(&mut v, secs);
            assert_eq!(String::from_utf8(v).expect("utf8"), want);
        }
        let mut v = Vec::new();
        push_padded(&mut v, 42, 6);
        push_u64(&mut v, 0);
        push_u64(&mut v, u64::MAX);
        assert_eq!(v, b"000042018446744073709551615");
    }

    fn sample() -> Access<'static> {
        Access {
            client: "10.250.61.2".parse().expect("ip"),
            client_port: 41236,
            method: "GET",
            path: "/latest/meta-data/?x=1",
            http: "1.1",
            status: 200,
            bytes: 226,
            request_us: 41,
            agent_us: 290,
            duration_us: 347,
            term: "agent",
            reason: None,
            id: "r-1",
        }
    }

    /// `--use-syslog`: one datagram per access line at once, the fmt layer's line after the
    /// tag, as the other lines get.
    #[test]
    fn syslog_gets_each_access_line_as_one_datagram() {
        let path =
            std::env::temp_dir().join(format!("nsmp-access-syslog-{}.sock", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let server = std::os::unix::net::UnixDatagram::bind(&path).expect("bind");
        let log = Syslog::connect(&path, 16, "t-r1").expect("connect");
        let sink = Sink {
            stderr: false,
            journal: false,
            file: None,
            syslog: Some(log),
            writing: Mutex::new(()),
        };
        sink.log(&sample(), Instant::now());
        sink.log(&sample(), Instant::now());
        let mut buf = [0u8; 512];
        let mut got = Vec::new();
        for _ in 0..2 {
            let n = server.recv(&mut buf).expect("recv");
            got.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
        let _ = std::fs::remove_file(&path);
        let head = format!("<134>t-r1[{}]: 20", std::process::id());
        for g in got {
            assert!(g.starts_with(&head), "{g}");
            assert!(
                g.ends_with(
                    "Z  INFO access: client=10.250.61.2 client_port=41236 method=GET \
                     path=/latest/meta-data/?x=1 http=1.1 status=200 bytes=226 request_us=41 \
                     agent_us=290 duration_us=347 term=agent id=r-1"
                ),
                "{g}"
            );
        }
        assert!(
            STATE.with_borrow(|st| st.pending.is_empty()),
            "nothing batched for syslog"
        );
    }

    /// The timestamp follows the request's `Instant` from one clock reading a second.
    #[test]
    fn timestamps_follow_the_instant_between_clock_readings() {
        let mut st = State::default();
        let t0 = Instant::now();
        st.refresh_stamp(t0);
        let (sec0, us0) = (st.sec, st.micros);
        st.refresh_stamp(t0 + Duration::from_millis(250));
        let later = st.sec * 1_000_000 + u64::from(st.micros);
        assert_eq!(later - (sec0 * 1_000_000 + u64::from(us0)), 250_000);
        // More than a second on: the clock is read again.
        st.refresh_stamp(t0 + Duration::from_secs(2));
        assert_eq!(st.base.map(|(at, _)| at), Some(t0 + Duration::from_secs(2)));
        let mut head = Vec::new();
        push_plain_head(&mut head, &st.stamp, st.micros);
        let head = String::from_utf8(head).expect("utf8");
        assert_eq!(head.len(), 27 + "  INFO access: ".len(), "{head}");
        assert!(head.ends_with("Z  INFO access: "), "{head}");
    }

    #[test]
    fn addresses_are_written_as_display_writes_them() {
        for ip in [
            "0.0.0.0",
            "255.255.255.255",
            "10.250.61.2",
            "fe80::a9fe:a9fe",
            "::1",
        ] {
            let ip: IpAddr = ip.parse().expect("ip");
            let mut out = b"x=".to_vec();
            push_ip(&mut out, ip);
            assert_eq!(out, format!("x={ip}").into_bytes());
        }
    }

    #[test]
    fn fields_are_printed_plainly() {
        let reason: &dyn Display = &"agent unavailable: x";
        let mut v = Vec::new();
        fields(
            &mut v,
            &Access {
                client: "10.250.61.2".parse().expect("ip"),
                client_port: 41236,
                method: "GET",
                path: "/latest/meta-data/?x=1",
                http: "1.1",
                status: 503,
                bytes: 226,
                request_us: 41,
                agent_us: 0,
                duration_us: 347,
                term: "agent_unavailable",
                reason: Some(reason),
                id: "r-1",
            },
        );
        assert_eq!(
            String::from_utf8(v).expect("utf8"),
            "client=10.250.61.2 client_port=41236 method=GET path=/latest/meta-data/?x=1 \
             http=1.1 status=503 bytes=226 request_us=41 agent_us=0 duration_us=347 \
             term=agent_unavailable reason=agent unavailable: x id=r-1"
        );
    }
}
