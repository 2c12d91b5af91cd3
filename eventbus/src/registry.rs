//! The registry: what the macros registered and the builder added, assembled
//! into event types and handler entries, with every conflict reported at once.
//!
//! inventory's order is unspecified, so everything is sorted: startup is
//! deterministic.

use std::any::TypeId;
use std::collections::BTreeMap;
use std::sync::Arc;

use crate::envelope::AnyEnvelope;
use crate::error::{DecodeError, RegistryError};
use crate::handler::{HandlerEntry, Instance, Invoke};
use crate::registration::{
    EventRegistration, FunctionRegistration, HandlerCrate, ProjectionRegistration,
    ProjectionSubmission,
};

/// Event types by name: how a consumer finds the decoder for a message.
#[derive(Debug, Clone, Default)]
pub struct EventTypes {
    by_name: BTreeMap<&'static str, EventRegistration>,
}

impl EventTypes {
    /// The registration for `event_type`.
    pub fn get(&self, event_type: &str) -> Option<&EventRegistration> {
        self.by_name.get(event_type)
    }

    /// Every registered name, sorted.
    pub fn names(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.by_name.keys().copied()
    }

    /// How many event types are registered.
    pub fn len(&self) -> usize {
        self.by_name.len()
    }

    /// Is nothing registered?
    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }

    /// Is exactly this type registered under its name?
    pub(crate) fn contains(&self, reg: &EventRegistration) -> bool {
        self.by_name
            .get(reg.event_type)
            .is_some_and(|existing| existing.same_type(reg))
    }

    /// Adds one; a second, different type under the same name is a conflict.
    pub(crate) fn insert(&mut self, reg: EventRegistration, conflicts: &mut Vec<String>) {
        match self.by_name.get(reg.event_type) {
            Some(existing) if existing.same_type(&reg) => {}
            Some(existing) => conflicts.push(format!(
                "event type `{}` is claimed by both `{}` and `{}`; rename one with #[event(name = \"...\")]",
                reg.event_type,
                (existing.rust_type)(),
                (reg.rust_type)()
            )),
            None => {
                self.by_name.insert(reg.event_type, reg);
            }
        }
    }

    /// Decodes a message body, picking the type from `event_type`.
    pub fn decode(&self, event_type: &str, body: &[u8]) -> Result<AnyEnvelope, DecodeError> {
        let reg = self
            .get(event_type)
            .ok_or_else(|| DecodeError::UnknownEventType {
                event_type: event_type.to_owned(),
                known: self.names().collect::<Vec<_>>().join(", "),
            })?;
        reg.decode(body)
    }
}

/// Everything linked into the binary, sorted and checked.
#[derive(Debug, Default)]
pub(crate) struct Discovered {
    pub(crate) events: Vec<EventRegistration>,
    pub(crate) projections: Vec<&'static ProjectionRegistration>,
    pub(crate) functions: Vec<&'static FunctionRegistration>,
}

impl Discovered {
    /// Collects what the macros submitted; sorted so startup is deterministic.
    pub(crate) fn from_inventory() -> Self {
        let mut events: Vec<_> = inventory::iter::<EventRegistration>().copied().collect();
        events.sort_by_key(|e| (e.event_type, (e.rust_type)()));
        let mut projections: Vec<_> = inventory::iter::<ProjectionSubmission>()
            .map(|p| p.0)
            .collect();
        projections.sort_by_key(|p| p.name);
        let mut functions: Vec<_> = inventory::iter::<FunctionRegistration>().collect();
        functions.sort_by_key(|f| f.name);
        Self {
            events,
            projections,
            functions,
        }
    }

    /// The crates of `linked` that contributed nothing (their names).
    pub(crate) fn missing(&self, linked: &[HandlerCrate]) -> Vec<&'static str> {
        linked
            .iter()
            .filter(|krate| {
                !(self.events.iter().any(|e| krate.owns((e.rust_type)()))
                    || self.projections.iter().any(|p| krate.owns(p.name))
                    || self.functions.iter().any(|f| krate.owns(f.name)))
            })
            .map(HandlerCrate::name)
            .collect()
    }
}

