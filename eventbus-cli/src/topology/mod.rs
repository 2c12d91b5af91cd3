//! `eventbus topology show|delete|unbind`: what exists on the broker for an
//! exchange, its teardown, and removing bindings no member handles any more.
//!
//! What exists is found through the management HTTP API when it answers: the
//! exchange and its dead-letter exchange, every queue named `{exchange}.…`, and
//! the bindings. Otherwise by passive declares of the names the naming rules
//! (`Config::group_queue_name` and friends) give for the `--group`s. Depths are
//! counted over AMQP either way, because the API's figures lag by its statistics
//! interval (5 s by default); deletes go over AMQP too, with `if-empty` and
//! `if-unused` unless `--force`, so the broker itself refuses a queue that
//! filled up after we looked.

mod amqp;
mod management;
mod unbind;

pub(crate) use unbind::unbind;

use eventbus::Config;
use serde::{Deserialize, Serialize};

use crate::table::{Table, one_line};
use crate::{Failure, TopologyTarget, confirm, print_json};
use amqp::{Broker, Refused};
use management::{Api, ManagementUrl, Tls};

/// What exists on the broker for one exchange.
#[derive(Serialize)]
struct Topology {
    exchange: String,
    #[serde(flatten)]
    found_by: FoundBy,
    exchanges: Vec<Exchange>,
    queues: Vec<Queue>,
    /// `None`: AMQP cannot list bindings.
    bindings: Option<Vec<Binding>>,
}

/// How [`Topology`] was found: the `mode` in JSON.
#[derive(Serialize)]
#[serde(tag = "mode", rename_all = "snake_case")]
enum FoundBy {
    Management {
        management_url: String,
    },
    Amqp {
        groups: Vec<String>,
        management_url: String,
        /// Why the management API was not used.
        management_error: String,
    },
}

#[derive(Serialize)]
struct Exchange {
    name: String,
    role: ExchangeRole,
    /// `None` when found by a passive declare, which does not tell.
    #[serde(rename = "type")]
    kind: Option<String>,
}

#[derive(Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
enum ExchangeRole {
    Main,
    DeadLetter,
    /// `{exchange}.{group}.redeliver`: the way back from a group's delay queues.
    Redeliver,
}

#[derive(Serialize)]
struct Queue {
    name: String,
    group: String,
    #[serde(flatten)]
    role: QueueRole,
    /// Ready messages.
    messages: u32,
    consumers: u32,
}

/// What a queue is to its group; in this order within a group.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(tag = "role", content = "attempt", rename_all = "snake_case")]
enum QueueRole {
    Group,
    /// The delay queue of retry number `n`.
    #[serde(rename = "retry")]
    Delay(u32),
    /// Where deliveries a member cannot handle wait for another member.
    Unhandled,
    /// A delay queue of an earlier eventbus version (`.retry.{n}`).
    #[serde(rename = "legacy_retry")]
    Retry(u32),
    Dlq,
}

/// A binding as the management API reports it.
#[derive(Debug, Deserialize, Serialize)]
struct Binding {
    source: String,
    destination: String,
    destination_type: String,
    routing_key: String,
    #[serde(default)]
    arguments: serde_json::Map<String, serde_json::Value>,
}

