//! TLS settings for `amqps://`: a CA to trust, a client identity for mutual TLS.

use std::sync::Arc;

use lapin::tcp::{AsyncTcpStream, OwnedIdentity, OwnedTLSConfig, RustlsConnector};
use lapin::uri::AMQPUri;
use lapin::{Connection, ConnectionProperties};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::config::Config;
use crate::error::Error;

use super::errors::Failure;

fn read(path: &std::path::Path, variable: &str) -> Result<Vec<u8>, Failure> {
    std::fs::read(path).map_err(|e| {
        Failure::Fatal(Error::Connect {
            url: String::new(),
            reason: format!("cannot read {variable} `{}`: {e}", path.display()),
        })
    })
}

/// `None` for plain `amqp://` with no TLS settings.
pub(crate) fn config(config: &Config) -> Result<Option<OwnedTLSConfig>, Failure> {
    let has_files = config.ca_file.is_some() || config.cert_file.is_some();
    if !config.url.is_tls() {
        if has_files {
            // Never fall back to plain AMQP when certificates were configured.
            return Err(Failure::Fatal(Error::Connect {
                url: config.url.redacted(),
                reason: "TLS files are configured (EVENTBUS_CA_FILE / EVENTBUS_CERT_FILE) but the URL is `amqp://`; use `amqps://`".into(),
            }));
        }
        return Ok(None);
    }
    let cert_chain = match &config.ca_file {
        Some(path) => Some(
            String::from_utf8(read(path, "EVENTBUS_CA_FILE")?).map_err(|_| {
                Failure::Fatal(Error::Connect {
                    url: config.url.redacted(),
                    reason: format!("EVENTBUS_CA_FILE `{}` is not a PEM file", path.display()),
                })
            })?,
        ),
        None => None,
    };
    let identity = match (&config.cert_file, &config.key_file) {
        (Some(cert), Some(key)) => Some(OwnedIdentity::PKCS8 {
            pem: read(cert, "EVENTBUS_CERT_FILE")?,
            key: read(key, "EVENTBUS_KEY_FILE")?,
        }),
        _ => None,
    };
    Ok(Some(OwnedTLSConfig {
        identity,
        cert_chain,
    }))
}

/// Accepts any server certificate: `EVENTBUS_VERIFY_SSL=false`, for test brokers only.
#[derive(Debug)]
struct NoVerification(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for NoVerification {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
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
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

fn tls_failure(config: &Config, reason: String) -> Failure {
    Failure::Fatal(Error::Connect {
        url: config.url.redacted(),
        reason,
    })
}

/// A rustls client configuration that skips server verification.
pub(crate) fn insecure_client_config(
    config: &Config,
) -> Result<Arc<rustls::ClientConfig>, Failure> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| tls_failure(config, format!("TLS setup: {e}")))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(NoVerification(provider)));
    let client = match (&config.cert_file, &config.key_file) {
        (Some(cert), Some(key)) => {
            let certs = CertificateDer::pem_file_iter(cert)
                .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
                .map_err(|e| {
                    tls_failure(
                        config,
                        format!("cannot read EVENTBUS_CERT_FILE `{}`: {e}", cert.display()),
                    )
                })?;
            // Never echo key material: only the path and what went wrong.
            let key = PrivateKeyDer::from_pem_file(key).map_err(|e| {
                tls_failure(
                    config,
                    format!("cannot read EVENTBUS_KEY_FILE `{}`: {e}", key.display()),
                )
            })?;
            builder
                .with_client_auth_cert(certs, key)
                .map_err(|e| tls_failure(config, format!("client certificate rejected: {e}")))?
        }
        _ => builder.with_no_client_auth(),
    };
    Ok(Arc::new(client))
}

/// Connects over TLS without verifying the server (logged as a warning).
pub(crate) async fn connect_unverified(
    uri: AMQPUri,
    props: ConnectionProperties,
    config: &Config,
) -> Result<Connection, Failure> {
    tracing::warn!(
        url = %config.url,
        "EVENTBUS_VERIFY_SSL=false: the broker's certificate is NOT verified; anyone on the path can read and change traffic"
    );
    let client = insecure_client_config(config)?;
    let runtime = lapin::runtime::default_runtime()
        .map_err(|e| Failure::fatal(format!("no async runtime for lapin: {e}")))?;
    let connect = async move |uri: AMQPUri, runtime| {
        let host = uri.authority.host.clone();
        let addrs: Vec<std::net::SocketAddr> =
            tokio::net::lookup_host((host.as_str(), uri.authority.port))
                .await?
                .collect();
        let stream = AsyncTcpStream::connect(&runtime, addrs).await?;
        let AsyncTcpStream::Plain(plain) = stream else {
            return Err(std::io::Error::other("expected a plain TCP stream").into());
        };
        let tls = RustlsConnector::from(client.clone())
            .connect_async(&host, plain)
            .await?;
        Ok(AsyncTcpStream::Rustls(tls))
    };
    Connection::connector(uri, runtime, connect, props)
        .await
        .map_err(|e| Failure::from_lapin(&e, &config.url))
}
