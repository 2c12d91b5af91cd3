//! Connections: the redis crate's `ConnectionManager` (reconnects by itself),
//! errors turned into ours without the password.

use std::path::Path;
use std::time::Duration;

use redis::AsyncConnectionConfig;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{
    Client, ClientTlsConfig, ConnectionAddr, IntoConnectionInfo, RedisError, TlsCertificates,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::config::{BrokerUrl, Config};
use crate::error::Error;

/// The client for `config.url`: plain for `redis://`; for `rediss://`, TLS
/// with `EVENTBUS_CA_FILE` (else the system roots), the client identity of
/// `EVENTBUS_CERT_FILE` / `EVENTBUS_KEY_FILE`, and verification unless
/// `EVENTBUS_VERIFY_SSL=false`. Never plain when TLS files are configured.
pub(crate) fn client(config: &Config) -> Result<Client, Error> {
    let url = &config.url;
    let invalid = || Error::Connect {
        url: url.redacted(),
        reason: "not a valid Redis URL".to_owned(),
    };
    let info = url.expose().into_connection_info().map_err(|_| invalid())?;
    if !url.is_tls() {
        if config.ca_file.is_some() || config.cert_file.is_some() {
            // Never fall back to plain Redis when certificates were configured.
            return Err(tls_error(
                url,
                "TLS files are configured (EVENTBUS_CA_FILE / EVENTBUS_CERT_FILE) but the URL is `redis://`; use `rediss://`".to_owned(),
            ));
        }
        return Client::open(info).map_err(|_| invalid());
    }
    let ConnectionAddr::TcpTls {
        host,
        port,
        insecure,
        tls_params,
    } = info.addr().clone()
    else {
        return Err(invalid());
    };
    // `#insecure` is the redis crate's own spelling of `EVENTBUS_VERIFY_SSL=false`.
    let insecure = insecure || !config.verify_ssl;
    if insecure {
        tracing::warn!(
            url = %url,
            "EVENTBUS_VERIFY_SSL=false: the Redis server's certificate is NOT verified; anyone on the path can read and change traffic"
        );
    }
    let info = info.set_addr(ConnectionAddr::TcpTls {
        host,
        port,
        insecure,
        tls_params,
    });
    let root_cert = match &config.ca_file {
        Some(path) => {
            let pem = read(url, path, "EVENTBUS_CA_FILE")?;
            let certs = CertificateDer::pem_slice_iter(&pem)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| {
                    tls_error(url, format!("EVENTBUS_CA_FILE `{}`: {e}", path.display()))
                })?;
            if certs.is_empty() {
                return Err(tls_error(
                    url,
                    format!(
                        "EVENTBUS_CA_FILE `{}` holds no PEM certificate",
                        path.display()
                    ),
                ));
            }
            Some(pem)
        }
        None => None,
    };
    let client_tls = match (&config.cert_file, &config.key_file) {
        (Some(cert), Some(key)) => {
            let client_cert = read(url, cert, "EVENTBUS_CERT_FILE")?;
            let chain = CertificateDer::pem_slice_iter(&client_cert)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| {
                    tls_error(url, format!("EVENTBUS_CERT_FILE `{}`: {e}", cert.display()))
                })?;
            if chain.is_empty() {
                return Err(tls_error(
                    url,
                    format!(
                        "EVENTBUS_CERT_FILE `{}` holds no PEM certificate",
                        cert.display()
                    ),
                ));
            }
            let client_key = read(url, key, "EVENTBUS_KEY_FILE")?;
            // Never echo key material: only the path and what went wrong.
            PrivateKeyDer::from_pem_slice(&client_key).map_err(|e| {
                tls_error(url, format!("EVENTBUS_KEY_FILE `{}`: {e}", key.display()))
            })?;
            Some(ClientTlsConfig {
                client_cert,
                client_key,
            })
        }
        _ => None,
    };
    Client::build_with_tls(
        info,
        TlsCertificates {
            client_tls,
            root_cert,
        },
    )
    .map_err(|e| tls_error(url, format!("TLS setup: {}", scrub(url, &e))))
}

fn tls_error(url: &BrokerUrl, reason: String) -> Error {
    Error::Connect {
        url: url.redacted(),
        reason,
    }
}

fn read(url: &BrokerUrl, path: &Path, variable: &str) -> Result<Vec<u8>, Error> {
    std::fs::read(path).map_err(|e| {
        tls_error(
            url,
            format!("cannot read {variable} `{}`: {e}", path.display()),
        )
    })
}

