//! `#[projection]` on an impl block: parse signatures (never bodies), check, expand.

use std::collections::BTreeMap;

use proc_macro2::TokenStream;
use quote::{ToTokens, format_ident, quote};
use syn::spanned::Spanned;
use syn::{ImplItem, ItemImpl, LitStr, Type};

use crate::attr::{self, Errors, HandlesArgs, ProjectionArgs, Target};
use crate::handler::{self, Glue};
use crate::signature;

struct Handler {
    method: syn::Ident,
    target: Target,
    checked: signature::Checked,
}

pub(crate) fn expand(args: TokenStream, input: TokenStream) -> TokenStream {
    let mut errors = Errors::default();
    let args = ProjectionArgs::parse(args, &mut errors);
    let mut item = match syn::parse2::<ItemImpl>(input.clone()) {
        Ok(item) => item,
        Err(_) => {
            let err = syn::Error::new(
                proc_macro2::Span::call_site(),
                "`#[projection]` goes on an inherent impl block: `#[projection] impl MyProjection { ... }`",
            )
            .to_compile_error();
            return quote!(#err #input);
        }
    };
    if let Some((_, path, for_token)) = &item.trait_ {
        errors.spanned(
            quote!(#path #for_token),
            format!(
                "`#[projection]` goes on an inherent impl block, not a trait impl: write `#[projection] impl {} {{ ... }}` with the `#[handles]` methods in it",
                attr::type_text(&item.self_ty)
            ),
        );
    }
    if !item.generics.params.is_empty() {
        errors.spanned(
            &item.generics,
            "`#[projection]` does not support generic impl blocks: the registry needs one concrete type",
        );
    }
    if let Some(group) = &args.group {
        check_group(group, &mut errors);
    }

    let mut handlers: Vec<Handler> = Vec::new();
    let mut seen: BTreeMap<String, syn::Ident> = BTreeMap::new();
    for impl_item in &mut item.items {
        let ImplItem::Fn(method) = impl_item else {
            continue;
        };
        let mut found = Vec::new();
        method.attrs.retain(|a| {
            if is_handles(a.path()) {
                found.push(a.clone());
                false
            } else {
                true
            }
        });
        // Leave a checked marker in place of the first `#[handles]`: the user's import
        // (or path) stays in use, and the attribute expands to the method unchanged.
        if let Some(first) = found.first() {
            let path = first.path();
            method
                .attrs
                .push(syn::parse_quote!(#[#path(__eventbus_checked)]));
        }
        for extra in found.iter().skip(1) {
            errors.spanned(
                extra,
                "one `#[handles]` per method; write one method per event type, or take every event with `#[handles(all)]`",
            );
        }
        let Some(attr) = found.first() else {
            continue;
        };
        let tokens = match &attr.meta {
            syn::Meta::List(list) => list.tokens.clone(),
            _ => TokenStream::new(),
        };
        let Some(parsed) = HandlesArgs::parse(tokens, attr.to_token_stream(), true, &mut errors)
        else {
            continue;
        };
        if let Some(group) = &parsed.group {
            errors.spanned(
                group,
                format!(
                    "a method of a `#[projection]` cannot set its own group; remove it here and set it on the impl block: `#[projection(group = {})]`",
                    group.value.to_token_stream()
                ),
            );
        }
        if let Some(krate) = &parsed.krate {
            errors.spanned(
                krate,
                format!(
                    "a method of a `#[projection]` cannot set `crate`; remove it here and set it on the impl block: `#[projection(crate = \"{}\")]`",
                    krate.value.to_token_stream().to_string().replace(' ', "")
                ),
            );
        }
        let key = parsed.target.key();
        if let Some(first) = seen.get(&key) {
            errors.error(
                parsed.target.span(),
                format!(
                    "`{}` is already handled by `{first}` in this projection; handle each event type once per projection (merge the two methods, or move one to another projection)",
                    parsed.target.display()
                ),
            );
            continue;
        }
        seen.insert(key, method.sig.ident.clone());
        if let Some(checked) = signature::check(&method.sig, &parsed.target, true, &mut errors) {
            handlers.push(Handler {
                method: method.sig.ident.clone(),
                target: parsed.target,
                checked,
            });
        }
    }

    if !errors.is_empty() {
        // The user's impl, with our attributes stripped, keeps the rest compiling.
        let compile_errors = errors.to_compile_errors();
        return quote!(#compile_errors #item);
    }

    let krate = attr::crate_path(args.krate);
    let self_ty = &item.self_ty;
    let name = type_name(self_ty);
    let group = match &args.group {
        Some(g) => quote!(::core::option::Option::Some(#g)),
        None => quote!(::core::option::Option::None),
    };
    let private = quote!(#krate::__private);

    let support = if handlers
        .iter()
        .any(|h| matches!(h.target, Target::Event(_)))
    {
        handler::support(&krate)
    } else {
        TokenStream::new()
    };
    let mut consts = Vec::new();
    let mut glue_fns = Vec::new();
    let mut specs = Vec::new();
    for (index, handler) in handlers.iter().enumerate() {
        let method = &handler.method;
        let call_fn = format_ident!("__eventbus_call_{}", index);
        let method_name = LitStr::new(&method.to_string(), method.span());
        let glue = Glue::new(
            &krate,
            &handler.target,
            &handler.checked,
            Some(index),
            Some(self_ty),
        );
        consts.push(glue.event_const());
        let event_reg = glue.registration();
        let body = glue.body(&method_name, |event| quote!(Self::#method(this, #event)));
        glue_fns.push(quote! {
            #[doc(hidden)]
            fn #call_fn<'a>(
                this: &'a (dyn ::core::any::Any + ::core::marker::Send + ::core::marker::Sync),
                event: &'a #krate::AnyEnvelope,
            ) -> #private::HandlerFuture<'a> {
                ::std::boxed::Box::pin(async move {
                    let ::core::option::Option::Some(this) = #private::projection::<Self>(this) else {
                        return ::core::result::Result::Err(#private::misrouted(#method_name, #name, "another projection"));
                    };
                    #body
                })
            }
        });
        specs.push(quote! {
            #private::ProjectionHandler {
                method: #method_name,
                event: #event_reg,
                call: <#self_ty>::#call_fn,
            }
        });
    }

    // `file!()`/`line!()` spanned on the impl's type: the startup error names it.
    let location = quote::quote_spanned! {self_ty.span()=>
        ::core::concat!(::core::file!(), ":", ::core::line!())
    };
    quote! {
        #item

        #[doc(hidden)]
        const _: () = {
            #support

            #[automatically_derived]
            impl #self_ty {
                #(#consts)*
                #(#glue_fns)*

                #[doc(hidden)]
                fn __eventbus_default_instance() -> ::core::option::Option<
                    ::std::sync::Arc<dyn ::core::any::Any + ::core::marker::Send + ::core::marker::Sync>,
                > {
                    #[allow(unused_imports)]
                    use #private::{NoDefault as _, ViaDefault as _};
                    (&#private::MaybeDefault::<Self>(::core::marker::PhantomData)).instance()
                }
            }

            static __EVENTBUS_PROJECTION: #private::ProjectionRegistration = #private::ProjectionRegistration {
                name: ::core::concat!(::core::module_path!(), "::", #name),
                location: #location,
                group: #group,
                type_id: ::core::any::TypeId::of::<#self_ty>,
                handlers: &[#(#specs),*],
                default_instance: <#self_ty>::__eventbus_default_instance,
            };

            #private::inventory::submit! {
                #private::ProjectionSubmission(&__EVENTBUS_PROJECTION)
            }

            #[automatically_derived]
            impl #krate::Projection for #self_ty {
                fn registration() -> &'static #private::ProjectionRegistration {
                    &__EVENTBUS_PROJECTION
                }
            }
        };
    }
}

fn type_name(ty: &Type) -> LitStr {
    let text = match ty {
        Type::Path(p) => p
            .path
            .segments
            .iter()
            .map(|s| s.ident.to_string())
            .collect::<Vec<_>>()
            .join("::"),
        other => quote!(#other).to_string().replace(' ', ""),
    };
    LitStr::new(&text, ty.span())
}

pub(crate) fn check_group(group: &LitStr, errors: &mut Errors) {
    let value = group.value();
    if value.trim().is_empty() {
        errors.spanned(
            group,
            "the consumer group cannot be empty; name it, e.g. `group = \"billing\"`",
        );
    } else if value.contains(|c: char| c == '*' || c == '#' || c.is_whitespace()) {
        let fixed: String = value
            .split(|c: char| c == '*' || c == '#' || c.is_whitespace())
            .filter(|part| !part.is_empty())
            .collect::<Vec<_>>()
            .join("-");
        let fixed = fixed.trim_matches(['-', '.']);
        let example = if fixed.is_empty() { "billing" } else { fixed };
        errors.spanned(
            group,
            format!(
                "invalid consumer group `{value}`: it becomes part of a queue name, where spaces, `*` and `#` are not allowed; write e.g. `group = \"{example}\"`"
            ),
        );
    }
}

/// `handles`, `eventbus::handles`, `::eventbus::handles`, ...
fn is_handles(path: &syn::Path) -> bool {
    path.segments.last().is_some_and(|s| s.ident == "handles")
}
