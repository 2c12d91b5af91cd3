//! TLS settings for `amqps://`: a CA to trust, a client identity for mutual TLS.

use lapin::tcp::{OwnedIdentity, OwnedTLSConfig};

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
    if !config.verify_ssl {
        return Err(Failure::Fatal(Error::Connect {
            url: config.url.redacted(),
            reason: "EVENTBUS_VERIFY_SSL=false is not supported by this version; trust the broker's CA with EVENTBUS_CA_FILE instead".into(),
        }));
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
