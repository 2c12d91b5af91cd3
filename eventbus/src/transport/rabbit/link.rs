//! One supervised connection: connect with backoff, run a setup step, watch
//! for failure, reconnect. lapin's own recovery is off: after a drop we
//! rebuild everything ourselves (topology, qos, consumers) and republish
//! whatever was not confirmed, so a half-recovered channel can never ack a
//! wrong delivery or report an unconfirmed publish as success.

use std::future::Future;
use std::pin::Pin;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures_util::StreamExt;
use lapin::uri::AMQPUri;
use lapin::{Channel, Connection, ConnectionProperties};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::error::Error;
use crate::runtime::BusContext;
use crate::stats::add;

use super::errors::{Failure, is_channel_error, scrub};

/// A live connection and its main channel. `broken` fires when anything on it fails.
pub(crate) struct Session {
    pub(crate) connection: Connection,
    pub(crate) channel: Channel,
    pub(crate) broken: CancellationToken,
    pub(crate) generation: u64,
    /// `Some(reason)` while the broker blocks the connection (resource alarm).
    pub(crate) blocked: watch::Sender<Option<String>>,
}

impl Session {
    /// Marks the session as failed; the supervisor reconnects.
    pub(crate) fn fail(&self, why: &str) {
        if !self.broken.is_cancelled() {
            tracing::warn!(
                generation = self.generation,
                reason = why,
                "AMQP session failed; reconnecting"
            );
            self.broken.cancel();
        }
    }

    /// The broker's reason while it blocks this connection.
    pub(crate) fn blocked_reason(&self) -> Option<String> {
        self.blocked.borrow().clone().or_else(|| {
            self.connection
                .status()
                .blocked()
                .then(|| "no reason given".to_owned())
        })
    }

    /// Runs one broker call on this session for at most `timeout`. A call that
    /// does not finish in time fails with [`Error::Blocked`] while the broker
    /// blocks the connection (it stops reading from it), else with
    /// [`Error::Broker`] naming `operation`.
    pub(crate) async fn bounded<T>(
        &self,
        operation: &str,
        timeout: Duration,
        call: impl Future<Output = Result<T, Error>>,
    ) -> Result<T, Error> {
        match tokio::time::timeout(timeout, call).await {
            Ok(result) => result,
            Err(_) => Err(self.timed_out(operation, timeout)),
        }
    }

    /// The error for `operation` not finishing within `timeout`.
    pub(crate) fn timed_out(&self, operation: &str, timeout: Duration) -> Error {
        match self.blocked_reason() {
            Some(reason) => Error::Blocked {
                operation: operation.to_owned(),
                reason,
                timeout,
            },
            None => Error::Broker {
                context: operation.to_owned(),
                reason: format!("no answer within {timeout:?}"),
            },
        }
    }
}

/// What a link is doing.
#[derive(Clone)]
pub(crate) enum LinkState {
    /// Not connected yet, or reconnecting; the last error, if any.
    Connecting(Option<String>),
    /// Connected and set up.
    Up(Arc<Session>),
    /// Gave up: an error that reconnecting cannot fix (bad credentials, conflicting topology).
    Failed(String),
    /// Closed on purpose.
    Closed,
}

pub(crate) type SetupFuture = Pin<Box<dyn Future<Output = Result<(), Failure>> + Send>>;
pub(crate) type Setup = Arc<dyn Fn(Arc<Session>) -> SetupFuture + Send + Sync>;

/// A supervised connection.
pub(crate) struct Link {
    pub(crate) role: &'static str,
    state: watch::Sender<LinkState>,
    cancel: CancellationToken,
    generation: AtomicU64,
    /// The typed error that made the link give up, for the first caller to see.
    fatal: std::sync::Mutex<Option<Error>>,
}

impl Link {
    /// Starts supervising; returns at once. Use [`Link::wait_up`] for the first connection.
    pub(crate) fn start(role: &'static str, shared: Arc<BusContext>, setup: Setup) -> Arc<Self> {
        let (state, _) = watch::channel(LinkState::Connecting(None));
        let link = Arc::new(Self {
            role,
            state,
            cancel: CancellationToken::new(),
            generation: AtomicU64::new(0),
            fatal: std::sync::Mutex::new(None),
        });
        tokio::spawn(supervise(link.clone(), shared, setup));
        link
    }