/// `eventbus topology show`.
pub(crate) async fn show(
    config: &Config,
    target: &TopologyTarget,
    json: bool,
) -> Result<(), Failure> {
    let mut broker = Broker::connect(config).await?;
    let topology = discover(config, &mut broker, target).await;
    broker.close().await;
    let topology = topology?;
    if json {
        return print_json(&topology);
    }
    println!("{}", mode_line(&topology.found_by));
    if topology.exchanges.is_empty() && topology.queues.is_empty() {
        println!("nothing on the broker for exchange {}", topology.exchange);
        return Ok(());
    }
    let mut exchanges = Table::new(&["EXCHANGE", "TYPE", "ROLE"]);
    for x in &topology.exchanges {
        exchanges.row(vec![
            x.name.clone(),
            x.kind.clone().unwrap_or_else(|| "-".into()),
            exchange_role(x.role).into(),
        ]);
    }
    let mut queues = Table::new(&["QUEUE", "GROUP", "ROLE", "MESSAGES", "CONSUMERS"]);
    for q in &topology.queues {
        queues.row(vec![
            q.name.clone(),
            q.group.clone(),
            queue_role(q.role),
            q.messages.to_string(),
            q.consumers.to_string(),
        ]);
    }
    for table in [exchanges, queues] {
        if !table.is_empty() {
            println!("\n{}", table.render());
        }
    }
    match &topology.bindings {
        None => println!("\nbindings: not visible without the management API"),
        Some(bindings) if bindings.is_empty() => println!("\nbindings: none"),
        Some(bindings) => {
            let mut table = Table::new(&["SOURCE", "DESTINATION", "ROUTING KEY", "ARGUMENTS"]);
            for b in bindings {
                table.row(vec![
                    b.source.clone(),
                    b.destination.clone(),
                    one_line(&b.routing_key),
                    if b.arguments.is_empty() {
                        String::new()
                    } else {
                        serde_json::Value::Object(b.arguments.clone()).to_string()
                    },
                ]);
            }
            println!("\n{}", table.render());
        }
    }
    Ok(())
}

/// `eventbus topology delete`.
pub(crate) async fn delete(
    config: &Config,
    target: &TopologyTarget,
    force: bool,
    yes: bool,
    json: bool,
) -> Result<(), Failure> {
    let mut broker = Broker::connect(config).await?;
    let result = delete_with(config, &mut broker, target, force, yes, json).await;
    broker.close().await;
    result
}

/// What `delete` reports.
#[derive(Serialize)]
struct Deleted<'a> {
    exchange: &'a str,
    #[serde(flatten)]
    found_by: &'a FoundBy,
    queues: Vec<String>,
    exchanges: Vec<String>,
    /// Messages that went with their queues (only with `--force`).
    messages_deleted: u64,
}

