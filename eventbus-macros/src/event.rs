//! `#[derive(DomainEvent)]`: parse, check, expand.

use proc_macro2::TokenStream;
use quote::{quote, quote_spanned};
use syn::{Data, DeriveInput, Fields, LitStr};

use crate::attr::{self, Errors, EventArgs};

/// Envelope fields: an event field of the same name would be written twice.
const ENVELOPE_FIELDS: &[&str] = &[
    "event_id",
    "event_type",
    "event_version",
    "occurred_at",
    "aggregate_id",
    "aggregate_type",
    "aggregate_version",
    "tenant_id",
    "actor_id",
    "correlation_id",
    "causation_id",
    "metadata",
];

pub(crate) fn expand(input: &DeriveInput) -> TokenStream {
    let mut errors = Errors::default();
    let ident = &input.ident;

    let mut args = EventArgs::default();
    for a in input.attrs.iter().filter(|a| a.path().is_ident("event")) {
        args.parse_attr(a, ident, &mut errors);
    }

    let mut shape_ok = true;
    match &input.data {
        Data::Struct(data) => match &data.fields {
            Fields::Named(fields) => {
                for field in &fields.named {
                    if let Some(name) = &field.ident {
                        let name = name.to_string();
                        if ENVELOPE_FIELDS.contains(&name.as_str()) {
                            errors.spanned(
                                field.ident.as_ref(),
                                format!(
                                    "field `{name}` clashes with the envelope field `{name}`; rename it (the envelope already carries it: read it with `envelope.meta().{name}()`)"
                                ),
                            );
                        }
                    }
                }
            }
            Fields::Unnamed(_) | Fields::Unit => {
                shape_ok = false;
                errors.spanned(
                    ident,
                    format!(
                        "`#[derive(DomainEvent)]` needs a struct with named fields, e.g. `struct {ident} {{ customer_id: String }}`"
                    ),
                );
            }
        },
        Data::Enum(data) => {
            shape_ok = false;
            errors.spanned(
                data.enum_token,
                "`#[derive(DomainEvent)]` needs a struct with named fields, not an enum; derive it on one struct per event type",
            );
        }
        Data::Union(data) => {
            shape_ok = false;
            errors.spanned(
                data.union_token,
                "`#[derive(DomainEvent)]` needs a struct with named fields, not a union",
            );
        }
    }
    if !input.generics.params.is_empty() {
        shape_ok = false;
        errors.spanned(
            &input.generics,
            "`#[derive(DomainEvent)]` does not support generic structs: each event type needs one fixed name and decoder",
        );
    }

    let name = args
        .name
        .clone()
        .unwrap_or_else(|| LitStr::new(&ident.to_string(), ident.span()));
    attr::check_routing_name(
        &name,
        "event type name",
        "name",
        &ident.to_string(),
        args.name.is_none(),
        &mut errors,
    );
    let aggregate = match &args.aggregate {
        Some(aggregate) => {
            attr::check_routing_name(
                aggregate,
                "aggregate type",
                "aggregate",
                "Order",
                false,
                &mut errors,
            );
            aggregate.clone()
        }
        None => {
            if !args.aggregate_given {
                errors.spanned(
                    ident,
                    format!(
                        "missing aggregate type: add `#[event(aggregate = \"...\")]` to `{ident}`, e.g. `#[event(aggregate = \"Order\")]`"
                    ),
                );
            }
            LitStr::new("Unknown", ident.span())
        }
    };
    let version: u32 = match &args.version {
        Some(lit) => match lit.base10_parse::<u32>() {
            Ok(0) => {
                errors.spanned(
                    lit,
                    "event versions start at 1: write `version = 1` (the default, so the key can go) or higher",
                );
                1
            }
            Ok(v) => v,
            Err(_) => {
                errors.spanned(lit, "`version` must be an integer from 1 to 4294967295 (a `u32`), e.g. `version = 2`");
                1
            }
        },
        None => 1,
    };

    if !shape_ok {
        return errors.to_compile_errors();
    }
    let krate = attr::crate_path(args.krate.clone());
    let routing_key = LitStr::new(
        &format!("{}.{}", aggregate.value(), name.value()),
        name.span(),
    );
    // Spanned on the struct's name: "implemented for `OrderPlaced`" hints point there.
    let impl_block = quote_spanned! {ident.span()=>
        #[automatically_derived]
        impl #krate::DomainEvent for #ident {
            const EVENT_TYPE: &'static str = #name;
            const AGGREGATE_TYPE: &'static str = #aggregate;
            const ROUTING_KEY: &'static str = #routing_key;
            const EVENT_VERSION: u32 = #version;
        }
    };
    if !errors.is_empty() {
        // A plausible impl keeps the rest of the crate compiling: one error, not twenty.
        let compile_errors = errors.to_compile_errors();
        return quote! {
            #compile_errors
            const _: () = { #impl_block };
        };
    }
    quote! {
        #[doc(hidden)]
        const _: () = {
            #impl_block
            #krate::__private::inventory::submit! {
                #krate::__private::EventRegistration::of::<#ident>()
            }
        };
    }
}
