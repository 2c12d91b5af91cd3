//! Procedural macros of [eventbus](https://docs.rs/eventbus). Use them through
//! `eventbus`, which re-exports them; the generated code only names
//! `::eventbus::__private`, so no other dependency is needed.

use proc_macro::TokenStream;
use syn::parse_macro_input;

mod attr;
mod event;
mod handler;
mod projection;
mod signature;

/// Implements `eventbus::DomainEvent` and registers the event's decoder.
///
/// ```ignore
/// #[derive(Serialize, Deserialize, DomainEvent)]
/// #[event(aggregate = "Order", name = "OrderPlaced", version = 1)]
/// struct OrderPlaced { customer_id: String }
/// ```
///
/// Keys of `#[event(...)]`: `aggregate` (required), `name` (default: the
/// struct's name), `version` (default 1), `crate` (default `::eventbus`).
/// Expands to `impl DomainEvent` with the event type, aggregate type and
/// routing key `{aggregate}.{name}` as constants, plus an `inventory`
/// submission of an `EventRegistration`, inside `const _: () = { ... };`.
#[proc_macro_derive(DomainEvent, attributes(event))]
pub fn derive_domain_event(input: TokenStream) -> TokenStream {
    let input = parse_macro_input!(input as syn::DeriveInput);
    event::expand(&input).into()
}

/// Registers the `#[handles(E)]` methods of an impl block as event handlers.
///
/// ```ignore
/// #[projection(group = "reporting")]
/// impl Revenue {
///     #[handles(OrderPlaced)]
///     async fn on_placed(&self, event: &Envelope<OrderPlaced>) -> Result<(), HandlerError> { .. }
///     #[handles(all)]
///     async fn audit(&self, event: &AnyEnvelope) -> Result<(), HandlerError> { .. }
/// }
/// ```
///
/// Keys: `group` (the consumer group; default: the bus's `consumer_group`),
/// `crate`. Expands to the impl block with the `#[handles]` attributes
/// removed, one glue function per handler, `impl Projection` and an
/// `inventory` submission of a `ProjectionRegistration`. The projection is
/// built with `Default` unless an instance is supplied to the bus builder.
#[proc_macro_attribute]
pub fn projection(args: TokenStream, input: TokenStream) -> TokenStream {
    projection::expand(args.into(), input.into()).into()
}

/// Marks a handler: a method inside a `#[projection]` impl block, or a free
/// `async fn` (registered on its own).
///
/// ```ignore
/// #[handles(OrderShipped, group = "notifications")]
/// async fn notify(event: &Envelope<OrderShipped>) -> Result<(), HandlerError> { .. }
/// ```
#[proc_macro_attribute]
pub fn handles(args: TokenStream, input: TokenStream) -> TokenStream {
    handler::expand(args.into(), input.into()).into()
}
