//! One method of a `#[grain]` trait, validated: its shape, attributes and types, every
//! problem reported at its span.

use syn::spanned::Spanned;
use syn::{
    Attribute, FnArg, GenericArgument, Pat, PathArguments, ReturnType, TraitItem, TraitItemFn, Type,
};

use crate::{Errors, lit_int};

/// One method, validated.
pub(crate) struct Method {
    pub(crate) sig_fn: TraitItemFn,
    pub(crate) name: syn::Ident,
    pub(crate) args: Vec<(syn::Ident, Type)>,
    /// `(T, Some(E))` for `Result<T, E>`.
    pub(crate) output: Type,
    pub(crate) app_error: Option<(Type, Type)>,
    /// `(T, Some(E))` for a stream method (`-> GrainStream<T>` or `GrainStream<T, E>`).
    pub(crate) stream: Option<(Type, Option<Type>)>,
    pub(crate) one_way: bool,
    /// `#[unreliable]` / `#[sequenced]` (a sequenced method is one-way).
    pub(crate) delivery: Delivery,
    pub(crate) idempotent: bool,
    /// `#[exactly_once]`.
    pub(crate) exactly_once: bool,
    /// `#[interleave]`.
    pub(crate) interleave: bool,
    /// Takes `&self`.
    pub(crate) shared: bool,
    pub(crate) timeout_ms: Option<u64>,
    pub(crate) id: Option<u16>,
    pub(crate) docs: Vec<Attribute>,
}

/// A method's delivery class.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Delivery {
    ReliableOrdered,
    Unreliable,
    Sequenced,
}

/// Names the generated items use: the server trait's hooks, the reference's own methods.
pub(crate) const RESERVED: &[&str] = &[
    "on_activate",
    "on_deactivate",
    "on_session_ended",
    "host",
    "host_with_state",
    "info",
    "id",
    "with_timeout",
    "with_affinity",
    "cast",
    "prefer",
    "require",
];

