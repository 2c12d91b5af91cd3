//! Binding derivation, per exchange type and setting.

use std::sync::Arc;

use lapin::types::AMQPValue;
use serde::{Deserialize, Serialize};

use super::{Binding, bindings};
use crate::config::{Config, ExchangeType};
use crate::dispatch::Dispatcher;
use crate::handler::{HandlerEntry, Invoke};
use crate::registration::EventRegistration;
use crate::registry::EventTypes;
use crate::{AnyEnvelope, DomainEvent, HandlerError};

#[derive(Debug, Clone, Serialize, Deserialize, DomainEvent)]
#[event(aggregate = "Order")]
struct OrderPlaced {}

#[derive(Debug, Clone, Serialize, Deserialize, DomainEvent)]
#[event(aggregate = "Order")]
struct OrderShipped {}

#[derive(Debug, Clone, Serialize, Deserialize, DomainEvent)]
#[event(aggregate = "Invoice")]
struct InvoiceIssued {}

fn entry(name: &str, event: Option<EventRegistration>) -> HandlerEntry {
    HandlerEntry::new(
        name,
        "g",
        event,
        Invoke::any(|_: AnyEnvelope| async { Ok::<_, HandlerError>(()) }),
    )
}

/// The bindings of group `g` with these handlers, every test type known.
fn derive(config: &Config, handlers: Vec<HandlerEntry>) -> Vec<Binding> {
    let dispatcher = Dispatcher::default();
    for h in handlers {
        dispatcher.add(h);
    }
    let mut types = EventTypes::default();
    let mut conflicts = Vec::new();
    for reg in [
        EventRegistration::of::<OrderPlaced>(),
        EventRegistration::of::<OrderShipped>(),
        EventRegistration::of::<InvoiceIssued>(),
    ] {
        types.insert(reg, &mut conflicts);
    }
    assert!(conflicts.is_empty(), "{conflicts:?}");
    let table = dispatcher.snapshot();
    bindings(config, &table.groups[&Arc::<str>::from("g")], &types)
}

fn keys(bindings: &[Binding]) -> Vec<&str> {
    bindings.iter().map(|b| b.routing_key.as_str()).collect()
}

fn config(exchange_type: ExchangeType) -> Config {
    Config {
        exchange_type,
        ..Config::default()
    }
}

fn typed() -> Vec<HandlerEntry> {
    vec![
        entry("a", Some(EventRegistration::of::<OrderShipped>())),
        entry("b", Some(EventRegistration::of::<OrderPlaced>())),
        // A second handler of the same event binds once.
        entry("c", Some(EventRegistration::of::<OrderPlaced>())),
    ]
}

#[test]
fn topic_and_direct_bind_each_handled_key_once_sorted_by_event() {
    for kind in [ExchangeType::Topic, ExchangeType::Direct] {
        let b = derive(&config(kind), typed());
        assert_eq!(
            keys(&b),
            ["Order.OrderPlaced", "Order.OrderShipped"],
            "{kind}"
        );
        assert!(b.iter().all(|b| b.arguments.inner().is_empty()));
    }
}

#[test]
fn a_wildcard_handler_binds_everything_on_topic() {
    let mut handlers = typed();
    handlers.push(entry("all", None));
    assert_eq!(keys(&derive(&config(ExchangeType::Topic), handlers)), ["#"]);
}

#[test]
fn a_wildcard_on_direct_binds_every_known_type() {
    let handlers = vec![entry("all", None)];
    assert_eq!(
        keys(&derive(&config(ExchangeType::Direct), handlers)),
        [
            "Invoice.InvoiceIssued",
            "Order.OrderPlaced",
            "Order.OrderShipped"
        ]
    );
}

#[test]
fn fanout_binds_the_empty_key_once() {
    assert_eq!(keys(&derive(&config(ExchangeType::Fanout), typed())), [""]);
    let mut handlers = typed();
    handlers.push(entry("all", None));
    assert_eq!(keys(&derive(&config(ExchangeType::Fanout), handlers)), [""]);
}

#[test]
fn headers_match_event_and_aggregate_type() {
    let b = derive(
        &config(ExchangeType::Headers),
        vec![entry("a", Some(EventRegistration::of::<OrderShipped>()))],
    );
    assert_eq!(b.len(), 1);
    let args = b[0].arguments.inner();
    let text = |k: &str| match args.get(k) {
        Some(AMQPValue::LongString(s)) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
        other => panic!("{k}: {other:?}"),
    };
    assert_eq!(text("x-match"), "all");
    assert_eq!(text("event_type"), "OrderShipped");
    assert_eq!(text("aggregate_type"), "Order");
    let wildcard = derive(&config(ExchangeType::Headers), vec![entry("all", None)]);
    assert_eq!(wildcard.len(), 1);
    assert_eq!(wildcard[0].arguments.inner().len(), 1, "only x-match");
}

#[test]
fn a_routing_key_pattern_replaces_the_derived_bindings() {
    let mut c = config(ExchangeType::Topic);
    c.routing_key_pattern = Some(" Order.* , ,Invoice.#".into());
    assert_eq!(keys(&derive(&c, typed())), ["Order.*", "Invoice.#"]);
    c.routing_key_pattern = Some(String::new());
    assert!(
        derive(&c, typed()).is_empty(),
        "an empty pattern binds nothing"
    );
}
