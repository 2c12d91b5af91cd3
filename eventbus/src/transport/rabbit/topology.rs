//! Declaring the topology derived from what the application registered.
//!
//! Names follow eventsource-py: exchange `{exchange}`, queue `{exchange}.{group}`,
//! DLQ exchange `{exchange}_dlq` (direct), DLQ queue `{exchange}.{group}.dlq`
//! bound with key `{exchange}.{group}`. Each group's queue is bound to exactly the
//! routing keys its handlers take (a wildcard handler binds everything).
//! eventbus adds, per group, the delay queues `{exchange}.{group}.delay.{n}`
//! and `{exchange}.{group}.unhandled`, returning through the fanout exchange
//! `{exchange}.{group}.redeliver`; eventsource-py ignores them.

use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{Channel, ExchangeKind};

use crate::config::{Config, ExchangeType, QueueArgument};
use crate::dispatch::{DispatchTable, GroupTable};
use crate::registry::EventTypes;

use super::amqp::long_string as string;
use crate::error::Error;

use super::errors::{Failure, declare_failure, of_group};

/// One binding of a group queue to the main exchange.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Binding {
    pub(crate) routing_key: String,
    pub(crate) arguments: FieldTable,
}

impl Binding {
    /// How the startup line shows it: the routing key, or the header match.
    pub(crate) fn describe(&self) -> String {
        if !self.routing_key.is_empty() || self.arguments.inner().is_empty() {
            return if self.routing_key.is_empty() {
                "(every message)".to_owned()
            } else {
                self.routing_key.clone()
            };
        }
        let matches: Vec<String> = self
            .arguments
            .inner()
            .iter()
            .filter(|(k, _)| k.as_str() != "x-match")
            .map(|(k, v)| match v {
                lapin::types::AMQPValue::LongString(s) => format!("{k}={s}"),
                other => format!("{k}={other:?}"),
            })
            .collect();
        if matches.is_empty() {
            "(every message)".to_owned()
        } else {
            format!("headers {}", matches.join(" "))
        }
    }

    fn key(routing_key: impl Into<String>) -> Self {
        Self {
            routing_key: routing_key.into(),
            arguments: FieldTable::default(),
        }
    }
}

/// The binding that routes `routing_key` (`{aggregate}.{event}`) on this exchange type.
pub(crate) fn binding_for_key(config: &Config, routing_key: &str) -> Binding {
    match config.exchange_type {
        ExchangeType::Topic | ExchangeType::Direct => Binding::key(routing_key),
        ExchangeType::Fanout => Binding::key(""),
        ExchangeType::Headers => {
            let mut arguments = FieldTable::default();
            arguments.insert("x-match".into(), string("all"));
            if let Some((aggregate, event)) = routing_key.split_once('.') {
                arguments.insert(crate::wire::HEADER_EVENT_TYPE.into(), string(event));
                arguments.insert(crate::wire::HEADER_AGGREGATE_TYPE.into(), string(aggregate));
            }
            Binding {
                routing_key: String::new(),
                arguments,
            }
        }
    }
}

/// What a group's queue is bound to.
pub(crate) fn bindings(
    config: &Config,
    group: &GroupTable,
    event_types: &EventTypes,
) -> Vec<Binding> {
    if let Some(pattern) = &config.routing_key_pattern {
        // An explicit pattern replaces the derived bindings; empty means none.
        return pattern
            .split(',')
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .map(|p| match config.exchange_type {
                ExchangeType::Headers => binding_for_key(config, p),
                _ => Binding::key(p),
            })
            .collect();
    }
    let mut out: Vec<Binding> = Vec::new();
    if group.has_wildcard() {
        match config.exchange_type {
            ExchangeType::Topic => out.push(Binding::key("#")),
            ExchangeType::Fanout => out.push(Binding::key("")),
            ExchangeType::Headers => {
                let mut arguments = FieldTable::default();
                arguments.insert("x-match".into(), string("all"));
                out.push(Binding {
                    routing_key: String::new(),
                    arguments,
                });
            }
            // A direct exchange has no wildcard: bind every event type we know.
            ExchangeType::Direct => {
                for name in event_types.names() {
                    if let Some(reg) = event_types.get(name) {
                        out.push(Binding::key(reg.routing_key));
                    }
                }
            }
        }
    }
    if group.has_wildcard() && config.exchange_type != ExchangeType::Direct {
        // The wildcard binding already routes every event here.
        return out;
    }
    for event in group.events() {
        let binding = binding_for_key(config, event.routing_key);
        if !out.contains(&binding) {
            out.push(binding);
        }
    }
    out
}

