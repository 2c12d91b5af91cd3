//! Attribute grammars: `#[event(...)]`, `#[projection(...)]`, `#[handles(...)]`.
//!
//! Errors accumulate in a [`Errors`] so one compile reports every mistake: a
//! bad key is reported and parsing resumes at the next `,`.

use proc_macro2::{Span, TokenStream, TokenTree};
use quote::{ToTokens, quote};
use syn::ext::IdentExt;
use syn::parse::{ParseStream, Parser};
use syn::spanned::Spanned;
use syn::{Ident, LitInt, LitStr, Path, Token, Type};

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
        self.0
            .as_ref()
            .map(syn::Error::to_compile_error)
            .unwrap_or_default()
    }
}

/// Sets the span of every token (so a type error lands on the user's token).
pub(crate) fn respan(tokens: TokenStream, span: Span) -> TokenStream {
    tokens
        .into_iter()
        .map(|mut tree| {
            if let TokenTree::Group(group) = &tree {
                let mut inner =
                    proc_macro2::Group::new(group.delimiter(), respan(group.stream(), span));
                inner.set_span(span);
                tree = TokenTree::Group(inner);
            } else {
                tree.set_span(span);
            }
            tree
        })
        .collect()
}

/// Characters that keep a name usable in a topic routing key.
///
/// `key` and `example` say what to write: `key = "example"`; `defaulted` is
/// true when the name comes from the struct's name rather than a key.
pub(crate) fn check_routing_name(
    lit: &LitStr,
    what: &str,
    key: &str,
    example: &str,
    defaulted: bool,
    errors: &mut Errors,
) {
    let value = lit.value();
    if value.is_empty() {
        errors.spanned(
            lit,
            format!("the {what} cannot be empty; write e.g. `{key} = \"{example}\"`"),
        );
        return;
    }
    if let Some(bad) = value
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || *c == '_' || *c == '-'))
    {
        let why = match bad {
            '.' => "`.` separates the words of the routing key `{aggregate}.{event}`".to_owned(),
            '*' | '#' => format!("`{bad}` is a wildcard in topic bindings"),
            c if c.is_whitespace() => "a routing key cannot contain spaces".to_owned(),
            _ => format!("`{bad}` is not allowed in a routing key"),
        };
        let fix = if defaulted {
            format!("; set a valid one with `#[event({key} = \"...\")]`")
        } else {
            String::new()
        };
        errors.spanned(
            lit,
            format!(
                "invalid {what} `{value}`: {why}; use only ASCII letters, digits, `_` and `-`{fix}"
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

/// A `key = value` the caller may want to point at as a whole.
pub(crate) struct Keyed<T> {
    pub(crate) key: Ident,
    pub(crate) value: T,
}

impl<T: ToTokens> ToTokens for Keyed<T> {
    fn to_tokens(&self, tokens: &mut TokenStream) {
        self.key.to_tokens(tokens);
        <Token![=]>::default().to_tokens(tokens);
        self.value.to_tokens(tokens);
    }
}

fn duplicate(key: &Ident) -> syn::Error {
    syn::Error::new(key.span(), format!("duplicate key `{key}`; give it once"))
}

/// `=` after `key`.
fn parse_eq(key: &Ident, input: ParseStream<'_>, example: &str) -> syn::Result<()> {
    if input.peek(Token![=]) {
        input.parse::<Token![=]>()?;
        Ok(())
    } else {
        Err(syn::Error::new(
            key.span(),
            format!("expected a value: `{key} = {example}`"),
        ))
    }
}

/// `key = "..."`.
fn parse_str(key: &Ident, input: ParseStream<'_>, example: &str) -> syn::Result<LitStr> {
    let example = format!("\"{example}\"");
    parse_eq(key, input, &example)?;
    if input.peek(LitStr) {
        input.parse()
    } else {
        Err(input.error(format!("expected a string: `{key} = {example}`")))
    }
}

/// `crate = "path"`.
fn parse_crate_path(key: &Ident, input: ParseStream<'_>) -> syn::Result<Path> {
    let lit = parse_str(key, input, "::eventbus")?;
    lit.parse::<Path>().map_err(|_| {
        syn::Error::new(
            lit.span(),
            "expected the path of the `eventbus` crate, e.g. `crate = \"::eventbus\"`",
        )
    })
}

/// Skips what is left of a bad `key = value`, up to the next `,`.
fn skip_to_comma(input: ParseStream<'_>) -> syn::Result<()> {
    while !input.is_empty() && !input.peek(Token![,]) {
        input.parse::<TokenTree>()?;
    }
    Ok(())
}

/// Parses `key = value, ...`; `entry` parses one value after its key. A bad
/// entry is recorded in `errors` and parsing resumes at the next `,`.
fn parse_keys(
    input: ParseStream<'_>,
    errors: &mut Errors,
    usage: &str,
    mut entry: impl FnMut(Ident, ParseStream<'_>) -> syn::Result<()>,
) -> syn::Result<()> {
    while !input.is_empty() {
        let result = (|| {
            if !input.peek(Ident::peek_any) {
                return Err(input.error(format!("expected a key: {usage}")));
            }
            let key = input.call(Ident::parse_any)?;
            entry(key, input)?;
            if !input.is_empty() && !input.peek(Token![,]) {
                return Err(input.error("expected `,` between keys"));
            }
            Ok(())
        })();
        if let Err(e) = result {
            errors.push(e);
            skip_to_comma(input)?;
        }
        if !input.is_empty() {
            input.parse::<Token![,]>()?;
        }
    }
    Ok(())
}

const EVENT_USAGE: &str =
    "`aggregate = \"...\"`, `name = \"...\"`, `version = N` or `crate = \"...\"`";

/// `#[event(aggregate = "...", name = "...", version = N, crate = "...")]`.
#[derive(Default)]
pub(crate) struct EventArgs {
    pub(crate) aggregate: Option<LitStr>,
    /// Set as soon as the key is seen, even if its value is bad.
    pub(crate) aggregate_given: bool,
    pub(crate) name: Option<LitStr>,
    pub(crate) version: Option<LitInt>,
    pub(crate) krate: Option<Path>,
}

impl EventArgs {
    /// Parses one `#[event(...)]` attribute, adding to what earlier ones set.
    pub(crate) fn parse_attr(
        &mut self,
        attr: &syn::Attribute,
        struct_name: &Ident,
        errors: &mut Errors,
    ) {
        let list = match &attr.meta {
            syn::Meta::List(list) => list,
            other => {
                errors.spanned(
                    other,
                    format!(
                        "expected arguments: {EVENT_USAGE}, e.g. `#[event(aggregate = \"Order\")]`"
                    ),
                );
                return;
            }
        };
        let parser = |input: ParseStream<'_>| {
            parse_keys(input, errors, EVENT_USAGE, |key, input| {
                if key == "aggregate" {
                    if self.aggregate_given {
                        return Err(duplicate(&key));
                    }
                    self.aggregate_given = true;
                    self.aggregate = Some(parse_str(&key, input, "Order")?);
                } else if key == "name" {
                    if self.name.is_some() {
                        return Err(duplicate(&key));
                    }
                    self.name = Some(parse_str(&key, input, &struct_name.to_string())?);
                } else if key == "version" {
                    if self.version.is_some() {
                        return Err(duplicate(&key));
                    }
                    parse_eq(&key, input, "2")?;
                    if input.peek(LitInt) {
                        self.version = Some(input.parse()?);
                    } else {
                        return Err(input.error("expected an integer: `version = 2`"));
                    }
                } else if key == "crate" {
                    if self.krate.is_some() {
                        return Err(duplicate(&key));
                    }
                    self.krate = Some(parse_crate_path(&key, input)?);
                } else {
                    return Err(syn::Error::new(
                        key.span(),
                        format!("unknown key `{key}` in `#[event(...)]`; expected {EVENT_USAGE}"),
                    ));
                }
                Ok(())
            })
        };
        if let Err(e) = parser.parse2(list.tokens.clone()) {
            errors.push(e);
        }
    }
}

const PROJECTION_USAGE: &str = "`group = \"...\"` or `crate = \"...\"`";

/// `#[projection(group = "...", crate = "...")]`.
#[derive(Default)]
pub(crate) struct ProjectionArgs {
    pub(crate) group: Option<LitStr>,
    pub(crate) krate: Option<Path>,
}

impl ProjectionArgs {
    pub(crate) fn parse(tokens: TokenStream, errors: &mut Errors) -> Self {
        let mut args = Self::default();
        let parser = |input: ParseStream<'_>| {
            parse_keys(input, errors, PROJECTION_USAGE, |key, input| {
                if key == "group" {
                    if args.group.is_some() {
                        return Err(duplicate(&key));
                    }
                    args.group = Some(parse_str(&key, input, "reporting")?);
                } else if key == "crate" {
                    if args.krate.is_some() {
                        return Err(duplicate(&key));
                    }
                    args.krate = Some(parse_crate_path(&key, input)?);
                } else {
                    return Err(syn::Error::new(
                        key.span(),
                        format!(
                            "unknown key `{key}` in `#[projection(...)]`; expected {PROJECTION_USAGE}"
                        ),
                    ));
                }
                Ok(())
            })
        };
        if let Err(e) = parser.parse2(tokens) {
            errors.push(e);
        }
        args
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

    /// The target as written by the user.
    pub(crate) fn display(&self) -> String {
        match self {
            Self::Event(ty) => type_text(ty),
            Self::All(_) => "all".to_owned(),
        }
    }
}

/// A type as the user would write it: `Envelope<OrderPlaced>`, not `Envelope < OrderPlaced >`.
pub(crate) fn type_text(ty: &Type) -> String {
    let text = ty.to_token_stream().to_string();
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c == ' ' {
            let next = chars.peek().copied();
            let prev = out.chars().last();
            let glue = matches!(next, Some('<' | '>' | ',' | ':' | ')' | ']'))
                || matches!(prev, Some('<' | '&' | ':' | '(' | '['));
            if !glue {
                out.push(' ');
            }
        } else {
            out.push(c);
        }
    }
    out
}

pub(crate) const HANDLES_USAGE: &str =
    "expected the event type: `#[handles(OrderPlaced)]`, or `#[handles(all)]` for every event";

/// `#[handles(E)]`, `#[handles(all)]`, optionally `group = "..."` and `crate = "..."`.
pub(crate) struct HandlesArgs {
    pub(crate) target: Target,
    pub(crate) group: Option<Keyed<LitStr>>,
    pub(crate) krate: Option<Keyed<Path>>,
}

impl HandlesArgs {
    /// Parses the arguments of one `#[handles(...)]`; `attr` is the attribute,
    /// to point at when the arguments are missing (empty: the macro's call
    /// site), `in_projection` tunes the messages. `None` when the target itself
    /// is unusable (the error is in `errors`).
    pub(crate) fn parse(
        tokens: TokenStream,
        attr: TokenStream,
        in_projection: bool,
        errors: &mut Errors,
    ) -> Option<Self> {
        if tokens.is_empty() {
            match attr.is_empty() {
                true => errors.error(Span::call_site(), HANDLES_USAGE),
                false => errors.spanned(attr, HANDLES_USAGE),
            }
            return None;
        }
        let parser = |input: ParseStream<'_>| -> syn::Result<Self> {
            let target = parse_target(input)?;
            let mut group: Option<Keyed<LitStr>> = None;
            let mut krate: Option<Keyed<Path>> = None;
            if !input.is_empty() {
                input.parse::<Token![,]>()?;
            }
            let usage = if in_projection {
                "inside a `#[projection]`, `#[handles(...)]` takes only the event type, e.g. `#[handles(OrderPlaced)]`"
            } else {
                "after the event type, `#[handles(...)]` takes `group = \"...\"` or `crate = \"...\"`"
            };
            // A second type rather than a key: `#[handles(A, B)]`.
            loop {
                let at_key = input.peek(Ident::peek_any) && input.peek2(Token![=]);
                if input.is_empty() || at_key {
                    break;
                }
                if input.fork().parse::<Type>().is_ok() {
                    let extra: Type = input.parse()?;
                    errors.spanned(
                        &extra,
                        format!(
                            "one event type per `#[handles]`: write one handler for `{}`, or take every event with `#[handles(all)]`",
                            type_text(&extra)
                        ),
                    );
                } else {
                    errors.push(input.error(format!("expected a key: {usage}")));
                    skip_to_comma(input)?;
                }
                if !input.is_empty() {
                    input.parse::<Token![,]>()?;
                }
            }
            parse_keys(input, errors, usage, |key, input| {
                if key == "group" {
                    if group.is_some() {
                        return Err(duplicate(&key));
                    }
                    let value = parse_str(&key, input, "notifications")?;
                    group = Some(Keyed { key, value });
                } else if key == "crate" {
                    if krate.is_some() {
                        return Err(duplicate(&key));
                    }
                    let value = parse_crate_path(&key, input)?;
                    krate = Some(Keyed { key, value });
                } else {
                    return Err(syn::Error::new(
                        key.span(),
                        format!("unknown key `{key}` in `#[handles(...)]`; {usage}"),
                    ));
                }
                Ok(())
            })?;
            Ok(Self {
                target,
                group,
                krate,
            })
        };
        match parser.parse2(tokens) {
            Ok(args) => Some(args),
            Err(e) => {
                errors.push(e);
                None
            }
        }
    }
}

fn parse_target(input: ParseStream<'_>) -> syn::Result<Target> {
    if input.peek(LitStr) {
        let lit: LitStr = input.parse()?;
        return Err(syn::Error::new(
            lit.span(),
            format!(
                "expected the event type, not a string: `#[handles({})]`",
                lit.value()
            ),
        ));
    }
    if input.peek(Ident::peek_any)
        && input
            .fork()
            .call(Ident::parse_any)
            .is_ok_and(|i| i == "all")
    {
        let fork = input.fork();
        let all = fork.call(Ident::parse_any)?;
        if fork.is_empty() || fork.peek(Token![,]) {
            input.call(Ident::parse_any)?;
            return Ok(Target::All(all.span()));
        }
    }
    let span = input.span();
    input
        .parse::<Type>()
        .map(|ty| Target::Event(Box::new(ty)))
        .map_err(|_| syn::Error::new(span, HANDLES_USAGE))
}