async fn delete_with(
    config: &Config,
    broker: &mut Broker,
    target: &TopologyTarget,
    force: bool,
    yes: bool,
    json: bool,
) -> Result<(), Failure> {
    let topology = discover(config, broker, target).await?;
    // Delay queues feed the group queues, which feed the DLQs: delete in that order.
    let mut queues: Vec<&Queue> = topology.queues.iter().collect();
    queues.sort_by_key(|q| match q.role {
        QueueRole::Retry(_) | QueueRole::Delay(_) | QueueRole::Unhandled => 0,
        QueueRole::Group => 1,
        QueueRole::Dlq => 2,
    });
    let mut plan = vec![mode_line(&topology.found_by)];
    if queues.is_empty() && topology.exchanges.is_empty() {
        plan.push(format!(
            "nothing to delete for exchange {}",
            topology.exchange
        ));
    } else {
        let mut table = Table::new(&["WILL DELETE", "NAME", "MESSAGES", "CONSUMERS"]);
        for q in &queues {
            table.row(vec![
                "queue".into(),
                q.name.clone(),
                q.messages.to_string(),
                q.consumers.to_string(),
            ]);
        }
        for x in &topology.exchanges {
            table.row(vec![
                "exchange".into(),
                x.name.clone(),
                "".into(),
                "".into(),
            ]);
        }
        plan.push(table.render());
    }
    // The plan is for a person: beside --json it goes to stderr.
    if json {
        eprintln!("{}", plan.join("\n"));
    } else {
        println!("{}", plan.join("\n"));
    }
    let mut deleted = Deleted {
        exchange: &topology.exchange,
        found_by: &topology.found_by,
        queues: Vec::new(),
        exchanges: Vec::new(),
        messages_deleted: 0,
    };
    if queues.is_empty() && topology.exchanges.is_empty() {
        return if json { print_json(&deleted) } else { Ok(()) };
    }
    let busy: Vec<String> = queues
        .iter()
        .filter(|q| q.messages > 0 || q.consumers > 0)
        .map(|q| format!("{} ({})", q.name, depth(q.messages, q.consumers)))
        .collect();
    if !force && !busy.is_empty() {
        return Err(Failure::Error(format!(
            "refusing to delete {} queue(s) that hold messages or have consumers: {}; \
             pass --force to delete them with their messages",
            busy.len(),
            busy.join(", ")
        )));
    }
    confirm(
        &format!(
            "delete {} queue(s) and {} exchange(s) of exchange {}?",
            queues.len(),
            topology.exchanges.len(),
            topology.exchange
        ),
        yes,
    )?;
    let mut kept = Vec::new();
    for q in &queues {
        match broker.delete_queue(&q.name, force).await? {
            Ok(messages) => {
                deleted.messages_deleted += u64::from(messages);
                deleted.queues.push(q.name.clone());
            }
            // Someone else deleted it meanwhile: it is gone all the same.
            Err(Refused::Gone) => deleted.queues.push(q.name.clone()),
            Err(Refused::InUse(why)) => kept.push(format!("{} ({why})", q.name)),
        }
    }
    if !kept.is_empty() {
        // The exchanges stay too: their bindings still route to what is left.
        return Err(Failure::Error(format!(
            "deleted {} queue(s), but the broker refused {}: {}; the exchanges were kept; \
             pass --force to delete them with their messages",
            deleted.queues.len(),
            kept.len(),
            kept.join(", ")
        )));
    }
    for x in &topology.exchanges {
        match broker.delete_exchange(&x.name).await? {
            Ok(()) | Err(Refused::Gone) => deleted.exchanges.push(x.name.clone()),
            Err(Refused::InUse(why)) => {
                return Err(Failure::Error(format!(
                    "the broker refused to delete exchange {}: {why}",
                    x.name
                )));
            }
        }
    }
    if json {
        print_json(&deleted)
    } else {
        println!(
            "deleted {} queue(s) ({} message(s) with them) and {} exchange(s)",
            deleted.queues.len(),
            deleted.messages_deleted,
            deleted.exchanges.len()
        );
        Ok(())
    }
}

