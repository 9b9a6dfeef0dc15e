//! TLS towards Nova (rustls on ring): trust `auth_ca_cert` or the system bundle, or nothing
//! at all with `nova_metadata_insecure` (as Neutron's `verify=False`), and present
//! `nova_client_cert`/`nova_client_priv_key` when both are set (Neutron ignores one alone).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};

use crate::config::Config;

/// A TLS option that cannot be used, naming the option and file.
#[derive(Debug, thiserror::Error)]
#[error("{key}: {}: {reason}", path.display())]
pub struct TlsError {
    pub key: &'static str,
    pub path: PathBuf,
    pub reason: String,
}

/// Where Debian, Fedora/RHEL and Alpine keep the system CA bundle.
const SYSTEM_BUNDLES: &[&str] = &[
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/cert.pem",
];

fn load_certs(key: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let err = |reason: String| TlsError {
        key,
        path: path.to_owned(),
        reason,
    };
    let certs: Vec<_> = CertificateDer::pem_file_iter(path)
        .map_err(|e| err(e.to_string()))?
        .collect::<Result<_, _>>()
        .map_err(|e| err(e.to_string()))?;
    if certs.is_empty() {
        return Err(err("no PEM certificate in file".into()));
    }
    Ok(certs)
}

fn roots(cfg: &Config) -> Result<RootCertStore, TlsError> {
    let mut store = RootCertStore::empty();
    let (key, path) = match &cfg.auth_ca_cert {
        Some(p) => ("auth_ca_cert", p.clone()),
        None => {
            let env = std::env::var_os("SSL_CERT_FILE").map(PathBuf::from);
            let found = env
                .into_iter()
                .chain(SYSTEM_BUNDLES.iter().map(PathBuf::from))
                .find(|p| p.is_file());
            match found {
                Some(p) => ("system CA bundle", p),
                None => {
                    tracing::warn!("no system CA bundle found; set auth_ca_cert to verify Nova");
                    return Ok(store);
                }
            }
        }
    };
    for cert in load_certs(key, &path)? {
        // A bundle may hold certificates rustls cannot use; skip those, as OpenSSL does.
        if let Err(e) = store.add(cert) {
            tracing::debug!(path = %path.display(), err = %e, "skipping CA certificate");
        }
    }
    if store.is_empty() {
        return Err(TlsError {
            key,
            path,
            reason: "no usable CA certificate".into(),
        });
    }
    Ok(store)
}

/// Build the rustls client configuration from the Nova options.
pub fn client_config(cfg: &Config) -> Result<ClientConfig, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError {
            key: "tls",
            path: PathBuf::new(),
            reason: e.to_string(),
        })?;
    let builder = if cfg.nova_metadata_insecure {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoVerify(provider)))
    } else {
        builder.with_root_certificates(roots(cfg)?)
    };
    match (&cfg.nova_client_cert, &cfg.nova_client_priv_key) {
        (Some(cert), Some(key)) => {
            let chain = load_certs("nova_client_cert", cert)?;
            let pk = PrivateKeyDer::from_pem_file(key).map_err(|e| TlsError {
                key: "nova_client_priv_key",
                path: key.clone(),
                reason: e.to_string(),
            })?;
            builder
                .with_client_auth_cert(chain, pk)
                .map_err(|e| TlsError {
                    key: "nova_client_priv_key",
                    path: key.clone(),
                    reason: e.to_string(),
                })
        }
        // One without the other: Neutron sends none; config.rs warned at start-up.
        _ => Ok(builder.with_no_client_auth()),
    }
}

/// `nova_metadata_insecure`: accept any server certificate (signatures are still checked,
/// so the handshake itself stays sound).
#[derive(Debug)]
struct NoVerify(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for NoVerify {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
