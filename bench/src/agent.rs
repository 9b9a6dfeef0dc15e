//! `ns-bench-agent`: a fixed, fast metadata-agent stand-in on a Unix socket.
//!
//! It answers every request with the same small 200 body so that the benchmark measures the
//! proxies, not the agent. `--mode close` behaves like Neutron's agent (one request per
//! connection, `Connection: close`, then close); `--mode keepalive` keeps the connection and
//! advertises reuse with `X-NS-Metadata-Keepalive: 30` (issue 8). One current-thread runtime,
//! so it uses at most one core; `ns-bench agent-load` shows its ceiling.
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, ValueEnum};
use ns_bench::{parse_head, KEEPALIVE_HEADER};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{UnixListener, UnixStream};

/// A body about the size of a typical metadata leaf answer.
const BODY: &str = "ami-id\nhostname\ninstance-id\nlocal-ipv4\npublic-keys/\nuser-data\n";
/// Largest head accepted (Neutron's agent reads one 4096-byte recv; be a bit kinder).
const MAX_HEAD: usize = 16 * 1024;
/// Idle keep-alive time, the value advertised in the header.
const IDLE: Duration = Duration::from_secs(30);

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Mode {
    /// One request per connection, like neutron-metadata-agent.
    Close,
    /// HTTP/1.1 keep-alive with the reuse header.
    Keepalive,
}

#[derive(Parser, Debug)]
#[command(about = "Fixed 200-answering agent stand-in for the benchmark")]
struct Args {
    /// Unix socket path to listen on (a stale file is replaced).
    #[arg(long)]
    socket: PathBuf,
    /// Connection behaviour.
    #[arg(long, value_enum, default_value = "close")]
    mode: Mode,
}

fn response(close: bool) -> Vec<u8> {
    let conn = if close {
        "Connection: close\r\n".to_owned()
    } else {
        format!("{KEEPALIVE_HEADER}: {}\r\n", IDLE.as_secs())
    };
    format!(
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain; charset=UTF-8\r\nContent-Length: {}\r\n{conn}\r\n{BODY}",
        BODY.len()
    )
    .into_bytes()
}

/// Read more bytes into `buf`; `Ok(false)` on EOF or idle timeout.
async fn fill(stream: &mut UnixStream, buf: &mut Vec<u8>) -> std::io::Result<bool> {
    match tokio::time::timeout(IDLE, stream.read_buf(buf)).await {
        Ok(Ok(0)) | Err(_) => Ok(false),
        Ok(Ok(_)) => Ok(true),
        Ok(Err(e)) => Err(e),
    }
}

async fn serve(mut stream: UnixStream, keepalive: bool, ok_close: &[u8], ok_keep: &[u8]) {
    let mut buf = Vec::with_capacity(4096);
    loop {
        let head = loop {
            match parse_head(&buf) {
                Ok(Some(h)) => break h,
                Ok(None) if buf.len() > MAX_HEAD => {
                    let _ = stream
                        .write_all(b"HTTP/1.1 431 Request Header Fields Too Large\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                        .await;
                    return;
                }
                Ok(None) => match fill(&mut stream, &mut buf).await {
                    Ok(true) => {}
                    Ok(false) | Err(_) => return,
                },
                Err(_) => {
                    let _ = stream
                        .write_all(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                        .await;
                    return;
                }
            }
        };
        let total = head.len + head.content_length;
        while buf.len() < total {
            match fill(&mut stream, &mut buf).await {
                Ok(true) => {}
                Ok(false) | Err(_) => return,
            }
        }
        buf.drain(..total);
        let close = !keepalive || head.close;
        let answer = if close { ok_close } else { ok_keep };
        if stream.write_all(answer).await.is_err() || close {
            let _ = stream.shutdown().await;
            return;
        }
    }
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("build runtime")?;
    runtime.block_on(async move {
        match std::fs::remove_file(&args.socket) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).context("remove stale socket"),
        }
        let listener = UnixListener::bind(&args.socket)
            .with_context(|| format!("bind {}", args.socket.display()))?;
        let keepalive = args.mode == Mode::Keepalive;
        // Leaked once: every connection task borrows the same two answers.
        let ok_close: &'static [u8] = response(true).leak();
        let ok_keep: &'static [u8] = response(false).leak();
        eprintln!(
            "ns-bench-agent: listening on {} ({:?})",
            args.socket.display(),
            args.mode
        );
        loop {
            let (stream, _) = match listener.accept().await {
                Ok(c) => c,
                Err(e) => {
                    // EMFILE and friends: back off briefly instead of spinning.
                    eprintln!("ns-bench-agent: accept: {e}");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            };
            tokio::spawn(serve(stream, keepalive, ok_close, ok_keep));
        }
    })
}
