//! Link-time registrations that conflict: startup fails listing every conflict.
//! (Its own test binary: these registrations would break every other test.)

use eventbus::{Bus, DomainEvent, Envelope, Error, HandlerError, handles, projection};
use serde::{Deserialize, Serialize};

mod billing {
    use super::*;
    #[derive(Debug, Clone, Serialize, Deserialize, DomainEvent)]
    #[event(aggregate = "Invoice", name = "Issued")]
    pub(crate) struct InvoiceIssued {
        pub(crate) amount: u64,
    }
}

mod shipping {
    use super::*;
    #[derive(Debug, Clone, Serialize, Deserialize, DomainEvent)]
    #[event(aggregate = "Parcel", name = "Issued")]
    pub(crate) struct LabelIssued {
        pub(crate) label: String,
    }
}

/// Holds something without `Default`: must be supplied to the builder.
struct NeedsPool {
    pool: std::net::SocketAddr,
}

#[projection]
impl NeedsPool {
    #[handles(billing::InvoiceIssued)]
    async fn on_issued(
        &self,
        event: &Envelope<billing::InvoiceIssued>,
    ) -> Result<(), HandlerError> {
        let _ = (self.pool, event.amount);
        Ok(())
    }
}

#[tokio::test]
async fn startup_lists_every_conflict() {
    let err = Bus::builder()
        .memory()
        .build()
        .await
        .expect_err("conflicts");
    let Error::Registry(registry) = &err else {
        panic!("expected a registry error, got {err}");
    };
    let text = err.to_string();
    assert_eq!(registry.conflicts.len(), 2, "{text}");
    assert!(
        text.contains("event type `Issued` is claimed by both"),
        "{text}"
    );
    assert!(
        text.contains("InvoiceIssued") && text.contains("LabelIssued"),
        "{text}"
    );
    assert!(text.contains("#[event(name = \"...\")]"), "{text}");
    assert!(
        text.contains("projection `registry_conflicts::NeedsPool` (#[projection] at tests/registry_conflicts.rs:31)")
            && text.contains("does not implement `Default`")
            && text.contains("Bus::from_env().projection(instance)"),
        "{text}"
    );
}

#[tokio::test]
async fn supplying_the_instance_resolves_the_projection_conflict() {
    let err = Bus::builder()
        .memory()
        .projection(NeedsPool {
            pool: "127.0.0.1:5432".parse().expect("addr"),
        })
        .build()
        .await
        .expect_err("the name conflict remains");
    let text = err.to_string();
    assert!(text.contains("1 conflict(s)"), "{text}");
    assert!(!text.contains("NeedsPool"), "{text}");
    let _ = shipping::LabelIssued {
        label: String::new(),
    }
    .label;
}
