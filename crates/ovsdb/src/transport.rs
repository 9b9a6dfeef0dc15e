//! Opening a byte stream to a [`Remote`]: a Unix socket, TCP, or TLS over TCP.
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::ServerName;
use rustls::ClientConfig;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpStream, UnixStream};

use crate::error::{Error, Result};
use crate::remote::Remote;

/// Any connected stream.
pub(crate) trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

pub(crate) type Stream = Box<dyn Io>;

/// Connect to `remote` within `timeout`.
pub(crate) async fn connect(
    remote: &Remote,
    tls: Option<&Arc<ClientConfig>>,
    timeout: Duration,
) -> Result<Stream> {
    let io = |source: std::io::Error| Error::Io {
        remote: remote.to_string(),
        source,
    };
    let fut = async {
        Ok::<Stream, Error>(match remote {
            Remote::Unix(path) => Box::new(UnixStream::connect(path).await.map_err(io)?),
            Remote::Tcp { host, port } => {
                let s = TcpStream::connect((host.as_str(), *port))
                    .await
                    .map_err(io)?;
                let _ = s.set_nodelay(true);
                Box::new(s)
            }
            Remote::Ssl { host, port } => {
                let config = tls.ok_or_else(|| {
                    Error::Config(format!(
                        "{remote}: no TLS key, certificate and CA configured"
                    ))
                })?;
                let s = TcpStream::connect((host.as_str(), *port))
                    .await
                    .map_err(io)?;
                let _ = s.set_nodelay(true);
                // The name is only sent as SNI (for a DNS name); it is not verified (tls.rs).
                let name = ServerName::try_from(host.clone()).map_err(|e| Error::Remote {
                    remote: remote.to_string(),
                    reason: e.to_string(),
                })?;
                let c = tokio_rustls::TlsConnector::from(config.clone());
                Box::new(c.connect(name, s).await.map_err(io)?)
            }
        })
    };
    tokio::time::timeout(timeout, fut).await.map_err(|_| {
        io(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "connect timed out",
        ))
    })?
}
