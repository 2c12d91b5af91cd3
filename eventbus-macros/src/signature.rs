//! Checks a handler's signature, syntactically; the generated glue lets the
//! type checker catch the rest, with spans on the user's own tokens.

use proc_macro2::Span;
use syn::spanned::Spanned;
use syn::{FnArg, GenericArgument, PathArguments, ReturnType, Signature, Type};

use crate::attr::{Errors, Target, type_text};

/// What the glue needs from a checked signature.
pub(crate) struct Checked {
    /// `E` in the parameter `&Envelope<E>` (`None` for `&AnyEnvelope`): the
    /// glue checks it is the type named in `#[handles(...)]`.
    pub(crate) param_event: Option<Type>,
    /// Span of the return type, for type errors.
    pub(crate) output_span: Span,
}

/// The parameter a handler of `target` takes.
fn wanted_param(target: &Target) -> String {
    match target {
        Target::Event(ty) => format!("&Envelope<{}>", type_text(ty)),
        Target::All(_) => "&AnyEnvelope".to_owned(),
    }
}

/// The signature to write, with the user's function name.
fn example(sig: &Signature, target: &Target, receiver: bool) -> String {
    let receiver = if receiver { "&self, " } else { "" };
    format!(
        "async fn {}({receiver}event: {}) -> Result<(), HandlerError>",
        sig.ident,
        wanted_param(target)
    )
}

/// The last segment of a path type behind `&`, and its generic argument if any.
fn referenced_path(ty: &Type) -> Option<(String, Option<&Type>)> {
    let Type::Reference(reference) = ty else {
        return None;
    };
    if reference.mutability.is_some() {
        return None;
    }
    let Type::Path(path) = &*reference.elem else {
        return None;
    };
    let last = path.path.segments.last()?;
    let arg = match &last.arguments {
        PathArguments::AngleBracketed(args) if args.args.len() == 1 => match args.args.first() {
            Some(GenericArgument::Type(ty)) => Some(ty),
            _ => None,
        },
        _ => None,
    };
    Some((last.ident.to_string(), arg))
}

/// The `E` of `Envelope<E>` / `&mut Envelope<E>` / `Arc<Envelope<E>>`: the event a
/// wrongly written parameter was meant to take.
fn envelope_arg(ty: &Type) -> Option<&Type> {
    match ty {
        Type::Reference(r) => envelope_arg(&r.elem),
        Type::Path(p) => {
            let last = p.path.segments.last()?;
            let PathArguments::AngleBracketed(args) = &last.arguments else {
                return None;
            };
            let Some(GenericArgument::Type(inner)) = args.args.first() else {
                return None;
            };
            if last.ident == "Envelope" {
                Some(inner)
            } else {
                envelope_arg(inner)
            }
        }
        _ => None,
    }
}

/// Checks `sig` for a handler of `target`; `method` is true inside `#[projection]`.
pub(crate) fn check(
    sig: &Signature,
    target: &Target,
    method: bool,
    errors: &mut Errors,
) -> Option<Checked> {
    let mut ok = true;
    if sig.asyncness.is_none() {
        ok = false;
        errors.spanned(
            sig.fn_token,
            format!(
                "`#[handles]` handlers must be `async fn`; write `{}`",
                example(sig, target, method)
            ),
        );
    }
    if !sig.generics.params.is_empty() {
        ok = false;
        errors.spanned(
            &sig.generics,
            "`#[handles]` handlers cannot be generic: the event type is fixed by `#[handles(...)]`; remove the generic parameters",
        );
    }
    let mut inputs = sig.inputs.iter();
    if method {
        match inputs.next() {
            Some(FnArg::Receiver(r))
                if r.reference.is_some() && r.mutability.is_none() && r.colon_token.is_none() => {}
            Some(FnArg::Receiver(r)) => {
                ok = false;
                let found = quote::quote!(#r)
                    .to_string()
                    .replace("& ", "&")
                    .replace(" :", ":");
                errors.spanned(
                    r,
                    format!(
                        "expected `&self`, not `{found}`: a projection is shared by concurrent deliveries, so handlers take `&self`; keep mutable state behind a `Mutex` or atomics"
                    ),
                );
            }
            first => {
                let span = first.map_or_else(|| sig.paren_token.span.join(), Spanned::span);
                errors.error(
                    span,
                    format!(
                        "a `#[handles]` method takes `&self` first, then the event; write `{}`",
                        example(sig, target, true)
                    ),
                );
                return None;
            }
        }
    }
    let params: Vec<_> = inputs.collect();
    let param = match params.as_slice() {
        [FnArg::Typed(param)] => param,
        _ => {
            let message = format!(
                "a `#[handles]` handler takes exactly one event parameter; write `{}`",
                example(sig, target, method)
            );
            match params.as_slice() {
                [] => errors.error(sig.paren_token.span.join(), message),
                [first, .., last] => errors.push(syn::Error::new_spanned(
                    quote::quote!(#first #last),
                    message,
                )),
                [other] => errors.spanned(other, message),
            }
            return None;
        }
    };
    let expected = match target {
        Target::Event(_) => "Envelope",
        Target::All(_) => "AnyEnvelope",
    };
    let mut param_event = None;
    match referenced_path(&param.ty) {
        Some((name, Some(arg))) if name == expected && matches!(target, Target::Event(_)) => {
            param_event = Some(arg.clone());
        }
        Some((name, None)) if name == expected && matches!(target, Target::All(_)) => {}
        _ => {
            ok = false;
            let wanted = wanted_param(target);
            let message = match (target, envelope_arg(&param.ty)) {
                (Target::All(_), Some(event)) => format!(
                    "`#[handles(all)]` handlers take every event as `&AnyEnvelope`; write `event: &AnyEnvelope`, or handle only this event with `#[handles({})]`",
                    type_text(event)
                ),
                (Target::Event(ty), _)
                    if referenced_path(&param.ty).is_some_and(|(n, _)| n == "AnyEnvelope") =>
                {
                    format!(
                        "`#[handles({})]` handlers take `{wanted}`; write `event: {wanted}`, or take every event as `&AnyEnvelope` with `#[handles(all)]`",
                        type_text(ty)
                    )
                }
                _ => format!(
                    "expected `{wanted}`: the handler receives the event inside its envelope, by shared reference; write `{}: {wanted}`",
                    param_name(&param.pat)
                ),
            };
            errors.spanned(&param.ty, message);
        }
    }
    let output_span = match &sig.output {
        ReturnType::Type(_, ty) => ty.span(),
        ReturnType::Default => {
            ok = false;
            errors.error(
                sig.paren_token.span.close(),
                "`#[handles]` handlers return `Result<(), E>` where `E` converts into `HandlerError`; add `-> Result<(), HandlerError>`",
            );
            sig.ident.span()
        }
    };
    ok.then_some(Checked {
        param_event,
        output_span,
    })
}

fn param_name(pat: &syn::Pat) -> String {
    match pat {
        syn::Pat::Ident(ident) => ident.ident.to_string(),
        _ => "event".to_owned(),
    }
}
