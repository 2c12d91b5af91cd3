//! `eventbus topology unbind`: bindings of a group's queue that no member of
//! the group handles any more (a deploy removed the handler), shown, and
//! removed after asking. Never automatic: a stale binding fills the queue with
//! events nobody takes (each is handed between the members, then
//! dead-lettered as handled by no member), but only a person knows what every
//! member of the group, eventbus or eventsource-py, still handles.

use std::collections::BTreeSet;

use eventbus::Config;
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use serde::Serialize;

use super::amqp::Broker;
use super::{Binding, FoundBy, discover, mode_line};
use crate::table::{Table, one_line};
use crate::{Failure, TopologyTarget, confirm, print_json};

/// What `unbind` reports.
#[derive(Serialize)]
struct Report<'a> {
    exchange: &'a str,
    groups: &'a [String],
    keep: &'a [String],
    /// Bindings removed (or, unconfirmed, none).
    unbound: Vec<&'a Binding>,
    /// Bindings of the groups' queues that stay.
    kept: Vec<&'a Binding>,
}

/// The key a binding routes: its routing key, or for a headers binding
/// `{aggregate_type}.{event_type}` from its arguments (eventbus's headers
/// bindings), else its routing key as it is (empty for fanout and for a
/// headers binding that takes everything).
fn binding_key(binding: &Binding) -> String {
    if !binding.routing_key.is_empty() {
        return binding.routing_key.clone();
    }
    let arg = |name: &str| binding.arguments.get(name).and_then(|v| v.as_str());
    match (arg("aggregate_type"), arg("event_type")) {
        (Some(aggregate), Some(event)) => format!("{aggregate}.{event}"),
        _ => String::new(),
    }
}

/// The binding's arguments as the broker has them, for an exact unbind.
fn field_table(arguments: &serde_json::Map<String, serde_json::Value>) -> FieldTable {
    let mut table = FieldTable::default();
    for (key, value) in arguments {
        let value = match value {
            serde_json::Value::String(s) => AMQPValue::LongString(LongString::from(s.as_str())),
            serde_json::Value::Bool(b) => AMQPValue::Boolean(*b),
            serde_json::Value::Number(n) => match n.as_i64() {
                Some(i) => AMQPValue::LongLongInt(i),
                None => AMQPValue::Double(n.as_f64().unwrap_or_default()),
            },
            // Not what eventbus or eventsource-py bind with; compared as text.
            other => AMQPValue::LongString(LongString::from(other.to_string())),
        };
        table.insert(ShortString::from(key.as_str()), value);
    }
    table
}

/// `eventbus topology unbind`.
pub(crate) async fn unbind(
    config: &Config,
    target: &TopologyTarget,
    keep: &[String],
    yes: bool,
    json: bool,
) -> Result<(), Failure> {
    let mut broker = Broker::connect(config).await?;
    let result = unbind_with(config, &mut broker, target, keep, yes, json).await;
    broker.close().await;
    result
}

async fn unbind_with(
    config: &Config,
    broker: &mut Broker,
    target: &TopologyTarget,
    keep: &[String],
    yes: bool,
    json: bool,
) -> Result<(), Failure> {
    let topology = discover(config, broker, target).await?;
    let Some(bindings) = &topology.bindings else {
        let why = match &topology.found_by {
            FoundBy::Amqp {
                management_error, ..
            } => management_error.clone(),
            FoundBy::Management { .. } => "no bindings listed".to_owned(),
        };
        return Err(Failure::Error(format!(
            "listing bindings needs the management API \
             (rabbitmq-plugins enable rabbitmq_management; --management-url): {why}"
        )));
    };
    let mut groups: Vec<String> = Vec::new();
    for g in &target.groups {
        if !groups.contains(g) {
            groups.push(g.clone());
        }
    }
    if groups.is_empty() {
        groups.push(config.consumer_group.clone());
    }
    let queues: BTreeSet<String> = groups.iter().map(|g| config.group_queue_name(g)).collect();
    let keep_keys: BTreeSet<&str> = keep.iter().map(String::as_str).collect();
    let (stale, kept): (Vec<&Binding>, Vec<&Binding>) = bindings
        .iter()
        .filter(|b| {
            b.source == config.exchange_name
                && b.destination_type == "queue"
                && queues.contains(&b.destination)
        })
        .partition(|b| !keep_keys.contains(binding_key(b).as_str()));

    let mut plan = vec![mode_line(&topology.found_by)];
    let mut table = Table::new(&["", "QUEUE", "ROUTING KEY", "ARGUMENTS"]);
    for (what, list) in [("unbind", &stale), ("keep", &kept)] {
        for b in list.iter() {
            table.row(vec![
                what.into(),
                b.destination.clone(),
                one_line(&b.routing_key),
                if b.arguments.is_empty() {
                    String::new()
                } else {
                    serde_json::Value::Object(b.arguments.clone()).to_string()
                },
            ]);
        }
    }
    if table.is_empty() {
        plan.push(format!(
            "no bindings from exchange {} to the queue(s) of group(s) {}",
            config.exchange_name,
            groups.join(", ")
        ));
    } else {
        plan.push(table.render());
    }
    if stale.is_empty() {
        plan.push("nothing to unbind".to_owned());
    }
    // The plan is for a person: beside --json it goes to stderr.
    if json {
        eprintln!("{}", plan.join("\n"));
    } else {
        println!("{}", plan.join("\n"));
    }
    let mut report = Report {
        exchange: &config.exchange_name,
        groups: &groups,
        keep,
        unbound: Vec::new(),
        kept,
    };
    if stale.is_empty() {
        return if json { print_json(&report) } else { Ok(()) };
    }
    confirm(
        &format!(
            "unbind {} binding(s) from exchange {}? Events of {} then no longer reach group(s) {}",
            stale.len(),
            config.exchange_name,
            stale
                .iter()
                .map(|b| binding_key(b))
                .collect::<BTreeSet<_>>()
                .into_iter()
                .map(|k| if k.is_empty() { "every key".into() } else { k })
                .collect::<Vec<_>>()
                .join(", "),
            groups.join(", ")
        ),
        yes,
    )?;
    for b in stale {
        broker
            .unbind(
                &b.destination,
                &b.source,
                &b.routing_key,
                field_table(&b.arguments),
            )
            .await?;
        report.unbound.push(b);
    }
    if json {
        print_json(&report)
    } else {
        println!("unbound {} binding(s)", report.unbound.len());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn binding(key: &str, arguments: serde_json::Value) -> Binding {
        Binding {
            source: "shop".into(),
            destination: "shop.billing".into(),
            destination_type: "queue".into(),
            routing_key: key.into(),
            arguments: arguments.as_object().cloned().unwrap_or_default(),
        }
    }

    #[test]
    fn a_binding_is_known_by_its_key_or_its_headers() {
        let none = serde_json::json!({});
        assert_eq!(
            binding_key(&binding("Order.OrderPlaced", none.clone())),
            "Order.OrderPlaced"
        );
        assert_eq!(binding_key(&binding("#", none.clone())), "#");
        assert_eq!(binding_key(&binding("", none)), "");
        let headers = serde_json::json!({
            "x-match": "all", "event_type": "OrderShipped", "aggregate_type": "Order"
        });
        assert_eq!(
            binding_key(&binding("", headers.clone())),
            "Order.OrderShipped"
        );
        let table = field_table(headers.as_object().expect("object"));
        assert_eq!(
            table.inner().get("x-match"),
            Some(&AMQPValue::LongString("all".into()))
        );
        assert_eq!(table.inner().len(), 3);
    }
}
