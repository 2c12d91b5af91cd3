//! `#[handles(E)]` on a free `async fn`; on a method outside `#[projection]`, an error.
//! Also the glue both kinds of handler share.

use proc_macro2::{Span, TokenStream};
use quote::{ToTokens, format_ident, quote, quote_spanned};
use syn::ext::IdentExt;
use syn::spanned::Spanned;
use syn::{FnArg, ItemFn, LitStr, Type};

use crate::attr::{self, Errors, HandlesArgs, Target};
use crate::projection::check_group;
use crate::signature;

/// What `#[projection]` leaves on a method it already checked and registered.
const CHECKED: &str = "__eventbus_checked";

pub(crate) fn expand(args: TokenStream, input: TokenStream) -> TokenStream {
    if args.to_string() == CHECKED {
        return input;
    }
    let mut errors = Errors::default();
    let function = match syn::parse2::<ItemFn>(input.clone()) {
        Ok(function) => function,
        Err(_) => {
            let err = syn::Error::new(
                Span::call_site(),
                "`#[handles]` goes on an `async fn`, or on a method of a `#[projection]` impl block",
            )
            .to_compile_error();
            return quote!(#err #input);
        }
    };
    if let Some(FnArg::Receiver(_)) = function.sig.inputs.first() {
        // The attribute itself is the mistake: it needs `#[projection]` around it.
        let err = syn::Error::new(
            Span::call_site(),
            "`#[handles]` on a method needs `#[projection]` on its impl block: `#[projection] impl MyProjection { ... }`",
        )
        .to_compile_error();
        return quote!(#err #function);
    }
    let Some(args) = HandlesArgs::parse(args, TokenStream::new(), false, &mut errors) else {
        let compile_errors = errors.to_compile_errors();
        return quote!(#compile_errors #function);
    };
    if let Some(group) = &args.group {
        check_group(&group.value, &mut errors);
    }
    let checked = signature::check(&function.sig, &args.target, false, &mut errors);
    let Some(checked) = checked.filter(|_| errors.is_empty()) else {
        let compile_errors = errors.to_compile_errors();
        return quote!(#compile_errors #function);
    };

    let krate = attr::crate_path(args.krate.map(|k| k.value));
    let private = quote!(#krate::__private);
    let ident = &function.sig.ident;
    let name = LitStr::new(&ident.to_string(), ident.span());
    let group = match &args.group {
        Some(g) => {
            let g = &g.value;
            quote!(::core::option::Option::Some(#g))
        }
        None => quote!(::core::option::Option::None),
    };
    let glue = Glue::new(&krate, &args.target, &checked, None, None);
    let support = match &args.target {
        Target::Event(_) => support(&krate),
        Target::All(_) => TokenStream::new(),
    };
    let event_const = glue.event_const();
    let event_reg = glue.registration();
    let body = glue.body(&name, |event| quote!(#ident(#event)));
    // Named, not `const _`: that is also valid in an impl block, where a
    // `#[handles]` associated function without `self` ends up by mistake.
    let const_name = format_ident!(
        "__EVENTBUS_HANDLER_{}",
        ident.unraw().to_string().to_uppercase()
    );
    quote! {
        #function

        #[doc(hidden)]
        const #const_name: () = {
            #support
            #event_const

            fn __eventbus_call<'a>(event: &'a #krate::AnyEnvelope) -> #private::HandlerFuture<'a> {
                ::std::boxed::Box::pin(async move { #body })
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

/// The glue of one handler: recognise its event, call it, convert its result.
///
/// `E: DomainEvent` is required by a single expression, the one building the
/// handler's event constant, so a type that is not an event is reported once,
/// on the type named in `#[handles(...)]`.
pub(crate) struct Glue<'a> {
    krate: &'a TokenStream,
    target: &'a Target,
    checked: &'a signature::Checked,
    /// The handler's event constant.
    const_name: syn::Ident,
    /// The projection type, whose associated constant it is; `None`: a free constant.
    self_ty: Option<&'a Type>,
}

impl<'a> Glue<'a> {
    pub(crate) fn new(
        krate: &'a TokenStream,
        target: &'a Target,
        checked: &'a signature::Checked,
        index: Option<usize>,
        self_ty: Option<&'a Type>,
    ) -> Self {
        let const_name = match index {
            Some(index) => format_ident!("__EVENTBUS_EVENT_{}", index),
            None => format_ident!("__EVENTBUS_EVENT"),
        };
        Self {
            krate,
            target,
            checked,
            const_name,
            self_ty,
        }
    }

    /// `const NAME: __EventbusEvent<E> = ...;` for a typed handler; it requires
    /// [`support`] in scope.
    pub(crate) fn event_const(&self) -> TokenStream {
        let Target::Event(ty) = self.target else {
            return TokenStream::new();
        };
        let name = &self.const_name;
        let build = quote_spanned!(ty.span()=> handled_type_must_be_a_domain_event::<#ty>());
        quote! {
            #[doc(hidden)]
            const #name: __EventbusEvent<#ty> = #build;
        }
    }

    /// The `Option<EventRegistration>` of the handler.
    pub(crate) fn registration(&self) -> TokenStream {
        let name = &self.const_name;
        match (self.target, self.self_ty) {
            (Target::Event(_), Some(self_ty)) => {
                quote!(::core::option::Option::Some(<#self_ty>::#name.registration))
            }
            (Target::Event(_), None) => quote!(::core::option::Option::Some(#name.registration)),
            (Target::All(_), _) => quote!(::core::option::Option::None),
        }
    }

    /// The body of the glue's `async move` block; `event` is the `&'a AnyEnvelope`
    /// in scope; `call` builds the handler call from its argument.
    pub(crate) fn body(
        &self,
        name: &LitStr,
        call: impl FnOnce(TokenStream) -> TokenStream,
    ) -> TokenStream {
        let krate = self.krate;
        let private = quote!(#krate::__private);
        let name_const = &self.const_name;
        let event_path = match self.self_ty {
            Some(_) => quote!(Self::#name_const),
            None => quote!(#name_const),
        };
        let output_span = self.checked.output_span;
        let (downcast, argument) = match self.target {
            Target::Event(ty) => {
                let argument = match &self.checked.param_event {
                    // Written the same way: nothing to check (and no second
                    // "cannot find type" if it is misspelt in both places).
                    Some(param_event) if !same_tokens(param_event, ty) => {
                        quote_spanned! {param_event.span()=>
                            <#param_event as __EventbusHandles<#ty>>::__envelope(event)
                        }
                    }
                    _ => quote!(event),
                };
                let downcast = quote! {
                    let ::core::option::Option::Some(event) = (#event_path.downcast)(event) else {
                        return ::core::result::Result::Err(#private::misrouted(
                            #name,
                            #event_path.registration.event_type,
                            event.meta().event_type(),
                        ));
                    };
                };
                (downcast, argument)
            }
            Target::All(_) => (TokenStream::new(), quote!(event)),
        };
        let call = call(argument);
        let convert = attr::respan(quote!(#private::into_handler_result), output_span);
        let result = quote_spanned!(output_span=> __eventbus_result);
        quote! {
            #downcast
            let #result = #call.await;
            #convert(#result)
        }
    }
}

fn same_tokens(a: &Type, b: &Type) -> bool {
    a.to_token_stream().to_string() == b.to_token_stream().to_string()
}

/// Items shared by the glue of typed handlers; declared once per expansion
/// (inside its `const _`), and only if some handler takes one event type.
pub(crate) fn support(krate: &TokenStream) -> TokenStream {
    let private = quote!(#krate::__private);
    quote! {
        /// How to recognise one event type.
        struct __EventbusEvent<E> {
            registration: #private::EventRegistration,
            downcast: for<'e> fn(&'e #krate::AnyEnvelope) -> ::core::option::Option<&'e #krate::Envelope<E>>,
        }

        /// The only place the glue requires `E: DomainEvent`; named for the
        /// compiler's "required by a bound in ..." note.
        const fn handled_type_must_be_a_domain_event<E: #krate::DomainEvent>() -> __EventbusEvent<E> {
            fn downcast<E: #krate::DomainEvent>(
                event: &#krate::AnyEnvelope,
            ) -> ::core::option::Option<&#krate::Envelope<E>> {
                event.downcast_ref::<E>()
            }
            __EventbusEvent {
                registration: #private::EventRegistration::of::<E>(),
                downcast: downcast::<E>,
            }
        }

        /// `Self` (the handler's parameter `&Envelope<Self>`) is `T` (`#[handles(T)]`).
        #[diagnostic::on_unimplemented(
            message = "this handler takes `&Envelope<{Self}>`, but `#[handles({T})]` delivers `&Envelope<{T}>`",
            label = "expected `{T}`, as in `#[handles({T})]`",
            note = "write `event: &Envelope<{T}>`, or `#[handles({Self})]` if `{Self}` is the event this handler is for"
        )]
        trait __EventbusHandles<T>: ::core::marker::Sized {
            fn __envelope(event: &#krate::Envelope<T>) -> &#krate::Envelope<Self>;
        }

        impl<T> __EventbusHandles<T> for T {
            fn __envelope(event: &#krate::Envelope<T>) -> &#krate::Envelope<T> {
                event
            }
        }
    }
}
