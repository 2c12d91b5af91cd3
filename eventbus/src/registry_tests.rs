//! Registry assembly: groups, instances, and every conflict reported at once.

use serde::{Deserialize, Serialize};

use super::{Additions, Discovered, ManualHandler, Registry};
use crate::handler::Invoke;
use crate::registration::{EventRegistration, Projection};
use crate::{AnyEnvelope, DomainEvent, Envelope, HandlerError, handles, projection};

#[derive(Debug, Clone, Serialize, Deserialize, DomainEvent)]
#[event(aggregate = "Order")]
struct OrderPlaced {}

mod other {
    use serde::{Deserialize, Serialize};

    /// Claims the same event type name as the outer `OrderPlaced`.
    #[derive(Debug, Clone, Serialize, Deserialize, crate::DomainEvent)]
    #[event(aggregate = "Order")]
    pub(super) struct OrderPlaced {}
}

#[derive(Default)]
struct Grouped;

#[projection(group = "reports")]
impl Grouped {
    #[handles(OrderPlaced)]
    async fn on_placed(&self, _event: &Envelope<OrderPlaced>) -> Result<(), HandlerError> {
        Ok(())
    }
}

struct NeedsInstance {
    _pool: u8,
}

#[projection]
impl NeedsInstance {
    #[handles(OrderPlaced)]
    async fn on_placed(&self, _event: &Envelope<OrderPlaced>) -> Result<(), HandlerError> {
        Ok(())
    }
}

fn manual(name: &str, group: Option<&str>) -> ManualHandler {
    ManualHandler {
        name: name.to_owned(),
        group: group.map(str::to_owned),
        event: None,
        invoke: Invoke::any(|_: AnyEnvelope| async { Ok::<_, HandlerError>(()) }),
    }
}

fn discovered() -> Discovered {
    Discovered {
        events: vec![EventRegistration::of::<OrderPlaced>()],
        projections: vec![Grouped::registration(), NeedsInstance::registration()],
        functions: Vec::new(),
    }
}

#[test]
fn entries_get_their_groups_and_supplied_instances() {
    let additions = Additions {
        projections: vec![(
            NeedsInstance::registration(),
            std::sync::Arc::new(NeedsInstance { _pool: 1 }),
        )],
        handlers: vec![manual("audit", Some("audit")), manual("log", None)],
        ..Additions::default()
    };
    let registry = Registry::assemble(&discovered(), additions, "main").expect("assembles");
    let mut got: Vec<(String, String)> = registry
        .entries
        .iter()
        .map(|e| (e.name.to_string(), e.group.to_string()))
        .collect();
    got.sort();
    let name = |t: &str| format!("{}::{t}::on_placed", module_path!());
    let mut want = vec![
        ("audit".to_owned(), "audit".to_owned()),
        ("log".to_owned(), "main".to_owned()),
        (name("Grouped"), "reports".to_owned()),
        (name("NeedsInstance"), "main".to_owned()),
    ];
    want.sort();
    assert_eq!(got, want);
    assert_eq!(
        registry.event_types.names().collect::<Vec<_>>(),
        ["OrderPlaced"]
    );
}

#[test]
fn every_conflict_is_listed_at_once() {
    let additions = Additions {
        events: vec![EventRegistration::of::<other::OrderPlaced>()],
        projections: vec![
            (Grouped::registration(), std::sync::Arc::new(Grouped)),
            (Grouped::registration(), std::sync::Arc::new(Grouped)),
        ],
        handlers: vec![manual("twice", None), manual("twice", Some("x"))],
    };
    let err = Registry::assemble(&discovered(), additions, "main").expect_err("conflicts");
    let text = err.to_string();
    assert_eq!(err.conflicts.len(), 4, "{text}");
    assert!(
        text.contains("event type `OrderPlaced` is claimed by both"),
        "{text}"
    );
    assert!(text.contains("other::OrderPlaced"), "{text}");
    assert!(text.contains("was supplied twice"), "{text}");
    assert!(
        text.contains("handler `twice` is registered 2 times"),
        "{text}"
    );
    assert!(
        text.contains("NeedsInstance` (#[projection] at eventbus/src/registry_tests.rs:")
            && text.contains("does not implement `Default`")
            && text.contains("Bus::from_env().projection(instance)"),
        "{text}"
    );
    let mut sorted = err.conflicts.clone();
    sorted.sort();
    assert_eq!(sorted, err.conflicts, "sorted for a stable report");
}

#[test]
fn a_linked_crate_that_registered_nothing_is_named() {
    use crate::registration::HandlerCrate;
    let found = discovered();
    // This crate's items are under `eventbus::`; `shop_core` registered nothing.
    let linked = [
        HandlerCrate::__new("eventbus::registry"),
        HandlerCrate::__new("shop_core"),
        // A prefix of a crate name is not that crate.
        HandlerCrate::__new("event"),
    ];
    assert_eq!(found.missing(&linked), ["shop_core", "event"]);
    assert_eq!(linked[0].name(), "eventbus");
    assert!(Discovered::default().missing(&linked[..1]) == ["eventbus"]);
}
