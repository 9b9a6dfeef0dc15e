//! One JSON-RPC 1.0 connection: write a request, read the next message, tell requests,
//! notifications and responses apart, and call-and-wait during the handshake (answering the
//! server's `echo` probes meanwhile and keeping notifications for later).
use std::time::Duration;

use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt, ReadHalf, WriteHalf};

use crate::error::{Error, Result};
use crate::framing::Splitter;
use crate::transport::Stream;

/// A message from the server. Params and results stay raw JSON text until the receiver
/// knows how to read them (updates.rs reads table updates row by row).
#[derive(Debug)]
pub(crate) enum Msg {
    /// A request the server wants answered (`echo`).
    Request {
        id: Value,
        method: String,
        params: Option<Box<RawValue>>,
    },
    /// A notification (`update2`, `update3`, ...).
    Notify {
        method: String,
        params: Option<Box<RawValue>>,
    },
    /// The answer to one of our requests.
    Response {
        id: Value,
        result: Option<Box<RawValue>>,
        error: Value,
    },
}

/// Any JSON-RPC 1.0 message (RFC 7047 §4).
#[derive(Deserialize)]
pub(crate) struct Envelope {
    #[serde(default)]
    id: Value,
    #[serde(default)]
    method: Option<String>,
    #[serde(default)]
    params: Option<Box<RawValue>>,
    #[serde(default)]
    result: Option<Box<RawValue>>,
    #[serde(default)]
    error: Value,
}

impl From<Envelope> for Msg {
    fn from(e: Envelope) -> Msg {
        match e.method {
            Some(method) if e.id.is_null() => Msg::Notify {
                method,
                params: e.params,
            },
            Some(method) => Msg::Request {
                id: e.id,
                method,
                params: e.params,
            },
            None => Msg::Response {
                id: e.id,
                result: e.result,
                error: e.error,
            },
        }
    }
}

/// A raw JSON text read as a value.
pub(crate) fn value(raw: &RawValue) -> Result<Value> {
    serde_json::from_str(raw.get()).map_err(|e| Error::protocol(format!("malformed JSON: {e}")))
}

pub(crate) struct Conn {
    pub(crate) remote: String,
    r: ReadHalf<Stream>,
    w: WriteHalf<Stream>,
    split: Splitter,
    next_id: u64,
    /// How long [`Conn::call`] waits for the next message.
    idle: Duration,
}

impl Conn {
    pub(crate) fn new(remote: String, stream: Stream, max_message: usize, idle: Duration) -> Conn {
        let (r, w) = tokio::io::split(stream);
        Conn {
            remote,
            r,
            w,
            split: Splitter::new(max_message),
            next_id: 1,
            idle,
        }
    }

    fn io(&self, source: std::io::Error) -> Error {
        Error::Io {
            remote: self.remote.clone(),
            source,
        }
    }

    pub(crate) async fn send(&mut self, v: &Value) -> Result<()> {
        let bytes = serde_json::to_vec(v).map_err(|e| Error::protocol(e.to_string()))?;
        let r = self.w.write_all(&bytes).await;
        r.map_err(|e| self.io(e))?;
        let r = self.w.flush().await;
        r.map_err(|e| self.io(e))
    }

    /// Send a request; its id.
    pub(crate) async fn request(&mut self, method: &str, params: Value) -> Result<u64> {
        let id = self.next_id;
        self.next_id += 1;
        self.send(&json!({"id": id, "method": method, "params": params}))
            .await?;
        Ok(id)
    }

    /// Answer the server's `echo` (RFC 7047 §4.1.11: the reply's result is the params).
    pub(crate) async fn answer_echo(
        &mut self,
        id: Value,
        params: Option<Box<RawValue>>,
    ) -> Result<()> {
        self.send(&json!({"id": id, "result": params, "error": null}))
            .await
    }

    /// The next message. Cancel-safe: bytes already read stay in the splitter.
    pub(crate) async fn recv(&mut self) -> Result<Msg> {
        self.recv_idle(None).await
    }

    /// [`Conn::recv`], failing with `TimedOut` ("no answer to `what`") once `idle` passes
    /// without a byte: silence, not the whole message, is bounded, so a large answer that
    /// keeps coming (a full Southbound view on a slow link) is waited for.
    async fn recv_idle(&mut self, idle: Option<(Duration, &str)>) -> Result<Msg> {
        loop {
            if let Some(e) = self.split.next_as::<Envelope>()? {
                return Ok(e.into());
            }
            let buf = self.split.buffer();
            buf.reserve(64 * 1024);
            let n = match idle {
                None => self.r.read_buf(buf).await,
                Some((d, what)) => match tokio::time::timeout(d, self.r.read_buf(buf)).await {
                    Ok(n) => n,
                    Err(_) => {
                        return Err(self.io(std::io::Error::new(
                            std::io::ErrorKind::TimedOut,
                            format!("no answer to {what}"),
                        )))
                    }
                },
            };
            match n {
                Ok(0) => {
                    let what = if self.split.has_partial() {
                        "connection closed inside a message"
                    } else {
                        "connection closed by the server"
                    };
                    return Err(
                        self.io(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, what))
                    );
                }
                Ok(_) => {}
                Err(e) => return Err(self.io(e)),
            }
        }
    }

    /// Send a request and wait for its answer (raw), answering echoes and keeping
    /// notifications in `stash` meanwhile.
    pub(crate) async fn call(
        &mut self,
        method: &str,
        params: Value,
        stash: &mut Vec<Msg>,
    ) -> Result<Box<RawValue>> {
        let id = self.request(method, params).await?;
        loop {
            // A peer that accepted but stays silent (a stopped process) must not hold the
            // client forever; a large answer keeps bytes flowing, so only silence counts.
            let idle = self.idle;
            match self.recv_idle(Some((idle, method))).await? {
                Msg::Response {
                    id: rid,
                    result,
                    error,
                } if rid.as_u64() == Some(id) => {
                    return if error.is_null() {
                        result.ok_or_else(|| Error::protocol(format!("{method}: no result")))
                    } else {
                        Err(Error::Rpc {
                            method: method.to_owned(),
                            error: error
                                .as_str()
                                .map_or_else(|| error.to_string(), str::to_owned),
                        })
                    };
                }
                Msg::Request { id, method, params } if method == "echo" => {
                    self.answer_echo(id, params).await?
                }
                m @ Msg::Notify { .. } => stash.push(m),
                other => {
                    tracing::debug!(remote = %self.remote, ?other, "ovsdb: unexpected message ignored")
                }
            }
        }
    }
}