fn exchange_kind(kind: ExchangeType) -> ExchangeKind {
    match kind {
        ExchangeType::Topic => ExchangeKind::Topic,
        ExchangeType::Direct => ExchangeKind::Direct,
        ExchangeType::Fanout => ExchangeKind::Fanout,
        ExchangeType::Headers => ExchangeKind::Headers,
    }
}

/// Declares the main exchange (and the alternate exchange, if configured).
/// A refusal here concerns every group: it stays fatal.
pub(crate) async fn declare_exchange(channel: &Channel, config: &Config) -> Result<(), Failure> {
    declare_exchanges(channel, config)
        .await
        .map_err(|f| match f {
            Failure::Fatal(Error::AccessRefused {
                kind, name, reason, ..
            }) => Failure::Fatal(Error::Broker {
                context: format!("declaring {kind} `{name}` (access refused)"),
                reason,
            }),
            other => other,
        })
}

async fn declare_exchanges(channel: &Channel, config: &Config) -> Result<(), Failure> {
    let mut arguments = FieldTable::default();
    if let Some(alternate) = &config.alternate_exchange {
        declare_alternate(channel, config, alternate).await?;
        arguments.insert("alternate-exchange".into(), string(alternate));
    }
    channel
        .exchange_declare(
            config.exchange_name.as_str().into(),
            exchange_kind(config.exchange_type),
            ExchangeDeclareOptions {
                durable: config.durable,
                auto_delete: config.auto_delete,
                ..ExchangeDeclareOptions::default()
            },
            arguments,
        )
        .await
        .map_err(|e| declare_failure(&e, "exchange", &config.exchange_name))
}