/// Asks the management API, or else the broker about the names of `--group`.
async fn discover(
    config: &Config,
    broker: &mut Broker,
    target: &TopologyTarget,
) -> Result<Topology, Failure> {
    let parts = amqp::parts(config)?;
    let raw = match target.management_url.as_deref().map(str::trim) {
        Some(raw) if !raw.is_empty() => raw.to_owned(),
        _ => format!("http://{}:{}", parts.host, management::DEFAULT_PORT),
    };
    let url = ManagementUrl::parse(&raw, &parts.user, &parts.password).map_err(Failure::Error)?;
    let names = exchange_names(config);
    let found = {
        let (url, vhost, exchange) = (url.clone(), parts.vhost, config.exchange_name.clone());
        let (ca_file, verify) = (config.ca_file.clone(), config.verify_ssl);
        let names: Vec<String> = names.iter().map(|(n, _)| n.clone()).collect();
        tokio::task::spawn_blocking(move || {
            let tls = Tls {
                ca_file: ca_file.as_deref(),
                verify,
            };
            let names: Vec<&str> = names.iter().map(String::as_str).collect();
            Api::new(url, &vhost, &tls)?.find(&exchange, &names)
        })
        .await
        .map_err(|e| Failure::Error(format!("the management API client failed: {e}")))?
    };
    let mut topology = match found {
        Ok(found) => {
            let role = |name: &str| {
                names
                    .iter()
                    .find(|(n, _)| n == name)
                    .map_or(ExchangeRole::Main, |(_, r)| *r)
            };
            let mut queues = Vec::new();
            for name in &found.queues {
                // `{exchange}.v2.orders` is the queue of exchange `{exchange}.v2` if that exists.
                let nested = found.nested_exchanges.iter().any(|x| {
                    !names.iter().any(|(n, _)| n == x) && name.starts_with(&format!("{x}."))
                });
                let Some((group, role)) = classify(config, name).filter(|_| !nested) else {
                    continue;
                };
                // Gone since the listing: skip it.
                if let Some(depth) = broker.queue(name).await? {
                    queues.push(Queue {
                        name: name.clone(),
                        group,
                        role,
                        messages: depth.messages,
                        consumers: depth.consumers,
                    });
                }
            }
            let mut bindings = found.bindings;
            bindings.sort_by(|a, b| {
                (&a.source, &a.destination, &a.routing_key).cmp(&(
                    &b.source,
                    &b.destination,
                    &b.routing_key,
                ))
            });
            Topology {
                exchange: config.exchange_name.clone(),
                found_by: FoundBy::Management {
                    management_url: url.to_string(),
                },
                exchanges: found
                    .exchanges
                    .into_iter()
                    .map(|(name, kind)| Exchange {
                        role: role(&name),
                        name,
                        kind: Some(kind),
                    })
                    .chain(
                        found
                            .nested_exchanges
                            .iter()
                            .filter(|name| redeliver_group(config, name).is_some())
                            .map(|name| Exchange {
                                name: name.clone(),
                                role: ExchangeRole::Redeliver,
                                kind: Some("fanout".into()),
                            }),
                    )
                    .collect(),
                queues,
                bindings: Some(bindings),
            }
        }
        Err(management_error) => {
            let mut groups: Vec<String> = Vec::new();
            for g in &target.groups {
                if !groups.contains(g) {
                    groups.push(g.clone());
                }
            }
            if groups.is_empty() {
                groups.push(config.consumer_group.clone());
            }
            let mut exchanges = Vec::new();
            for (name, role) in names {
                if broker.exchange_exists(&name).await? {
                    exchanges.push(Exchange {
                        name,
                        role,
                        kind: None,
                    });
                }
            }
            let mut sorted = groups.clone();
            sorted.sort();
            for group in &sorted {
                let name = config.group_redeliver_exchange_name(group);
                if broker.exchange_exists(&name).await? {
                    exchanges.push(Exchange {
                        name,
                        role: ExchangeRole::Redeliver,
                        kind: None,
                    });
                }
            }
            let queues = queues_by_name(config, broker, &groups).await?;
            Topology {
                exchange: config.exchange_name.clone(),
                found_by: FoundBy::Amqp {
                    groups,
                    management_url: url.to_string(),
                    management_error,
                },
                exchanges,
                queues,
                bindings: None,
            }
        }
    };
    topology
        .queues
        .sort_by(|a, b| (&a.group, a.role).cmp(&(&b.group, b.role)));
    Ok(topology)
}

/// The queues the naming rules give for `groups` that exist.
async fn queues_by_name(
    config: &Config,
    broker: &mut Broker,
    groups: &[String],
) -> Result<Vec<Queue>, Failure> {
    let mut queues = Vec::new();
    for group in groups {
        let mut candidates = vec![
            (config.group_queue_name(group), QueueRole::Group),
            (
                config.group_unhandled_queue_name(group),
                QueueRole::Unhandled,
            ),
            (config.group_dlq_queue_name(group), QueueRole::Dlq),
        ];
        // The configured delay queues, and any left by a larger EVENTBUS_MAX_RETRIES.
        for attempt in 1.. {
            let name = config.group_delay_queue_name(group, attempt);
            if attempt > config.max_retries && broker.queue(&name).await?.is_none() {
                break;
            }
            candidates.push((name, QueueRole::Delay(attempt)));
        }
        // Those of earlier versions, while they exist.
        for attempt in 1.. {
            let name = config.group_retry_queue_name(group, attempt);
            if broker.queue(&name).await?.is_none() {
                break;
            }
            candidates.push((name, QueueRole::Retry(attempt)));
        }
        for (name, role) in candidates {
            if let Some(depth) = broker.queue(&name).await? {
                queues.push(Queue {
                    name,
                    group: group.clone(),
                    role,
                    messages: depth.messages,
                    consumers: depth.consumers,
                });
            }
        }
    }
    Ok(queues)
}

