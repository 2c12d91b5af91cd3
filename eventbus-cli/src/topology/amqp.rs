//! The broker over AMQP: passive declares (does it exist, how deep is it) and deletes.
//!
//! A failed declare or delete closes its channel: the next call opens another.

use std::str::FromStr;

use eventbus::Config;
use lapin::options::{
    ExchangeDeclareOptions, ExchangeDeleteOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::protocol::{AMQPErrorKind, AMQPSoftError};
use lapin::tcp::{OwnedIdentity, OwnedTLSConfig};
use lapin::types::FieldTable;
use lapin::uri::AMQPUri;
use lapin::{Channel, Connection, ConnectionProperties, ExchangeKind};

use crate::Failure;

/// Ready messages and consumers of a queue, as the broker counts them now.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Depth {
    pub(crate) messages: u32,
    pub(crate) consumers: u32,
}

/// Why a delete did not happen.
pub(crate) enum Refused {
    /// It was not there (any more).
    Gone,
    /// `if-empty` / `if-unused` held: the broker's words.
    InUse(String),
}

pub(crate) struct Broker {
    connection: Connection,
    channel: Option<Channel>,
}

/// The broker URL's parts the management API needs too.
pub(crate) struct Parts {
    pub(crate) host: String,
    pub(crate) user: String,
    pub(crate) password: String,
    pub(crate) vhost: String,
}

fn uri(config: &Config) -> Result<AMQPUri, Failure> {
    let mut uri = AMQPUri::from_str(config.url.expose())
        .map_err(|_| Failure::Error(format!("invalid broker URL {}", config.url)))?;
    // `amqp://host/` means the vhost `/`, as for the bus itself.
    if uri.vhost.is_empty() {
        uri.vhost = "/".to_owned();
    }
    Ok(uri)
}

/// Host, credentials and vhost of the broker URL.
pub(crate) fn parts(config: &Config) -> Result<Parts, Failure> {
    let uri = uri(config)?;
    Ok(Parts {
        host: uri.authority.host,
        user: uri.authority.userinfo.username,
        password: uri.authority.userinfo.password,
        vhost: uri.vhost,
    })
}

impl Broker {
    pub(crate) async fn connect(config: &Config) -> Result<Self, Failure> {
        let uri = uri(config)?;
        let props = ConnectionProperties::default()
            .with_connection_name(format!("eventbus topology ({})", config.exchange_name).into());
        let tls = tls(config)?;
        let connect = async {
            match tls {
                Some(tls) => {
                    let runtime = lapin::runtime::default_runtime().map_err(|e| e.to_string())?;
                    Connection::connect_uri_with_config(uri, props, tls, runtime).await
                }
                None => Connection::connect_uri(uri, props).await,
            }
            .map_err(|e| e.to_string())
        };
        let connection = tokio::time::timeout(config.connect_timeout, connect)
            .await
            .map_err(|_| format!("no answer within {:?}", config.connect_timeout))
            .and_then(|r| r)
            .map_err(|e| {
                Failure::Error(format!(
                    "cannot connect to {}: {}",
                    config.url,
                    super::scrub(&e)
                ))
            })?;
        Ok(Self {
            connection,
            channel: None,
        })
    }

    async fn channel(&mut self) -> Result<Channel, Failure> {
        if let Some(channel) = &self.channel
            && channel.status().connected()
        {
            return Ok(channel.clone());
        }
        let channel = self
            .connection
            .create_channel()
            .await
            .map_err(|e| Failure::Error(format!("cannot open a channel: {e}")))?;
        self.channel = Some(channel.clone());
        Ok(channel)
    }

    /// The queue's depth, `None` if it does not exist.
    pub(crate) async fn queue(&mut self, name: &str) -> Result<Option<Depth>, Failure> {
        let channel = self.channel().await?;
        let options = QueueDeclareOptions {
            passive: true,
            ..QueueDeclareOptions::default()
        };
        match channel
            .queue_declare(name.into(), options, FieldTable::default())
            .await
        {
            Ok(q) => Ok(Some(Depth {
                messages: q.message_count(),
                consumers: q.consumer_count(),
            })),
            Err(e) if soft(&e) == Some(AMQPSoftError::NOTFOUND) => Ok(None),
            Err(e) => Err(Failure::Error(format!("cannot look at queue {name}: {e}"))),
        }
    }

