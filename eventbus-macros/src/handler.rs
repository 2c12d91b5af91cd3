//! `#[handles(E)]` on a free `async fn`; on a method outside `#[projection]`, an error.

use proc_macro2::TokenStream;
use quote::{quote, quote_spanned};
use syn::spanned::Spanned;
use syn::{FnArg, ItemFn, LitStr};

use crate::attr::{self, Errors, HandlesArgs, Target};
use crate::projection::check_group;
use crate::signature;

pub(crate) fn expand(args: TokenStream, input: TokenStream) -> TokenStream {
    let mut errors = Errors::default();
    let function = match syn::parse2::<ItemFn>(input.clone()) {
        Ok(function) => function,
        Err(_) => {
            let err = syn::Error::new(
                proc_macro2::Span::call_site(),
                "`#[handles]` goes on an `async fn`, or on a method of a `#[projection]` impl block",
            )
            .to_compile_error();
            return quote!(#err #input);
        }
    };
    if let Some(FnArg::Receiver(receiver)) = function.sig.inputs.first() {
        let err = syn::Error::new(
            receiver.span(),
            "`#[handles]` on a method needs `#[projection]` on its impl block: `#[projection] impl MyProjection { ... }`",
        )
        .to_compile_error();
        return quote!(#err #function);
    }
    let args = match syn::parse2::<HandlesArgs>(args) {
        Ok(args) => args,
        Err(e) => {
            let err = e.to_compile_error();
            return quote!(#err #function);
        }
    };
    if let Some(group) = &args.group {
        check_group(group, &mut errors);
    }
    let checked = signature::check(&function.sig, &args.target, false, &mut errors);
    let Some(checked) = checked.filter(|_| errors.is_empty()) else {
        let compile_errors = errors.to_compile_errors();
        return quote!(#compile_errors #function);
    };

    let krate = attr::crate_path(args.krate);
    let private = quote!(#krate::__private);
    let ident = &function.sig.ident;
    let name = LitStr::new(&ident.to_string(), ident.span());
    let group = match &args.group {
        Some(g) => quote!(::core::option::Option::Some(#g)),
        None => quote!(::core::option::Option::None),
    };
    let (event_reg, downcast, expected) = match &args.target {
        Target::Event(ty) => (
            quote_spanned!(ty.span()=> ::core::option::Option::Some(#private::EventRegistration::of::<#ty>())),
            quote_spanned!(checked.param_span=> event.downcast_ref::<#ty>()),
            quote_spanned!(ty.span()=> <#ty as #krate::DomainEvent>::EVENT_TYPE),
        ),
        Target::All(_) => (
            quote!(::core::option::Option::None),
            quote!(::core::option::Option::Some(event)),
            quote!("any event"),
        ),
    };
    let call = quote_spanned!(checked.output_span=> #private::into_handler_result(#ident(event).await));
    quote! {
        #function

        #[doc(hidden)]
        const _: () = {
            fn __eventbus_call<'a>(event: &'a #krate::AnyEnvelope) -> #private::HandlerFuture<'a> {
                ::std::boxed::Box::pin(async move {
                    let ::core::option::Option::Some(event) = #downcast else {
                        return ::core::result::Result::Err(#private::misrouted(#name, #expected, event.meta().event_type()));
                    };
                    #call
                })
            }

            #private::inventory::submit! {
                #private::FunctionRegistration {
                    name: ::core::concat!(::core::module_path!(), "::", #name),
                    group: #group,
                    event: #event_reg,
                    call: __eventbus_call,
                }
            }
        };
    }
}