    pub(crate) fn state(&self) -> LinkState {
        self.state.borrow().clone()
    }

    /// The live session, waiting up to `timeout` for one.
    pub(crate) async fn wait_up(&self, timeout: Duration) -> Result<Arc<Session>, Error> {
        let mut rx = self.state.subscribe();
        let wait = async {
            loop {
                match &*rx.borrow_and_update() {
                    LinkState::Up(session) if !session.broken.is_cancelled() => {
                        return Ok(session.clone());
                    }
                    LinkState::Failed(reason) => {
                        let fatal = self
                            .fatal
                            .lock()
                            .unwrap_or_else(std::sync::PoisonError::into_inner)
                            .take();
                        return Err(fatal.unwrap_or_else(|| Error::NotConnected(reason.clone())));
                    }
                    LinkState::Closed => {
                        return Err(Error::NotConnected(format!(
                            "the {} connection is closed",
                            self.role
                        )));
                    }
                    _ => {}
                }
                if rx.changed().await.is_err() {
                    return Err(Error::NotConnected(format!(
                        "the {} connection is closed",
                        self.role
                    )));
                }
            }
        };
        match tokio::time::timeout(timeout, wait).await {
            Ok(result) => result,
            Err(_) => {
                let last = match self.state() {
                    LinkState::Connecting(Some(e)) => format!(": {e}"),
                    _ => String::new(),
                };
                Err(Error::NotConnected(format!(
                    "the {} connection did not come up within {timeout:?}{last}",
                    self.role
                )))
            }
        }
    }

    /// Stops supervising and closes the connection.
    pub(crate) async fn close(&self) {
        self.cancel.cancel();
        if let LinkState::Up(session) = self.state() {
            close_quietly(&session.connection, 200, "eventbus shutdown").await;
        }
        self.state.send_replace(LinkState::Closed);
    }
}

/// Closes a connection without waiting forever: a connection whose broker went
/// away may never see the close-ok it waits for.
async fn close_quietly(connection: &Connection, code: u16, reason: &str) {
    let _ = tokio::time::timeout(
        Duration::from_secs(2),
        connection.close(code, reason.into()),
    )
    .await;
}

async fn connect(shared: &BusContext, role: &str) -> Result<Connection, Failure> {
    let config = &shared.config;
    let mut uri = AMQPUri::from_str(config.url.expose())
        .map_err(|_| Failure::fatal(format!("invalid broker URL {}", config.url)))?;
    // `amqp://host/` means the default vhost `/` for eventsource-py (aio-pika) and
    // for RabbitMQ users; lapin would ask for the empty vhost "" and be refused.
    if uri.vhost.is_empty() {
        uri.vhost = "/".to_owned();
    }
    if uri.query.heartbeat.is_none() {
        uri.query.heartbeat = Some(config.heartbeat);
    }
    let props = ConnectionProperties::default()
        .with_connection_name(format!("eventbus {role} ({})", config.exchange_name).into());
    let tls = super::tls::config(config)?;
    if tls.is_some() && !config.verify_ssl {
        return super::tls::connect_unverified(uri, props, config).await;
    }
    let connection = match tls {
        Some(tls) => {
            let runtime = lapin::runtime::default_runtime()
                .map_err(|e| Failure::fatal(format!("no async runtime for lapin: {e}")))?;
            Connection::connect_uri_with_config(uri, props, tls, runtime).await
        }
        None => Connection::connect_uri(uri, props).await,
    };
    connection.map_err(|e| Failure::from_lapin(&e, &config.url))
}