/// Did the TLS handshake fail (a certificate not trusted, not sent, not
/// valid for the host; a server that does not speak TLS)? Retrying cannot
/// help, and the connection must never go on in plain text.
pub(crate) fn is_tls_failure(error: &RedisError) -> bool {
    // The redis crate keeps the I/O error behind an `Arc<dyn Error>`; rustls's
    // error is that I/O error's payload (which `source()` skips).
    fn is_rustls(e: &(dyn std::error::Error + 'static)) -> bool {
        if e.downcast_ref::<rustls::Error>().is_some() {
            return true;
        }
        if let Some(shared) =
            e.downcast_ref::<std::sync::Arc<dyn std::error::Error + Send + Sync>>()
        {
            let inner: &(dyn std::error::Error + 'static) = shared.as_ref();
            return is_rustls(inner);
        }
        e.downcast_ref::<std::io::Error>()
            .and_then(std::io::Error::get_ref)
            .is_some_and(|inner| inner.downcast_ref::<rustls::Error>().is_some())
    }
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(e) = source {
        if is_rustls(e) {
            return true;
        }
        source = e.source();
    }
    false
}

/// The password of `url`, to scrub from error texts.
fn password(url: &BrokerUrl) -> Option<String> {
    let (_, rest) = url.expose().split_once("://")?;
    let authority = &rest[..rest.find(['/', '?']).unwrap_or(rest.len())];
    let (userinfo, _) = authority.rsplit_once('@')?;
    let (_, pass) = userinfo.split_once(':')?;
    (!pass.is_empty()).then(|| pass.to_owned())
}

/// The error's text with the password (if any) replaced by `***`.
pub(crate) fn scrub(url: &BrokerUrl, error: &RedisError) -> String {
    let text = error.to_string();
    match password(url) {
        Some(p) => text.replace(&p, "***"),
        None => text,
    }
}

/// A broker error while doing `context`.
pub(crate) fn broker(url: &BrokerUrl, context: impl Into<String>, error: &RedisError) -> Error {
    Error::Broker {
        context: context.into(),
        reason: scrub(url, error),
    }
}

/// Is this the connection failing (worth retrying), not a command error?
pub(crate) fn is_connection_error(error: &RedisError) -> bool {
    error.is_io_error()
        || error.is_connection_dropped()
        || error.is_connection_refusal()
        || error.is_timeout()
}

/// Is this Redis saying the consumer group (or its stream) does not exist?
pub(crate) fn is_nogroup(error: &RedisError) -> bool {
    error.code() == Some("NOGROUP")
}

/// A managed connection whose commands time out after `response_timeout`,
/// retrying the first connect with backoff for `connect_timeout`.
pub(crate) async fn connect(
    client: &Client,
    config: &Config,
    response_timeout: Duration,
) -> Result<ConnectionManager, Error> {
    let manager_config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(config.socket_connect_timeout))
        .set_response_timeout(Some(response_timeout))
        .set_min_delay(config.reconnect_delay.max(Duration::from_millis(1)))
        .set_max_delay(config.max_reconnect_delay)
        .set_number_of_retries(2);
    let deadline = crate::runtime::deadline(config.connect_timeout);
    let mut delay = config.reconnect_delay;
    loop {
        // One attempt: connect and handshake, never past the startup deadline.
        let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
        let limit = (config.socket_connect_timeout + config.socket_timeout)
            .min(remaining.max(Duration::from_millis(100)));
        let attempt = tokio::time::timeout(limit, async {
            if config.url.is_tls() {
                // One connection without the manager's own retries first, so
                // that a handshake rustls rejects is reported now.
                let probe = AsyncConnectionConfig::new()
                    .set_connection_timeout(Some(config.socket_connect_timeout))
                    .set_response_timeout(Some(response_timeout));
                let mut conn = client
                    .get_multiplexed_async_connection_with_config(&probe)
                    .await?;
                redis::cmd("PING")
                    .query_async::<redis::Value>(&mut conn)
                    .await?;
            }
            ConnectionManager::new_with_config(client.clone(), manager_config.clone()).await
        })
        .await;
        let reason = match attempt {
            Ok(Ok(manager)) => return Ok(manager),
            Ok(Err(e)) if config.url.is_tls() && is_tls_failure(&e) => {
                return Err(tls_error(
                    &config.url,
                    format!("TLS handshake failed: {}", scrub(&config.url, &e)),
                ));
            }
            Ok(Err(e)) => scrub(&config.url, &e),
            Err(_) => format!("no answer within {limit:?}"),
        };
        let now = tokio::time::Instant::now();
        if now + delay > deadline {
            return Err(Error::Connect {
                url: config.url.redacted(),
                reason: format!("{reason} (retried for {:?})", config.connect_timeout),
            });
        }
        tracing::warn!(url = %config.url, %reason, retry_in_ms = delay.as_millis() as u64, "cannot connect to Redis; retrying");
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(config.max_reconnect_delay);
    }
}

/// `XGROUP CREATE {stream} {group} 0 MKSTREAM`, an existing group left alone
/// (eventsource-py's: a new group reads the stream's whole history).
pub(crate) async fn create_group(
    conn: &mut ConnectionManager,
    url: &BrokerUrl,
    stream: &str,
    group: &str,
) -> Result<(), Error> {
    let created: Result<(), RedisError> = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(stream)
        .arg(group)
        .arg("0")
        .arg("MKSTREAM")
        .query_async(conn)
        .await;
    match created {
        Ok(()) => Ok(()),
        Err(e) if e.code() == Some("BUSYGROUP") => Ok(()),
        Err(e) => Err(broker(
            url,
            format!("creating consumer group `{group}` on `{stream}`"),
            &e,
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_password_to_scrub() {
        let url = BrokerUrl::parse("redis://bob:s3cret@host:6379/0").expect("valid");
        assert_eq!(password(&url).as_deref(), Some("s3cret"));
        let url = BrokerUrl::parse("redis://:s3cret@host:6379").expect("valid");
        assert_eq!(password(&url).as_deref(), Some("s3cret"));
        let url = BrokerUrl::parse("redis://host:6379/0").expect("valid");
        assert_eq!(password(&url), None);
    }
}