/// The alternate exchange (fanout) and the queue of the same name that keeps
/// what it receives.
async fn declare_alternate(
    channel: &Channel,
    config: &Config,
    alternate: &str,
) -> Result<(), Failure> {
    let durable = ExchangeDeclareOptions {
        durable: config.durable,
        ..ExchangeDeclareOptions::default()
    };
    channel
        .exchange_declare(
            alternate.into(),
            ExchangeKind::Fanout,
            durable,
            FieldTable::default(),
        )
        .await
        .map_err(|e| declare_failure(&e, "exchange", alternate))?;
    channel
        .queue_declare(
            alternate.into(),
            QueueDeclareOptions {
                durable: config.durable,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .map_err(|e| declare_failure(&e, "queue", alternate))?;
    channel
        .queue_bind(
            alternate.into(),
            alternate.into(),
            "".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(|e| declare_failure(&e, "binding of queue", alternate))
}

/// The arguments of a group queue: dead-lettering plus the user's pass-through.
pub(crate) fn queue_arguments(config: &Config, queue: &str) -> FieldTable {
    let mut args = FieldTable::default();
    if config.enable_dlq {
        args.insert(
            "x-dead-letter-exchange".into(),
            string(&config.dlq_exchange_name()),
        );
        args.insert("x-dead-letter-routing-key".into(), string(queue));
    }
    for (key, value) in &config.queue_arguments {
        let value = match value {
            QueueArgument::Str(s) => string(s),
            QueueArgument::Int(i) => AMQPValue::LongLongInt(*i),
            QueueArgument::Bool(b) => AMQPValue::Boolean(*b),
        };
        args.insert(ShortString::from(key.as_str()), value);
    }
    args
}

/// Declares a group's queue, its dead-letter queue and its bindings. A
/// refusal is [`Error::AccessRefused`] naming the group.
pub(crate) async fn declare_group(
    channel: &Channel,
    config: &Config,
    group: &str,
    bindings: &[Binding],
) -> Result<(), Failure> {
    declare_group_objects(channel, config, group, bindings)
        .await
        .map_err(|f| of_group(f, group))
}

async fn declare_group_objects(
    channel: &Channel,
    config: &Config,
    group: &str,
    bindings: &[Binding],
) -> Result<(), Failure> {
    let queue = config.group_queue_name(group);
    if config.enable_dlq {
        let dlx = config.dlq_exchange_name();
        channel
            .exchange_declare(
                dlx.as_str().into(),
                ExchangeKind::Direct,
                // As eventsource-py declares it: any difference is a 406
                // for whichever side declares second.
                ExchangeDeclareOptions {
                    durable: config.durable,
                    auto_delete: config.auto_delete,
                    ..ExchangeDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .map_err(|e| declare_failure(&e, "exchange", &dlx))?;
        let dlq = config.group_dlq_queue_name(group);
        let mut dlq_args = FieldTable::default();
        if let Some(ttl) = config.dlq_message_ttl {
            dlq_args.insert(
                "x-message-ttl".into(),
                AMQPValue::LongLongInt(i64::from(ttl)),
            );
        }
        if let Some(max) = config.dlq_max_length {
            dlq_args.insert(
                "x-max-length".into(),
                AMQPValue::LongLongInt(i64::from(max)),
            );
        }
        channel
            .queue_declare(
                dlq.as_str().into(),
                QueueDeclareOptions {
                    durable: config.durable,
                    auto_delete: config.auto_delete,
                    ..QueueDeclareOptions::default()
                },
                dlq_args,
            )
            .await
            .map_err(|e| declare_failure(&e, "queue", &dlq))?;
        channel
            .queue_bind(
                dlq.as_str().into(),
                dlx.as_str().into(),
                queue.as_str().into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(|e| declare_failure(&e, "binding of queue", &dlq))?;
    }
    channel
        .queue_declare(
            queue.as_str().into(),
            QueueDeclareOptions {
                durable: config.durable,
                auto_delete: config.auto_delete,
                ..QueueDeclareOptions::default()
            },
            queue_arguments(config, &queue),
        )
        .await
        .map_err(|e| declare_failure(&e, "queue", &queue))?;
    declare_delays(channel, config, group, &queue).await?;
    for binding in bindings {
        bind(channel, config, &queue, binding).await?;
    }
    Ok(())
}

/// The group's way back for messages that wait on the broker: a fanout
/// exchange bound to the group's queue alone, one delay queue per retry and
/// one for deliveries left to another member, each dead-lettering through
/// that exchange without a new routing key, so a message comes back under the
/// key it was published with (see [`super::retry`]).
async fn declare_delays(
    channel: &Channel,
    config: &Config,
    group: &str,
    queue: &str,
) -> Result<(), Failure> {
    let redeliver = config.group_redeliver_exchange_name(group);
    channel
        .exchange_declare(
            redeliver.as_str().into(),
            ExchangeKind::Fanout,
            ExchangeDeclareOptions {
                durable: config.durable,
                auto_delete: config.auto_delete,
                ..ExchangeDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .map_err(|e| declare_failure(&e, "exchange", &redeliver))?;
    channel
        .queue_bind(
            queue.into(),
            redeliver.as_str().into(),
            "".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(|e| declare_failure(&e, "binding of queue", queue))?;
    let delay_queues = (1..=config.max_retries)
        .map(|attempt| config.group_delay_queue_name(group, attempt))
        .chain(std::iter::once(config.group_unhandled_queue_name(group)));
    for delay_queue in delay_queues {
        let mut args = FieldTable::default();
        args.insert("x-dead-letter-exchange".into(), string(&redeliver));
        channel
            .queue_declare(
                delay_queue.as_str().into(),
                QueueDeclareOptions {
                    durable: config.durable,
                    ..QueueDeclareOptions::default()
                },
                args,
            )
            .await
            .map_err(|e| declare_failure(&e, "queue", &delay_queue))?;
    }
    Ok(())
}

pub(crate) async fn bind(
    channel: &Channel,
    config: &Config,
    queue: &str,
    binding: &Binding,
) -> Result<(), Failure> {
    channel
        .queue_bind(
            queue.into(),
            config.exchange_name.as_str().into(),
            binding.routing_key.as_str().into(),
            QueueBindOptions::default(),
            binding.arguments.clone(),
        )
        .await
        .map_err(|e| declare_failure(&e, "binding of queue", queue))
}

/// `group`'s bindings: derived from its handlers plus the runtime ones in `extra`.
pub(crate) fn group_bindings(
    config: &Config,
    table: &DispatchTable,
    event_types: &EventTypes,
    extra: &[(String, String)],
    group: &str,
) -> Vec<Binding> {
    let mut out = table
        .groups
        .get(group)
        .map(|handlers| bindings(config, handlers, event_types))
        .unwrap_or_default();
    for (g, key) in extra {
        let binding = binding_for_key(config, key);
        if g == group && !out.contains(&binding) {
            out.push(binding);
        }
    }
    out
}

/// Every group to declare, with its bindings: the registry's groups, then
/// groups that only have runtime bindings (`bind_routing_key` before any
/// handler).
pub(crate) fn plan(
    config: &Config,
    table: &DispatchTable,
    event_types: &EventTypes,
    extra: &[(String, String)],
) -> Vec<(String, Vec<Binding>)> {
    let mut out: Vec<(String, Vec<Binding>)> = table
        .groups
        .keys()
        .map(|group| {
            let bindings = group_bindings(config, table, event_types, extra, group);
            (group.to_string(), bindings)
        })
        .collect();
    for (g, key) in extra {
        if table.groups.contains_key(g.as_str()) {
            continue;
        }
        let binding = binding_for_key(config, key);
        match out.iter_mut().find(|(group, _)| group == g) {
            Some((_, bindings)) => {
                if !bindings.contains(&binding) {
                    bindings.push(binding);
                }
            }
            None => out.push((g.clone(), vec![binding])),
        }
    }
    out
}

#[cfg(test)]
#[path = "topology_tests.rs"]
mod tests;