async fn supervise(link: Arc<Link>, shared: Arc<BusContext>, setup: Setup) {
    let config = &shared.config;
    let mut delay = config.reconnect_delay;
    let mut ever_up = false;
    loop {
        if link.cancel.is_cancelled() {
            break;
        }
        let attempt = async {
            let connection = connect(&shared, link.role).await?;
            let channel = connection
                .create_channel()
                .await
                .map_err(|e| Failure::from_lapin(&e, &config.url))?;
            let generation = link.generation.fetch_add(1, Ordering::Relaxed) + 1;
            let session = Arc::new(Session {
                connection,
                channel,
                broken: CancellationToken::new(),
                generation,
                blocked: watch::channel(None).0,
            });
            if let Err(e) = setup(session.clone()).await {
                close_quietly(&session.connection, 200, "setup failed").await;
                return Err(e);
            }
            Ok(session)
        };
        // A broker that accepts the socket but never finishes the handshake (while
        // it boots, say) must not stall reconnection.
        let attempt = async {
            tokio::time::timeout(config.connect_timeout, attempt)
                .await
                .unwrap_or_else(|_| {
                    Err(Failure::Retry(format!(
                        "no answer within {:?}",
                        config.connect_timeout
                    )))
                })
        };
        let session = tokio::select! {
            result = attempt => result,
            () = link.cancel.cancelled() => break,
        };
        // Once the link has worked, a refusal is a broker restarting (its vhosts
        // and users load after the listener opens): keep retrying. At startup it
        // is a mistake to report at once.
        let session = match session {
            Err(Failure::Fatal(error)) if ever_up => Err(Failure::Retry(error.to_string())),
            other => other,
        };
        match session {
            Ok(session) => {
                delay = config.reconnect_delay;
                if ever_up {
                    add(&shared.stats.reconnections, 1);
                    tracing::info!(role = link.role, url = %config.url, "reconnected to RabbitMQ");
                } else {
                    tracing::debug!(role = link.role, url = %config.url, "connected to RabbitMQ");
                }
                ever_up = true;
                shared.stats.connected_at.now();
                // Any connection-level error marks the session broken.
                let mut events = session.connection.events_listener();
                let watcher = session.clone();
                let watcher_role = link.role;
                let closing = link.cancel.clone();
                tokio::spawn(async move {
                    loop {
                        tokio::select! {
                            event = events.next() => match event {
                                // Closing on purpose: channels and the connection
                                // report errors as they go; nothing has failed.
                                Some(lapin::Event::Error(_)) if closing.is_cancelled() => break,
                                Some(lapin::Event::Error(e)) => {
                                    // A channel the broker closed (lapin reports it once
                                    // the channel is closed) is its owner's to reopen; the
                                    // connection and its other channels go on. Losing the
                                    // main channel (declares) still rebuilds the session.
                                    if is_channel_error(&e)
                                        && watcher.connection.status().connected()
                                        && watcher.channel.status().connected()
                                    {
                                        tracing::debug!(role = watcher_role, error = %scrub(&e.to_string()), "channel-level error");
                                        continue;
                                    }
                                    watcher.fail(&scrub(&e.to_string()));
                                    break;
                                }
                                Some(lapin::Event::ConnectionBlocked(reason)) => {
                                    tracing::warn!(role = watcher_role, %reason, "RabbitMQ blocked the connection (resource alarm); publishes fail with Error::Blocked after the confirm timeout until it unblocks");
                                    watcher.blocked.send_replace(Some(reason));
                                }
                                Some(lapin::Event::ConnectionUnblocked) => {
                                    tracing::info!(role = watcher_role, "RabbitMQ unblocked the connection");
                                    watcher.blocked.send_replace(None);
                                }
                                Some(_) => {}
                                None => {
                                    watcher.fail("connection closed");
                                    break;
                                }
                            },
                            () = watcher.broken.cancelled() => break,
                        }
                    }
                });
                link.state.send_replace(LinkState::Up(session.clone()));
                tokio::select! {
                    () = session.broken.cancelled() => {}
                    () = link.cancel.cancelled() => break,
                }
                shared.stats.last_error_at.now();
                link.state
                    .send_replace(LinkState::Connecting(Some("connection lost".into())));
                close_quietly(&session.connection, 320, "reconnecting").await;
            }
            Err(Failure::Fatal(error)) => {
                let reason = error.to_string();
                tracing::error!(role = link.role, url = %config.url, %reason, "cannot use RabbitMQ; giving up");
                shared.stats.last_error_at.now();
                *link
                    .fatal
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(error);
                link.state.send_replace(LinkState::Failed(reason));
                return;
            }
            Err(Failure::Retry(reason)) => {
                shared.stats.last_error_at.now();
                tracing::warn!(
                    role = link.role,
                    url = %config.url,
                    %reason,
                    retry_in = ?delay,
                    "cannot connect to RabbitMQ; retrying"
                );
                link.state.send_replace(LinkState::Connecting(Some(reason)));
                tokio::select! {
                    () = tokio::time::sleep(delay) => {}
                    () = link.cancel.cancelled() => break,
                }
                delay = (delay * 2).min(config.max_reconnect_delay);
            }
        }
    }
    link.state.send_replace(LinkState::Closed);
}