/// Validates one method; every problem in it goes to `errors`. `None` if it cannot be used.
pub(crate) fn method(item: &TraitItem, errors: &mut Errors) -> Option<Method> {
    let f = match item {
        TraitItem::Fn(f) => f,
        other => {
            errors.push(syn::Error::new(
                other.span(),
                "a #[grain] trait may only contain methods (no types, constants or macros)",
            ));
            return None;
        }
    };
    let mut bad = false;
    let mut fail = |e: syn::Error| {
        bad = true;
        errors.push(e);
    };
    let sig = &f.sig;
    if sig.asyncness.is_none() {
        fail(syn::Error::new(sig.fn_token.span, "grain methods must be `async fn`"));
    }
    if let Some(d) = &f.default {
        fail(syn::Error::new(d.span(), "grain methods cannot have a default body"));
    }
    if !sig.generics.params.is_empty() || sig.generics.where_clause.is_some() {
        fail(syn::Error::new(sig.generics.span(), "grain methods cannot be generic"));
    }
    if let Some(v) = &sig.variadic {
        fail(syn::Error::new(v.span(), "grain methods cannot be variadic"));
    }
    if sig.unsafety.is_some() || sig.constness.is_some() || sig.abi.is_some() {
        fail(syn::Error::new(sig.span(), "grain methods must be plain `async fn`"));
    }
    let name = sig.ident.clone();
    if RESERVED.contains(&name.to_string().as_str()) {
        fail(syn::Error::new(
            name.span(),
            format!(
                "`{name}` is reserved: the grain's hooks and its reference's own methods use it"
            ),
        ));
    }
    let mut inputs = sig.inputs.iter();
    let mut shared = false;
    match inputs.next() {
        Some(FnArg::Receiver(r)) if r.reference.is_some() && r.colon_token.is_none() => {
            shared = r.mutability.is_none();
        }
        Some(other) => {
            fail(syn::Error::new(other.span(), "grain methods take `&self` or `&mut self` first"));
        }
        None => {
            fail(syn::Error::new(
                sig.paren_token.span.join(),
                "grain methods take `&self` or `&mut self`",
            ));
        }
    }
    let mut args = Vec::new();
    for a in inputs {
        let FnArg::Typed(pt) = a else {
            fail(syn::Error::new(a.span(), "unexpected receiver"));
            continue;
        };
        let plain = match &*pt.pat {
            Pat::Ident(pi) if pi.by_ref.is_none() && pi.subpat.is_none() => Some(pi),
            _ => None,
        };
        let Some(pi) = plain else {
            fail(syn::Error::new(
                pt.pat.span(),
                "grain method arguments must be plain names (`name: Type`)",
            ));
            continue;
        };
        if let Err(e) = check_owned(&pt.ty) {
            fail(e);
        }
        args.push((pi.ident.clone(), (*pt.ty).clone()));
    }
    let output: Type = match &sig.output {
        ReturnType::Default => syn::parse_quote!(()),
        ReturnType::Type(_, t) => {
            if let Err(e) = check_owned(t) {
                fail(e);
            }
            (**t).clone()
        }
    };
    let app_error = result_types(&output);
    let stream = stream_types(&output);
    let mut one_way = false;
    let mut delivery: Option<(Delivery, proc_macro2::Span)> = None;
    let mut idempotent = false;
    let mut exactly_once = None;
    let mut interleave = None;
    let mut timeout_ms = None;
    let mut id = None;
    let mut docs = Vec::new();
    for a in &f.attrs {
        let r: syn::Result<()> = if a.path().is_ident("one_way") {
            one_way = true;
            a.meta.require_path_only().map(|_| ())
        } else if a.path().is_ident("unreliable") || a.path().is_ident("sequenced") {
            let class = if a.path().is_ident("unreliable") {
                Delivery::Unreliable
            } else {
                Delivery::Sequenced
            };
            match delivery {
                Some(_) => Err(syn::Error::new(
                    a.span(),
                    "a method has one delivery class: #[unreliable] or #[sequenced], not both",
                )),
                None => {
                    delivery = Some((class, a.span()));
                    a.meta.require_path_only().map(|_| ())
                }
            }
        } else if a.path().is_ident("idempotent") {
            idempotent = true;
            a.meta.require_path_only().map(|_| ())
        } else if a.path().is_ident("exactly_once") {
            exactly_once = Some(a.span());
            a.meta.require_path_only().map(|_| ())
        } else if a.path().is_ident("interleave") {
            interleave = Some(a.span());
            a.meta.require_path_only().map(|_| ())
        } else if a.path().is_ident("timeout_ms") {
            a.meta.require_name_value().and_then(|nv| lit_int::<u64>(&nv.value)).map(|v| {
                timeout_ms = Some(v);
            })
        } else if a.path().is_ident("id") {
            a.meta.require_name_value().and_then(|nv| lit_int::<u16>(&nv.value)).map(|v| {
                id = Some(v);
            })
        } else if ["doc", "allow", "warn", "deny", "expect"].iter().any(|n| a.path().is_ident(n)) {
            // Documentation and lint levels: kept on the server trait's and the reference's
            // methods.
            docs.push(a.clone());
            Ok(())
        } else {
            Err(syn::Error::new(
                a.span(),
                "unknown attribute on a grain method: expected #[one_way], #[unreliable], #[sequenced], #[idempotent], #[exactly_once], #[interleave], #[timeout_ms = N], #[id = N], docs or lint levels",
            ))
        };
        if let Err(e) = r {
            fail(e);
        }
    }
    if one_way && !matches!(&output, Type::Tuple(t) if t.elems.is_empty()) {
        fail(syn::Error::new(output.span(), "#[one_way] methods return nothing"));
    }
    if let Some((Delivery::Sequenced, span)) = delivery {
        if !matches!(&output, Type::Tuple(t) if t.elems.is_empty()) {
            fail(syn::Error::new(
                span,
                "#[sequenced] methods are one-way updates: they return nothing (latest wins; an older one is dropped)",
            ));
        }
        // A sequenced update has no answer: it is one-way.
        one_way = true;
    }
    if stream.is_some() {
        let what = if one_way {
            Some("#[one_way]")
        } else if idempotent {
            Some("#[idempotent]")
        } else {
            match delivery {
                Some((Delivery::Unreliable, _)) => Some("#[unreliable]"),
                Some((Delivery::Sequenced, _)) => Some("#[sequenced]"),
                _ => None,
            }
        };
        if let Some(what) = what {
            fail(syn::Error::new(
                output.span(),
                format!(
                    "a stream method (`-> GrainStream<T>`) cannot be {what}: its items travel reliably, in order, under flow control, and it is never sent twice"
                ),
            ));
        }
    }
    if let Some(span) = exactly_once
        && (one_way || idempotent || delivery.is_some() || stream.is_some())
    {
        fail(syn::Error::new(
            span,
            "#[exactly_once] is for reliable calls with an answer (not #[one_way], #[sequenced], #[unreliable], #[idempotent] or a stream): the answer is recorded with the grain's state",
        ));
    }
    if let Some(span) = interleave
        && !shared
    {
        fail(syn::Error::new(
            span,
            "#[interleave] methods take `&self`: they run beside other `&self` calls of the grain",
        ));
    }
    if bad {
        return None;
    }
    let mut sig_fn = f.clone();
    sig_fn.attrs.retain(|a| {
        ["doc", "allow", "warn", "deny", "expect"].iter().any(|n| a.path().is_ident(n))
    });
    Some(Method {
        sig_fn,
        name,
        args,
        output,
        app_error,
        stream,
        one_way,
        delivery: delivery.map_or(Delivery::ReliableOrdered, |(d, _)| d),
        idempotent,
        exactly_once: exactly_once.is_some(),
        interleave: interleave.is_some(),
        shared,
        timeout_ms,
        id,
        docs,
    })
}