    /// Does the exchange exist?
    pub(crate) async fn exchange_exists(&mut self, name: &str) -> Result<bool, Failure> {
        let channel = self.channel().await?;
        let options = ExchangeDeclareOptions {
            passive: true,
            ..ExchangeDeclareOptions::default()
        };
        // A passive declare checks the name only; the kind is not compared.
        match channel
            .exchange_declare(
                name.into(),
                ExchangeKind::Direct,
                options,
                FieldTable::default(),
            )
            .await
        {
            Ok(()) => Ok(true),
            Err(e) if soft(&e) == Some(AMQPSoftError::NOTFOUND) => Ok(false),
            Err(e) => Err(Failure::Error(format!(
                "cannot look at exchange {name}: {e}"
            ))),
        }
    }

    /// Deletes the queue; unless `force`, only if it is empty and unused.
    /// The number of messages deleted with it.
    pub(crate) async fn delete_queue(
        &mut self,
        name: &str,
        force: bool,
    ) -> Result<Result<u32, Refused>, Failure> {
        let channel = self.channel().await?;
        let options = QueueDeleteOptions {
            if_empty: !force,
            if_unused: !force,
            ..QueueDeleteOptions::default()
        };
        match channel.queue_delete(name.into(), options).await {
            Ok(count) => Ok(Ok(count)),
            Err(e) => refused(&e)
                .map(Err)
                .ok_or_else(|| Failure::Error(format!("cannot delete queue {name}: {e}"))),
        }
    }

    pub(crate) async fn delete_exchange(
        &mut self,
        name: &str,
    ) -> Result<Result<(), Refused>, Failure> {
        let channel = self.channel().await?;
        match channel
            .exchange_delete(name.into(), ExchangeDeleteOptions::default())
            .await
        {
            Ok(()) => Ok(Ok(())),
            Err(e) => refused(&e)
                .map(Err)
                .ok_or_else(|| Failure::Error(format!("cannot delete exchange {name}: {e}"))),
        }
    }

    /// Removes the binding of `queue` to `exchange` with `routing_key` and `arguments`.
    pub(crate) async fn unbind(
        &mut self,
        queue: &str,
        exchange: &str,
        routing_key: &str,
        arguments: FieldTable,
    ) -> Result<(), Failure> {
        let channel = self.channel().await?;
        channel
            .queue_unbind(queue.into(), exchange.into(), routing_key.into(), arguments)
            .await
            .map_err(|e| {
                Failure::Error(format!(
                    "cannot unbind queue {queue} from {exchange} ({routing_key:?}): {e}"
                ))
            })
    }

    pub(crate) async fn close(self) {
        let _ = tokio::time::timeout(
            std::time::Duration::from_secs(5),
            self.connection.close(200, "eventbus topology done".into()),
        )
        .await;
    }
}

fn soft(error: &lapin::Error) -> Option<AMQPSoftError> {
    match error.kind() {
        lapin::ErrorKind::ProtocolError(e) => match e.kind() {
            AMQPErrorKind::Soft(soft) => Some(soft.clone()),
            AMQPErrorKind::Hard(_) => None,
        },
        _ => None,
    }
}

fn refused(error: &lapin::Error) -> Option<Refused> {
    match (soft(error), error.kind()) {
        (Some(AMQPSoftError::NOTFOUND), _) => Some(Refused::Gone),
        (Some(AMQPSoftError::PRECONDITIONFAILED), lapin::ErrorKind::ProtocolError(e)) => {
            Some(Refused::InUse(e.get_message().as_str().to_owned()))
        }
        _ => None,
    }
}

/// TLS settings for `amqps://`, as the bus reads them.
fn tls(config: &Config) -> Result<Option<OwnedTLSConfig>, Failure> {
    if !config.url.is_tls() {
        if config.ca_file.is_some() || config.cert_file.is_some() {
            return Err(Failure::Error(
                "TLS files are configured (EVENTBUS_CA_FILE / EVENTBUS_CERT_FILE) but the URL is `amqp://`; use `amqps://`".into(),
            ));
        }
        return Ok(None);
    }
    if !config.verify_ssl {
        return Err(Failure::Error(
            "`eventbus topology` does not support EVENTBUS_VERIFY_SSL=false; trust the broker's CA with EVENTBUS_CA_FILE".into(),
        ));
    }
    let read = |path: &std::path::Path, variable: &str| {
        std::fs::read(path).map_err(|e| {
            Failure::Error(format!("cannot read {variable} `{}`: {e}", path.display()))
        })
    };
    let cert_chain = match &config.ca_file {
        Some(path) => Some(
            String::from_utf8(read(path, "EVENTBUS_CA_FILE")?).map_err(|_| {
                Failure::Error(format!(
                    "EVENTBUS_CA_FILE `{}` is not a PEM file",
                    path.display()
                ))
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