/// A handler given to the builder by hand.
pub(crate) struct ManualHandler {
    pub(crate) name: String,
    /// `None`: the default group.
    pub(crate) group: Option<String>,
    pub(crate) event: Option<EventRegistration>,
    pub(crate) invoke: Invoke,
}

/// What a builder gathered besides link-time discovery.
#[derive(Default)]
pub(crate) struct Additions {
    pub(crate) events: Vec<EventRegistration>,
    /// Instances supplied in code; they win over discovered defaults.
    pub(crate) projections: Vec<(&'static ProjectionRegistration, Instance)>,
    pub(crate) handlers: Vec<ManualHandler>,
}

/// The assembled registry: every event type and every handler, conflict-free.
#[derive(Debug)]
pub(crate) struct Registry {
    pub(crate) event_types: EventTypes,
    pub(crate) entries: Vec<HandlerEntry>,
}

impl Registry {
    /// Assembles what was discovered and added; handlers without a group go
    /// to `default_group`. Every conflict is listed in the error.
    pub(crate) fn assemble(
        discovered: &Discovered,
        additions: Additions,
        default_group: &str,
    ) -> Result<Self, RegistryError> {
        let mut conflicts = Vec::new();
        let mut event_types = EventTypes::default();
        for reg in discovered.events.iter().chain(&additions.events) {
            event_types.insert(*reg, &mut conflicts);
        }

        // Projections: discovered ones, plus instances supplied here (which win).
        let mut projections: BTreeMap<
            &'static str,
            (&'static ProjectionRegistration, Option<Instance>),
        > = BTreeMap::new();
        for reg in &discovered.projections {
            projections.insert(reg.name, (reg, None));
        }
        let mut supplied: BTreeMap<TypeId, &'static str> = BTreeMap::new();
        for (reg, instance) in additions.projections {
            if let Some(first) = supplied.insert((reg.type_id)(), reg.name) {
                conflicts.push(format!(
                    "projection `{first}` was supplied twice to the builder; pass one instance"
                ));
            }
            projections.insert(reg.name, (reg, Some(instance)));
        }

        let mut entries = Vec::new();
        for (name, (reg, instance)) in projections {
            match instance.or_else(reg.default_instance) {
                Some(instance) => {
                    entries.extend(HandlerEntry::of_projection(reg, &instance, default_group))
                }
                None => conflicts.push(format!(
                    "projection `{name}` (#[projection] at {}) does not implement `Default`; \
                     supply an instance with `Bus::from_env().projection(instance)` (which keeps \
                     the EVENTBUS_* settings), or derive/implement `Default`",
                    reg.location
                )),
            }
        }
        entries.extend(
            discovered
                .functions
                .iter()
                .map(|f| HandlerEntry::of_function(f, default_group)),
        );
        entries.extend(additions.handlers.into_iter().map(|h| {
            HandlerEntry::new(
                h.name,
                h.group.as_deref().unwrap_or(default_group),
                h.event,
                h.invoke,
            )
        }));

        let mut names: BTreeMap<Arc<str>, usize> = BTreeMap::new();
        for entry in &entries {
            *names.entry(entry.name.clone()).or_default() += 1;
            if let Some(event) = entry.event {
                event_types.insert(event, &mut conflicts);
            }
        }
        for (name, count) in names.into_iter().filter(|(_, n)| *n > 1) {
            conflicts.push(format!(
                "handler `{name}` is registered {count} times; give each handler its own name"
            ));
        }
        conflicts.sort();
        conflicts.dedup();
        if conflicts.is_empty() {
            Ok(Self {
                event_types,
                entries,
            })
        } else {
            Err(RegistryError { conflicts })
        }
    }
}

#[cfg(test)]
#[path = "registry_tests.rs"]
mod tests;
