//! Attribute grammars: `#[event(...)]`, `#[projection(...)]`, `#[handles(...)]`.
//!
//! Errors accumulate in a [`Errors`] so one compile reports every mistake.

use proc_macro2::{Span, TokenStream};
use quote::{ToTokens, quote};
use syn::parse::{Parse, ParseStream};
use syn::spanned::Spanned;
use syn::{LitInt, LitStr, Path, Token, Type};

mod kw {
    syn::custom_keyword!(aggregate);
    syn::custom_keyword!(name);
    syn::custom_keyword!(version);
    syn::custom_keyword!(group);
    syn::custom_keyword!(all);
}

/// Collected errors, reported together.
#[derive(Default)]
pub(crate) struct Errors(Option<syn::Error>);

impl Errors {
    pub(crate) fn push(&mut self, error: syn::Error) {
        match &mut self.0 {
            Some(existing) => existing.combine(error),
            None => self.0 = Some(error),
        }
    }

    pub(crate) fn error(&mut self, span: Span, message: impl std::fmt::Display) {
        self.push(syn::Error::new(span, message));
    }

    pub(crate) fn spanned(&mut self, tokens: impl ToTokens, message: impl std::fmt::Display) {
        self.push(syn::Error::new_spanned(tokens, message));
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.0.is_none()
    }

    pub(crate) fn to_compile_errors(&self) -> TokenStream {
        self.0.as_ref().map(syn::Error::to_compile_error).unwrap_or_default()
    }
}

/// Characters that keep a name usable in a topic routing key.
pub(crate) fn check_routing_name(lit: &LitStr, what: &str, errors: &mut Errors) {
    let value = lit.value();
    if value.is_empty() {
        errors.spanned(lit, format!("the {what} cannot be empty"));
        return;
    }
    if let Some(bad) = value
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || *c == '_' || *c == '-'))
    {
        let why = match bad {
            '.' => "`.` separates the words of the routing key `{aggregate}.{event}`".to_owned(),
            '*' | '#' => format!("`{bad}` is a wildcard in topic bindings"),
            ' ' => "spaces cannot appear in a routing key".to_owned(),
            _ => format!("`{bad}` is not allowed in a routing key"),
        };
        errors.spanned(
            lit,
            format!(
                "invalid {what} `{value}`: {why}; use only ASCII letters, digits, `_` and `-`"
            ),
        );
    }
}

