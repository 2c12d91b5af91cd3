//! `eventbus`: look at and repair an eventbus deployment from the shell.
//!
//! Configured by the same `EVENTBUS_*` variables as `Bus::from_env()`, with
//! flags taking precedence. Declares nothing on the broker (`topology delete`
//! deletes, `topology unbind` unbinds). Exit status: 0 on success, 1 on an error, 2 on a usage error, 3
//! when a message id is not found, 4 when a destructive command was not
//! confirmed.

mod table;
mod topology;

use std::io::{BufRead, IsTerminal, Write};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use eventbus::{Bus, Config, DlqMessage, ReplayFilter};
use serde::Serialize;

use table::{Table, cell, one_line};

#[derive(Debug, Parser)]
#[command(
    name = "eventbus",
    version,
    about = "Inspect and repair an eventbus deployment on RabbitMQ, Redis Streams or Kafka"
)]
struct Cli {
    /// Broker URL (default: EVENTBUS_URL, then amqp://guest:guest@localhost:5672/).
    #[arg(long, global = true)]
    url: Option<String>,
    /// Exchange name (default: EVENTBUS_EXCHANGE_NAME, then `events`).
    #[arg(long, global = true)]
    exchange: Option<String>,
    /// Print JSON instead of tables.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Dead-letter queue of a consumer group.
    #[command(subcommand)]
    Dlq(DlqCommand),
    /// Queues.
    #[command(subcommand)]
    Queue(QueueCommand),
    /// The exchanges, queues and bindings of the exchange: show them, delete them.
    #[command(subcommand)]
    Topology(TopologyCommand),
    /// Can we reach the broker?
    Health,
}

#[derive(Debug, Args)]
struct Group {
    /// Consumer group (default: EVENTBUS_CONSUMER_GROUP, then `default`).
    #[arg(long, short)]
    group: Option<String>,
}

#[derive(Debug, Args)]
struct Confirm {
    /// Do not ask for confirmation.
    #[arg(long, short)]
    yes: bool,
}

#[derive(Debug, Subcommand)]
enum DlqCommand {
    /// Number of messages in the DLQ.
    Count(Group),
    /// Messages at the head of the DLQ (nothing is consumed).
    List {
        #[command(flatten)]
        group: Group,
        /// At most this many.
        #[arg(long, short, default_value_t = 20)]
        limit: usize,
    },
    /// One message, with its headers and body.
    Show {
        #[command(flatten)]
        group: Group,
        /// The message id (event id).
        id: String,
    },
    /// Send one message back to its group's queue.
    Replay {
        #[command(flatten)]
        group: Group,
        /// The message id (event id).
        id: String,
    },
    /// Send every matching message back to its group's queue.
    ReplayAll {
        #[command(flatten)]
        group: Group,
        /// Only this event type.
        #[arg(long)]
        event_type: Option<String>,
        /// Only messages dead-lettered at least this many seconds ago.
        #[arg(long, value_name = "SECONDS")]
        older_than: Option<u64>,
        #[command(flatten)]
        confirm: Confirm,
    },
    /// Delete every message in the DLQ.
    Purge {
        #[command(flatten)]
        group: Group,
        #[command(flatten)]
        confirm: Confirm,
    },
}

#[derive(Debug, Subcommand)]
enum QueueCommand {
    /// Name, messages and consumers of a group's queue.
    Info(Group),
}

#[derive(Debug, Subcommand)]
enum TopologyCommand {
    /// What exists for the exchange: exchanges, group, retry and DLQ queues
    /// with their depths, bindings.
    Show(TopologyTarget),
    /// Delete what `show` lists, after asking. Refuses queues that hold
    /// messages or have consumers unless --force.
    Delete {
        #[command(flatten)]
        target: TopologyTarget,
        /// Also delete queues that hold messages or have consumers; their messages are lost.
        #[arg(long)]
        force: bool,
        #[command(flatten)]
        confirm: Confirm,
    },
    /// Bindings of a group's queue (`--group`, default the configured group)
    /// to the exchange whose key no member of the group handles any more: lists
    /// each as unbind or keep, asks, then removes the stale ones. Needs the
    /// management API. Never automatic.
    Unbind {
        #[command(flatten)]
        target: TopologyTarget,
        /// A routing key some member of the group (eventbus or eventsource-py)
        /// still handles, e.g. `Order.OrderPlaced` (`#` for a wildcard, `` for
        /// fanout); repeatable. Every other binding of the group's queue goes.
        #[arg(long, value_name = "KEY", required = true)]
        keep: Vec<String>,
        #[command(flatten)]
        confirm: Confirm,
    },
}

#[derive(Debug, Args)]
struct TopologyTarget {
    /// Management API, used when it answers (default: EVENTBUS_MANAGEMENT_URL,
    /// then http://{broker host}:15672 with the broker URL's user and password).
    #[arg(long, env = "EVENTBUS_MANAGEMENT_URL", hide_env_values = true)]
    management_url: Option<String>,
    /// Without the management API: a consumer group whose queues to look for;
    /// repeatable (default: EVENTBUS_CONSUMER_GROUP, then `default`).
    #[arg(long = "group", short, value_name = "GROUP")]
    groups: Vec<String>,
}

