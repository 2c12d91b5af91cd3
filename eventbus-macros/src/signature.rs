//! Checks a handler's signature, syntactically; the generated glue lets the
//! type checker catch the rest, with spans on the user's own tokens.

use proc_macro2::Span;
use quote::ToTokens;
use syn::spanned::Spanned;
use syn::{FnArg, GenericArgument, PathArguments, ReturnType, Signature, Type};

use crate::attr::{Errors, Target};

/// What the glue needs from a checked signature.
pub(crate) struct Checked {
    /// Span of the event parameter's type, for type errors.
    pub(crate) param_span: Span,
    /// Span of the return type, for type errors.
    pub(crate) output_span: Span,
}

fn example(target: &Target, receiver: bool) -> String {
    let param = match target {
        Target::Event(ty) => format!("event: &Envelope<{}>", ty.to_token_stream()),
        Target::All(_) => "event: &AnyEnvelope".to_owned(),
    };
    let receiver = if receiver { "&self, " } else { "" };
    format!("async fn handler({receiver}{param}) -> Result<(), HandlerError>")
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

/// Checks `sig` for a handler of `target`; `method` is true inside `#[projection]`.
pub(crate) fn check(sig: &Signature, target: &Target, method: bool, errors: &mut Errors) -> Option<Checked> {
    let mut ok = true;
    if sig.asyncness.is_none() {
        ok = false;
        errors.spanned(
            sig.fn_token,
            format!(
                "`#[handles]` handlers must be `async fn`; write `{}`",
                example(target, method)
            ),
        );
    }
    if !sig.generics.params.is_empty() {
        ok = false;
        errors.spanned(
            &sig.generics,
            "`#[handles]` handlers cannot be generic: the event type is fixed by `#[handles(...)]`",
        );
    }
    let mut inputs = sig.inputs.iter();
    if method {
        match inputs.next() {
            Some(FnArg::Receiver(r)) if r.reference.is_some() && r.mutability.is_none() && r.colon_token.is_none() => {}
            Some(FnArg::Receiver(r)) => {
                ok = false;
                errors.spanned(
                    r,
                    "expected `&self`: a projection is shared by concurrent deliveries, so handlers take `&self`; keep mutable state behind a `Mutex` or atomics",
                );
            }
            _ => {
                errors.spanned(
                    &sig.ident,
                    format!(
                        "a `#[handles]` method takes `&self` and the event; write `{}`",
                        example(target, true)
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
            errors.spanned(
                &sig.inputs,
                format!(
                    "a `#[handles]` handler takes exactly one event parameter; write `{}`",
                    example(target, method)
                ),
            );
            return None;
        }
    };
    let expected = match target {
        Target::Event(_) => "Envelope",
        Target::All(_) => "AnyEnvelope",
    };
    match referenced_path(&param.ty) {
        Some((name, arg)) if name == expected && (arg.is_some() == matches!(target, Target::Event(_))) => {}
        _ => {
            ok = false;
            let wanted = match target {
                Target::Event(ty) => format!("&Envelope<{}>", ty.to_token_stream()),
                Target::All(_) => "&AnyEnvelope".to_owned(),
            };
            errors.spanned(
                &param.ty,
                format!(
                    "expected `{wanted}`: the handler receives the event inside its envelope, by reference"
                ),
            );
        }
    }
    let output_span = match &sig.output {
        ReturnType::Type(_, ty) => ty.span(),
        ReturnType::Default => {
            ok = false;
            errors.spanned(
                &sig.ident,
                "`#[handles]` handlers return `Result<(), E>` where `E` converts into `HandlerError`; add `-> Result<(), HandlerError>`",
            );
            sig.ident.span()
        }
    };
    ok.then(|| Checked {
        param_span: param.ty.span(),
        output_span,
    })
}