/// The exchange and its dead-letter exchange.
fn exchange_names(config: &Config) -> Vec<(String, ExchangeRole)> {
    let mut names = vec![(config.exchange_name.clone(), ExchangeRole::Main)];
    let dlx = config.dlq_exchange_name();
    if dlx != config.exchange_name {
        names.push((dlx, ExchangeRole::DeadLetter));
    }
    names
}

/// The group and role of queue `name` by the naming rules, if it is one of the exchange's.
fn classify(config: &Config, name: &str) -> Option<(String, QueueRole)> {
    let rest = name
        .strip_prefix(config.exchange_name.as_str())?
        .strip_prefix('.')?;
    if let Some(group) = rest.strip_suffix(".dlq")
        && !group.is_empty()
        && config.group_dlq_queue_name(group) == name
    {
        return Some((group.to_owned(), QueueRole::Dlq));
    }
    if let Some(group) = rest.strip_suffix(".unhandled")
        && !group.is_empty()
        && config.group_unhandled_queue_name(group) == name
    {
        return Some((group.to_owned(), QueueRole::Unhandled));
    }
    if let Some((group, attempt)) = rest.rsplit_once(".delay.")
        && let Ok(attempt) = attempt.parse::<u32>()
        && attempt >= 1
        && !group.is_empty()
        && config.group_delay_queue_name(group, attempt) == name
    {
        return Some((group.to_owned(), QueueRole::Delay(attempt)));
    }
    if let Some((group, attempt)) = rest.rsplit_once(".retry.")
        && let Ok(attempt) = attempt.parse::<u32>()
        && attempt >= 1
        && !group.is_empty()
        && config.group_retry_queue_name(group, attempt) == name
    {
        return Some((group.to_owned(), QueueRole::Retry(attempt)));
    }
    (!rest.is_empty() && config.group_queue_name(rest) == name)
        .then(|| (rest.to_owned(), QueueRole::Group))
}

/// The group whose redeliver exchange `name` is, by the naming rules.
fn redeliver_group<'a>(config: &Config, name: &'a str) -> Option<&'a str> {
    let group = name
        .strip_prefix(config.exchange_name.as_str())?
        .strip_prefix('.')?
        .strip_suffix(".redeliver")?;
    (!group.is_empty() && config.group_redeliver_exchange_name(group) == name).then_some(group)
}

fn mode_line(found_by: &FoundBy) -> String {
    match found_by {
        FoundBy::Management { management_url } => {
            format!("mode: management API at {management_url}")
        }
        FoundBy::Amqp {
            groups,
            management_error,
            ..
        } => format!(
            "mode: amqp, passive declares for group(s) {} (management API not used: {management_error})",
            groups.join(", ")
        ),
    }
}

fn exchange_role(role: ExchangeRole) -> &'static str {
    match role {
        ExchangeRole::Main => "main",
        ExchangeRole::DeadLetter => "dead-letter",
        ExchangeRole::Redeliver => "redeliver",
    }
}

fn queue_role(role: QueueRole) -> String {
    match role {
        QueueRole::Group => "group".into(),
        QueueRole::Delay(n) => format!("retry {n}"),
        QueueRole::Unhandled => "unhandled".into(),
        QueueRole::Retry(n) => format!("legacy-retry {n}"),
        QueueRole::Dlq => "dlq".into(),
    }
}

fn depth(messages: u32, consumers: u32) -> String {
    let plural = |n: u32, what: &str| format!("{n} {what}{}", if n == 1 { "" } else { "s" });
    match (messages, consumers) {
        (m, 0) => plural(m, "message"),
        (0, c) => plural(c, "consumer"),
        (m, c) => format!("{}, {}", plural(m, "message"), plural(c, "consumer")),
    }
}