/// Why the command failed, with its exit status.
enum Failure {
    Error(String),
    NotFound(String),
    NotConfirmed(String),
}

impl From<eventbus::Error> for Failure {
    fn from(e: eventbus::Error) -> Self {
        Self::Error(e.to_string())
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Error(e)) => {
            eprintln!("error: {e}");
            ExitCode::from(1)
        }
        Err(Failure::NotFound(e)) => {
            eprintln!("not found: {e}");
            ExitCode::from(3)
        }
        Err(Failure::NotConfirmed(e)) => {
            eprintln!("aborted: {e}");
            ExitCode::from(4)
        }
    }
}

fn config(cli: &Cli) -> Result<Config, Failure> {
    let mut config = Config::from_env().map_err(|e| Failure::Error(e.to_string()))?;
    if let Some(url) = &cli.url {
        config.url = eventbus::BrokerUrl::parse(url).map_err(|e| Failure::Error(e.to_string()))?;
    }
    if let Some(exchange) = &cli.exchange {
        config.exchange_name.clone_from(exchange);
    }
    if config.url.is_memory() {
        return Err(Failure::Error(
            "the eventbus tool needs a broker; memory:// has no queues to inspect".into(),
        ));
    }
    config.connect_timeout = config.connect_timeout.min(Duration::from_secs(10));
    Ok(config)
}

fn print_json(value: &impl Serialize) -> Result<(), Failure> {
    let text = serde_json::to_string_pretty(value).map_err(|e| Failure::Error(e.to_string()))?;
    println!("{text}");
    Ok(())
}

/// Asks before a destructive command unless `--yes`; refuses without a terminal.
fn confirm(question: &str, yes: bool) -> Result<(), Failure> {
    if yes {
        return Ok(());
    }
    if !std::io::stdin().is_terminal() {
        return Err(Failure::NotConfirmed(format!(
            "{question} needs confirmation; pass --yes when not running interactively"
        )));
    }
    eprint!("{question} [y/N] ");
    let _ = std::io::stderr().flush();
    let mut answer = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut answer)
        .map_err(|e| Failure::Error(e.to_string()))?;
    if matches!(answer.trim(), "y" | "Y" | "yes") {
        Ok(())
    } else {
        Err(Failure::NotConfirmed(format!("{question} declined")))
    }
}

/// One row per message; its handler in full in its own column and its reason
/// in full on the line below, since a reason begins with the handler's path.
fn print_table(messages: &[DlqMessage]) {
    let mut table = Table::new(&[
        "ID",
        "EVENT TYPE",
        "HANDLER",
        "ERROR TYPE",
        "RETRIES",
        "DEAD-LETTERED AT",
        "ROUTING KEY",
    ]);
    for m in messages {
        table.row(vec![
            cell(m.message_id.as_deref(), 36),
            cell(m.event_type.as_deref(), 32),
            m.handler
                .as_deref()
                .map_or_else(|| "-".to_owned(), one_line),
            cell(m.error_type.as_deref(), 24),
            m.retry_count
                .map_or_else(|| "-".to_owned(), |n| n.to_string()),
            cell(m.dead_lettered_at.as_deref(), 32),
            cell(m.original_routing_key.as_deref(), 48),
        ]);
        let reason = m.reason.as_deref().unwrap_or("-");
        table.note(format!(
            "  reason: {}",
            reason.replace('\n', "\n          ")
        ));
    }
    println!("{}", table.render());
}

async fn run(cli: Cli) -> Result<(), Failure> {
    let config = config(&cli)?;
    let default_group = config.consumer_group.clone();
    let group_of = |g: &Group| g.group.clone().unwrap_or_else(|| default_group.clone());
    let bus = Bus::builder()
        .config(config)
        .without_discovery()
        .without_topology()
        .build()
        .await?;
    let result = command(&cli, &bus, &group_of).await;
    let _ = bus.shutdown(Duration::from_secs(5)).await;
    result
}

