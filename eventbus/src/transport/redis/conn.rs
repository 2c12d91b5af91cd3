//! Connections: the redis crate's `ConnectionManager` (reconnects by itself),
//! errors turned into ours without the password.

use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Client, RedisError};

use crate::config::{BrokerUrl, Config};
use crate::error::Error;

/// The client for `config.url`.
pub(crate) fn client(url: &BrokerUrl) -> Result<Client, Error> {
    Client::open(url.expose()).map_err(|_| Error::Connect {
        url: url.redacted(),
        reason: "not a valid Redis URL".to_owned(),
    })
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
    let deadline = tokio::time::Instant::now() + config.connect_timeout;
    let mut delay = config.reconnect_delay;
    loop {
        // One attempt: connect and handshake, never past the startup deadline.
        let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
        let limit = (config.socket_connect_timeout + config.socket_timeout)
            .min(remaining.max(Duration::from_millis(100)));
        let attempt = tokio::time::timeout(
            limit,
            ConnectionManager::new_with_config(client.clone(), manager_config.clone()),
        )
        .await;
        let reason = match attempt {
            Ok(Ok(manager)) => return Ok(manager),
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