/// The `crate = "..."` key: where `eventbus` is.
pub(crate) fn crate_path(path: Option<Path>) -> TokenStream {
    match path {
        Some(path) => quote!(#path),
        None => quote!(::eventbus),
    }
}

fn parse_crate_path(input: ParseStream<'_>) -> syn::Result<Path> {
    let lit: LitStr = input.parse()?;
    lit.parse()
}

/// `#[event(aggregate = "...", name = "...", version = N, crate = "...")]`.
#[derive(Default)]
pub(crate) struct EventArgs {
    pub(crate) aggregate: Option<LitStr>,
    pub(crate) name: Option<LitStr>,
    pub(crate) version: Option<LitInt>,
    pub(crate) krate: Option<Path>,
}

fn duplicate(span: Span, key: &str) -> syn::Error {
    syn::Error::new(span, format!("duplicate key `{key}`; give it once"))
}

impl EventArgs {
    /// Parses one `#[event(...)]`, adding to what earlier ones set.
    pub(crate) fn parse_into(&mut self, input: ParseStream<'_>) -> syn::Result<()> {
        while !input.is_empty() {
            let lookahead = input.lookahead1();
            if lookahead.peek(kw::aggregate) {
                let key: kw::aggregate = input.parse()?;
                input.parse::<Token![=]>()?;
                if self.aggregate.is_some() {
                    return Err(duplicate(key.span, "aggregate"));
                }
                self.aggregate = Some(input.parse()?);
            } else if lookahead.peek(kw::name) {
                let key: kw::name = input.parse()?;
                input.parse::<Token![=]>()?;
                if self.name.is_some() {
                    return Err(duplicate(key.span, "name"));
                }
                self.name = Some(input.parse()?);
            } else if lookahead.peek(kw::version) {
                let key: kw::version = input.parse()?;
                input.parse::<Token![=]>()?;
                if self.version.is_some() {
                    return Err(duplicate(key.span, "version"));
                }
                self.version = Some(input.parse()?);
            } else if lookahead.peek(Token![crate]) {
                let key: Token![crate] = input.parse()?;
                input.parse::<Token![=]>()?;
                if self.krate.is_some() {
                    return Err(duplicate(key.span, "crate"));
                }
                self.krate = Some(parse_crate_path(input)?);
            } else {
                return Err(lookahead.error());
            }
            if !input.is_empty() {
                input.parse::<Token![,]>()?;
            }
        }
        Ok(())
    }
}

/// `#[projection(group = "...", crate = "...")]`.
#[derive(Default)]
pub(crate) struct ProjectionArgs {
    pub(crate) group: Option<LitStr>,
    pub(crate) krate: Option<Path>,
}

impl Parse for ProjectionArgs {
    fn parse(input: ParseStream<'_>) -> syn::Result<Self> {
        let mut args = Self::default();
        while !input.is_empty() {
            let lookahead = input.lookahead1();
            if lookahead.peek(kw::group) {
                let key: kw::group = input.parse()?;
                input.parse::<Token![=]>()?;
                if args.group.is_some() {
                    return Err(duplicate(key.span, "group"));
                }
                args.group = Some(input.parse()?);
            } else if lookahead.peek(Token![crate]) {
                let key: Token![crate] = input.parse()?;
                input.parse::<Token![=]>()?;
                if args.krate.is_some() {
                    return Err(duplicate(key.span, "crate"));
                }
                args.krate = Some(parse_crate_path(input)?);
            } else {
                return Err(lookahead.error());
            }
            if !input.is_empty() {
                input.parse::<Token![,]>()?;
            }
        }
        Ok(args)
    }
}

/// What a handler takes: one event type, or every event.
pub(crate) enum Target {
    Event(Box<Type>),
    All(Span),
}

impl Target {
    pub(crate) fn span(&self) -> Span {
        match self {
            Self::Event(ty) => ty.span(),
            Self::All(span) => *span,
        }
    }

    /// A key to detect the same target twice.
    pub(crate) fn key(&self) -> String {
        match self {
            Self::Event(ty) => ty.to_token_stream().to_string(),
            Self::All(_) => "all".to_owned(),
        }
    }
}

/// `#[handles(E)]`, `#[handles(all)]`, optionally `group = "..."` and `crate = "..."`.
pub(crate) struct HandlesArgs {
    pub(crate) target: Target,
    pub(crate) group: Option<LitStr>,
    pub(crate) krate: Option<Path>,
}

impl Parse for HandlesArgs {
    fn parse(input: ParseStream<'_>) -> syn::Result<Self> {
        if input.is_empty() {
            return Err(input.error(
                "expected the event type: `#[handles(OrderPlaced)]`, or `#[handles(all)]` for every event",
            ));
        }
        let target = if input.peek(kw::all) && (input.peek2(Token![,]) || is_last_token(input)) {
            let all: kw::all = input.parse()?;
            Target::All(all.span)
        } else {
            Target::Event(Box::new(input.parse()?))
        };
        let mut group = None;
        let mut krate = None;
        while !input.is_empty() {
            input.parse::<Token![,]>()?;
            if input.is_empty() {
                break;
            }
            let lookahead = input.lookahead1();
            if lookahead.peek(kw::group) {
                let key: kw::group = input.parse()?;
                input.parse::<Token![=]>()?;
                if group.is_some() {
                    return Err(duplicate(key.span, "group"));
                }
                group = Some(input.parse()?);
            } else if lookahead.peek(Token![crate]) {
                let key: Token![crate] = input.parse()?;
                input.parse::<Token![=]>()?;
                if krate.is_some() {
                    return Err(duplicate(key.span, "crate"));
                }
                krate = Some(parse_crate_path(input)?);
            } else {
                return Err(lookahead.error());
            }
        }
        Ok(Self {
            target,
            group,
            krate,
        })
    }
}

fn is_last_token(input: ParseStream<'_>) -> bool {
    let fork = input.fork();
    fork.parse::<kw::all>().is_ok() && fork.is_empty()
}