async fn command(cli: &Cli, bus: &Bus, group_of: &dyn Fn(&Group) -> String) -> Result<(), Failure> {
    match &cli.command {
        Command::Health => {
            let health = bus.health_check().await;
            if cli.json {
                print_json(&health)?;
            } else {
                println!(
                    "{} ({} at {})",
                    if health.healthy {
                        "healthy"
                    } else {
                        "unhealthy"
                    },
                    health.transport,
                    bus.config().url
                );
                if let Some(error) = &health.error {
                    println!("error: {error}");
                }
            }
            if health.healthy {
                Ok(())
            } else {
                Err(Failure::Error(
                    health.error.unwrap_or_else(|| "unhealthy".into()),
                ))
            }
        }
        Command::Queue(QueueCommand::Info(group)) => {
            let info = bus.group_queue_info(&group_of(group)).await?;
            if cli.json {
                print_json(&info)
            } else {
                println!("queue      {}", info.name);
                println!("messages   {}", info.message_count);
                println!("consumers  {}", info.consumer_count);
                Ok(())
            }
        }
        Command::Dlq(dlq_command) => dlq(cli, bus, dlq_command, group_of).await,
        // The bus has connected (so a bad URL fails as for every command);
        // topology needs a channel of its own and the management API.
        Command::Topology(_) if bus.config().url.is_redis() => Err(Failure::Error(format!(
            "`eventbus topology` shows RabbitMQ exchanges and queues; on Redis Streams the stream is `{}` (see `eventbus queue info` and `redis-cli XINFO GROUPS {}`)",
            bus.config().stream_name(),
            bus.config().stream_name()
        ))),
        Command::Topology(_) if bus.config().url.is_kafka() => Err(Failure::Error(format!(
            "`eventbus topology` shows RabbitMQ exchanges and queues; on Kafka the topic is `{}` with one retry topic per group (`{}`) and the DLQ topic `{}` (see `eventbus queue info`)",
            bus.config().kafka_topic(),
            bus.config().kafka_retry_topic("{group}"),
            bus.config().kafka_dlq_topic()
        ))),
        Command::Topology(TopologyCommand::Show(target)) => {
            topology::show(bus.config(), target, cli.json).await
        }
        Command::Topology(TopologyCommand::Delete {
            target,
            force,
            confirm,
        }) => topology::delete(bus.config(), target, *force, confirm.yes, cli.json).await,
        Command::Topology(TopologyCommand::Unbind {
            target,
            keep,
            confirm,
        }) => topology::unbind(bus.config(), target, keep, confirm.yes, cli.json).await,
    }
}

async fn dlq(
    cli: &Cli,
    bus: &Bus,
    command: &DlqCommand,
    group_of: &dyn Fn(&Group) -> String,
) -> Result<(), Failure> {
    match command {
        DlqCommand::Count(group) => {
            let dlq = bus.dlq(&group_of(group));
            let count = dlq.count().await?;
            if cli.json {
                print_json(&serde_json::json!({ "queue": dlq.queue_name(), "count": count }))
            } else {
                println!("{count}");
                Ok(())
            }
        }
        DlqCommand::List { group, limit } => {
            let messages = bus.dlq(&group_of(group)).list(*limit).await?;
            if cli.json {
                print_json(&messages)
            } else {
                print_table(&messages);
                Ok(())
            }
        }
        DlqCommand::Show { group, id } => {
            let dlq = bus.dlq(&group_of(group));
            let message = dlq.show(id).await?.ok_or_else(|| {
                Failure::NotFound(format!("no message `{id}` in {}", dlq.queue_name()))
            })?;
            if cli.json {
                return print_json(&message);
            }
            print_table(std::slice::from_ref(&message));
            println!("headers:");
            for (k, v) in &message.headers {
                println!("  {k}: {v}");
            }
            println!("body:\n{}", message.body);
            Ok(())
        }
        DlqCommand::Replay { group, id } => {
            let group = group_of(group);
            let dlq = bus.dlq(&group);
            let config = bus.config();
            // On Kafka, a dead letter eventsource-py made (no `eventbus_retry_group`)
            // is replayed to the main topic, one eventbus made to the group's retry topic.
            let to_main_topic = config.url.is_kafka()
                && dlq
                    .show(id)
                    .await?
                    .is_some_and(|m| !m.headers.contains_key("eventbus_retry_group"));
            if !dlq.replay(id).await? {
                return Err(Failure::NotFound(format!(
                    "no message `{id}` in {}",
                    dlq.queue_name()
                )));
            }
            let target = if config.url.is_redis() {
                format!("consumer group {group} of {}", config.stream_name())
            } else if to_main_topic {
                config.kafka_topic()
            } else if config.url.is_kafka() {
                config.kafka_retry_topic(&group)
            } else {
                config.group_queue_name(&group)
            };
            if cli.json {
                print_json(&serde_json::json!({ "replayed": 1, "to": target }))
            } else {
                println!("replayed {id} to {target}");
                Ok(())
            }
        }
        DlqCommand::ReplayAll {
            group,
            event_type,
            older_than,
            confirm: c,
        } => {
            let group = group_of(group);
            let dlq = bus.dlq(&group);
            let mut filter = ReplayFilter::all();
            if let Some(t) = event_type {
                filter = filter.event_type(t.clone());
            }
            if let Some(secs) = older_than {
                filter = filter.older_than(Duration::from_secs(*secs));
            }
            confirm(
                &format!(
                    "replay matching messages from {} to {}?",
                    dlq.queue_name(),
                    bus.config().group_queue_name(&group)
                ),
                c.yes,
            )?;
            let report = dlq.replay_all(&filter).await?;
            if cli.json {
                print_json(&report)
            } else {
                println!("replayed {}, kept {}", report.replayed, report.kept);
                Ok(())
            }
        }
        DlqCommand::Purge { group, confirm: c } => {
            let dlq = bus.dlq(&group_of(group));
            let count = dlq.count().await?;
            confirm(
                &format!("purge {count} message(s) from {}?", dlq.queue_name()),
                c.yes,
            )?;
            let purged = dlq.purge().await?;
            if cli.json {
                print_json(&serde_json::json!({ "purged": purged }))
            } else {
                println!("purged {purged}");
                Ok(())
            }
        }
    }
}