/// Arguments and results travel by value: no references, no `impl Trait`.
fn check_owned(t: &Type) -> syn::Result<()> {
    match t {
        Type::Reference(r) => Err(syn::Error::new(
            r.span(),
            "grain method arguments and results must be owned types (e.g. `String`, not `&str`): they cross the network",
        )),
        Type::ImplTrait(i) => {
            Err(syn::Error::new(i.span(), "`impl Trait` is not supported in grain methods"))
        }
        Type::BareFn(b) => {
            Err(syn::Error::new(b.span(), "function pointers cannot cross the network"))
        }
        Type::Tuple(tt) => tt.elems.iter().try_for_each(check_owned),
        Type::Paren(p) => check_owned(&p.elem),
        Type::Path(p) => {
            for seg in &p.path.segments {
                if let PathArguments::AngleBracketed(ab) = &seg.arguments {
                    for ga in &ab.args {
                        match ga {
                            GenericArgument::Type(t) => check_owned(t)?,
                            GenericArgument::Lifetime(l) => {
                                return Err(syn::Error::new(
                                    l.span(),
                                    "grain method types cannot borrow (no lifetimes)",
                                ));
                            }
                            _ => {}
                        }
                    }
                }
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

/// `Some((T, E))` when `t` is `GrainStream<T>` (no `E`) or `GrainStream<T, E>` (by its last
/// path segment).
fn stream_types(t: &Type) -> Option<(Type, Option<Type>)> {
    let Type::Path(p) = t else { return None };
    let seg = p.path.segments.last()?;
    if seg.ident != "GrainStream" {
        return None;
    }
    let PathArguments::AngleBracketed(ab) = &seg.arguments else { return None };
    let mut tys = ab.args.iter().filter_map(|a| match a {
        GenericArgument::Type(t) => Some(t.clone()),
        _ => None,
    });
    let item = tys.next()?;
    let error = tys.next();
    tys.next().is_none().then_some((item, error))
}

/// `Some((T, E))` when `t` is `Result<T, E>` (by its last path segment).
fn result_types(t: &Type) -> Option<(Type, Type)> {
    let Type::Path(p) = t else { return None };
    let seg = p.path.segments.last()?;
    if seg.ident != "Result" {
        return None;
    }
    let PathArguments::AngleBracketed(ab) = &seg.arguments else { return None };
    let mut tys = ab.args.iter().filter_map(|a| match a {
        GenericArgument::Type(t) => Some(t.clone()),
        _ => None,
    });
    let (ok, err) = (tys.next()?, tys.next()?);
    tys.next().is_none().then_some((ok, err))
}