/// `raw` with the password of its user info replaced by `***`.
fn redact(raw: &str) -> String {
    let Some((scheme, rest)) = raw.split_once("://") else {
        // Not a URL: it could be anything, including a bare secret.
        return "<unparseable URL>".to_owned();
    };
    let end = rest.find('/').unwrap_or(rest.len());
    match rest[..end].rsplit_once('@') {
        Some((userinfo, host)) if userinfo.contains(':') => {
            let user = userinfo.split_once(':').map_or(userinfo, |(u, _)| u);
            format!("{scheme}://{user}:***@{host}{}", &rest[end..])
        }
        _ => raw.to_owned(),
    }
}

/// `text` with every URL in it redacted, should an error quote one.
fn scrub(text: &str) -> String {
    text.split(' ')
        .map(|word| {
            if word.contains("://") {
                redact(word)
            } else {
                word.to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(exchange: &str) -> Config {
        let mut config = Config::default();
        config.exchange_name = exchange.into();
        config
    }

    #[test]
    fn queue_names_are_classified_by_the_naming_rules() {
        let c = config("shop");
        let role = |name: &str| classify(&c, name);
        assert_eq!(
            role("shop.billing"),
            Some(("billing".into(), QueueRole::Group))
        );
        assert_eq!(
            role("shop.billing.dlq"),
            Some(("billing".into(), QueueRole::Dlq))
        );
        assert_eq!(
            role("shop.billing.retry.2"),
            Some(("billing".into(), QueueRole::Retry(2)))
        );
        assert_eq!(
            role("shop.billing.delay.2"),
            Some(("billing".into(), QueueRole::Delay(2)))
        );
        assert_eq!(
            role("shop.billing.unhandled"),
            Some(("billing".into(), QueueRole::Unhandled))
        );
        assert_eq!(redeliver_group(&c, "shop.a.b.redeliver"), Some("a.b"));
        assert_eq!(redeliver_group(&c, "shop.redeliver"), None);
        assert_eq!(redeliver_group(&c, "shop_dlq"), None);
        assert_eq!(
            role("shop.a.b.retry.x"),
            Some(("a.b.retry.x".into(), QueueRole::Group))
        );
        assert_eq!(role("shop."), None);
        assert_eq!(role("shopping.billing"), None);
        assert_eq!(role("other.billing"), None);
        // Within a group: the queue, its delay queues in order, its DLQ.
        let mut roles = vec![
            QueueRole::Dlq,
            QueueRole::Unhandled,
            QueueRole::Delay(2),
            QueueRole::Group,
            QueueRole::Delay(1),
        ];
        roles.sort();
        assert_eq!(
            roles,
            [
                QueueRole::Group,
                QueueRole::Delay(1),
                QueueRole::Delay(2),
                QueueRole::Unhandled,
                QueueRole::Dlq
            ]
        );
    }

    #[test]
    fn the_dead_letter_exchange_is_listed_once() {
        let mut c = config("shop");
        assert_eq!(
            exchange_names(&c)
                .into_iter()
                .map(|(n, _)| n)
                .collect::<Vec<_>>(),
            ["shop", "shop_dlq"]
        );
        c.dlq_exchange_suffix = String::new();
        assert_eq!(exchange_names(&c).len(), 1);
    }

    #[test]
    fn depths_and_urls_read_well_and_hide_passwords() {
        assert_eq!(depth(1, 0), "1 message");
        assert_eq!(depth(0, 2), "2 consumers");
        assert_eq!(depth(3, 1), "3 messages, 1 consumer");
        assert_eq!(
            scrub("cannot reach \"amqp://bob:s3cret@rabbit/\" now"),
            "cannot reach \"amqp://bob:***@rabbit/\" now"
        );
        assert_eq!(redact("http://rabbit:15672"), "http://rabbit:15672");
    }
}
