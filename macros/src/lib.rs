//! `#[grainwire::grain]`: turns a trait into a grain interface.
//!
//! ```ignore
//! #[grainwire::grain]                      // or #[grain(name = "player", version = 2)]
//! pub trait Player {
//!     async fn join(&mut self, name: String) -> u32;
//!     async fn damage(&mut self, hp: u32) -> Result<u32, Dead>;   // application error `Dead`
//!     #[one_way] async fn ping(&mut self, n: u64);                // reliable, no response
//!     #[sequenced] async fn aim(&mut self, x: f32, y: f32);       // once, latest wins
//!     #[unreliable] async fn rtt(&self, n: u64) -> u64;            // once; lost = Timeout
//!     #[timeout_ms = 250] async fn position(&self) -> (f32, f32);  // this method's deadline
//!     #[idempotent] async fn name(&self) -> String;               // retried once elsewhere
//!     #[exactly_once] async fn buy(&mut self, item: u32) -> u32;  // answer kept with the state
//!     #[interleave] async fn hp(&self) -> u32;                     // runs beside &self calls
//!     async fn log(&self, from: u64) -> GrainStream<String>;       // a stream of items
//! }
//! ```
//!
//! generates
//!
//! * the trait servers implement: the same methods as `fn … -> impl Future<Output = T> + Send`
//!   (implement them with `async fn`), hooks `on_activate`/`on_deactivate` and
//!   `on_session_ended` (presence) with empty defaults, and `Player::host(factory)` to host
//!   the grain on a server;
//! * `PlayerRef`, the typed reference clients call: the same methods, taking `&self` and
//!   returning `Result<T, CallError>` (`Result<T, CallError<E>>` for `Result<T, E>`).
//!
//! Method ids come from method *names* (collisions fail compilation; `#[id = N]` overrides),
//! never from declaration order. Arguments and results are serde types. Generated code only
//! names `::grainwire::__private`, and its locals are `__`-prefixed, so argument names never
//! clash with it; method names the hooks and the reference use (`host`, `on_activate`,
//! `on_deactivate`, `on_session_ended`, `info`, `id`, `with_timeout`, `with_affinity`, `cast`, `prefer`,
//! `require`) are refused. Every error in a trait is reported at once.
//!
//! One generator per item: the server trait, the ids and metadata, the reference, the
//! dispatch (`gen_*`), all reading one validated model of the trait (`model`).

mod method;
mod reference;

use proc_macro::TokenStream;

use self::method::{Delivery, Method, method};
use proc_macro2::TokenStream as TokenStream2;
use quote::{format_ident, quote};
use syn::parse::Parser;
use syn::punctuated::Punctuated;
use syn::spanned::Spanned;
use syn::{Expr, ExprLit, ItemTrait, Lit, Meta, Token};

/// Turns a trait into a grain interface; see the crate docs.
#[proc_macro_attribute]
pub fn grain(attr: TokenStream, item: TokenStream) -> TokenStream {
    match expand(attr.into(), item.into()) {
        Ok(t) => t.into(),
        Err(e) => e.to_compile_error().into(),
    }
}

/// `#[grain(...)]` arguments.
struct Options {
    name: Option<String>,
    version: u8,
    /// The grain type the interface belongs to (default: its name).
    grain_type: Option<String>,
}

fn parse_options(attr: TokenStream2) -> syn::Result<Options> {
    let mut o = Options { name: None, version: 1, grain_type: None };
    let metas = Punctuated::<Meta, Token![,]>::parse_terminated.parse2(attr)?;
    for meta in metas {
        let nv = match &meta {
            Meta::NameValue(nv) => nv,
            other => {
                return Err(syn::Error::new(
                    other.span(),
                    "expected `name = \"...\"`, `version = N` or `grain_type = \"...\"`",
                ));
            }
        };
        if nv.path.is_ident("name") {
            o.name = Some(lit_str(&nv.value)?);
        } else if nv.path.is_ident("version") {
            o.version = lit_int(&nv.value)?;
        } else if nv.path.is_ident("grain_type") {
            o.grain_type = Some(lit_str(&nv.value)?);
        } else {
            return Err(syn::Error::new(
                nv.path.span(),
                "unknown option: expected `name`, `version` or `grain_type`",
            ));
        }
    }
    Ok(o)
}

fn lit_str(e: &Expr) -> syn::Result<String> {
    match e {
        Expr::Lit(ExprLit { lit: Lit::Str(s), .. }) => Ok(s.value()),
        other => Err(syn::Error::new(other.span(), "expected a string literal")),
    }
}

fn lit_int<N: std::str::FromStr<Err = std::num::ParseIntError> + std::fmt::Display>(
    e: &Expr,
) -> syn::Result<N> {
    match e {
        Expr::Lit(ExprLit { lit: Lit::Int(i), .. }) => i.base10_parse(),
        other => Err(syn::Error::new(other.span(), "expected an integer literal")),
    }
}

/// Every error found, reported together (a trait with three bad methods shows three errors).
#[derive(Default)]
struct Errors(Option<syn::Error>);

impl Errors {
    fn push(&mut self, e: syn::Error) {
        match &mut self.0 {
            Some(all) => all.combine(e),
            None => self.0 = Some(e),
        }
    }

    /// The errors so far and `last`, which ends the expansion.
    fn with(mut self, last: syn::Error) -> syn::Error {
        self.push(last);
        self.0.unwrap_or_else(|| syn::Error::new(proc_macro2::Span::call_site(), "invalid"))
    }

    fn finish(self) -> syn::Result<()> {
        self.0.map_or(Ok(()), Err)
    }
}

fn norm(ts: impl quote::ToTokens) -> String {
    ts.to_token_stream().to_string().split_whitespace().collect::<Vec<_>>().join(" ")
}

fn expand(attr: TokenStream2, item: TokenStream2) -> syn::Result<TokenStream2> {
    let g = model(attr, item)?;
    let server_trait = gen_server_trait(&g);
    let ids = gen_ids(&g);
    let reference = reference::gen_reference(&g);
    let dispatch = gen_dispatch(&g);
    Ok(quote! {
        #server_trait
        #ids
        #reference
        #dispatch
    })
}

/// A validated `#[grain]` trait: what every generator reads.
struct Grain {
    tr: ItemTrait,
    methods: Vec<Method>,
    name: String,
    version: u8,
    /// The grain type's name (the interface's unless `grain_type = "..."`).
    grain_type: String,
    /// `PlayerRef`.
    ref_name: syn::Ident,
    /// The statics holding the interface's and the methods' metadata.
    info_static: syn::Ident,
    methods_static: syn::Ident,
    /// `::grainwire::__private`: the only path generated code names.
    p: TokenStream2,
}

impl Grain {
    fn id_const(m: &Method) -> syn::Ident {
        format_ident!("__M_{}", m.name.to_string().to_uppercase())
    }

    /// `const __M_JOIN: MethodId = ...;` for every method.
    fn id_consts(&self) -> Vec<TokenStream2> {
        let p = &self.p;
        self.methods
            .iter()
            .map(|m| {
                let name_str = m.name.to_string();
                let id_const = Self::id_const(m);
                let id_expr = match m.id {
                    Some(n) => quote!(#p::MethodId(#n)),
                    None => quote!(#p::MethodId::of(#name_str)),
                };
                quote!(const #id_const: #p::MethodId = #id_expr;)
            })
            .collect()
    }

    /// One method's part of the contract: its name, shape and types (what a caller and a host
    /// must agree on for a call of it).
    fn signature(m: &Method) -> String {
        let args: Vec<String> = m.args.iter().map(|(_, t)| norm(t)).collect();
        let one_way = if m.one_way { "!" } else { "" };
        // The delivery class is part of the contract (reliable-ordered adds nothing, so
        // signatures from before classes existed stay the same).
        let once = if m.exactly_once { "~once" } else { "" };
        let class = match m.delivery {
            Delivery::ReliableOrdered => "",
            Delivery::Unreliable => "~unreliable",
            Delivery::Sequenced => "~sequenced",
        };
        format!("{}({})->{}{}{}{}", m.name, args.join(","), norm(&m.output), one_way, class, once)
    }

    /// The contract: name, version and every method's signature, sorted by name.
    fn contract(&self) -> String {
        let mut contract: Vec<String> = self.methods.iter().map(Self::signature).collect();
        contract.sort();
        format!("{} v{}: {}", self.name, self.version, contract.join("; "))
    }
}

/// Parses and validates the options and the trait, reporting every error at once.
fn model(attr: TokenStream2, item: TokenStream2) -> syn::Result<Grain> {
    let mut errors = Errors::default();
    let opts = match parse_options(attr) {
        Ok(o) => o,
        Err(e) => {
            errors.push(e);
            Options { name: None, version: 1, grain_type: None }
        }
    };
    let tr: ItemTrait = match syn::parse2(item) {
        Ok(t) => t,
        Err(e) => return Err(errors.with(e)),
    };
    if !tr.generics.params.is_empty() || tr.generics.where_clause.is_some() {
        errors.push(syn::Error::new(tr.generics.span(), "a #[grain] trait cannot be generic"));
    }
    if !tr.supertraits.is_empty() {
        errors.push(syn::Error::new(
            tr.supertraits.span(),
            "a #[grain] trait cannot have supertraits",
        ));
    }
    if tr.unsafety.is_some() || tr.auto_token.is_some() {
        errors.push(syn::Error::new(tr.trait_token.span, "a #[grain] trait must be a plain trait"));
    }
    let methods: Vec<Method> = tr.items.iter().filter_map(|i| method(i, &mut errors)).collect();
    errors.finish()?;
    let trait_name = &tr.ident;
    let upper = trait_name.to_string().to_uppercase();
    let name = opts.name.unwrap_or_else(|| trait_name.to_string());
    Ok(Grain {
        grain_type: opts.grain_type.unwrap_or_else(|| name.clone()),
        name,
        version: opts.version,
        ref_name: format_ident!("{}Ref", trait_name),
        info_static: format_ident!("__GRAINWIRE_{}_INFO", upper),
        methods_static: format_ident!("__GRAINWIRE_{}_METHODS", upper),
        p: quote!(::grainwire::__private),
        methods,
        tr,
    })
}

/// The trait servers implement: the methods as `Send` futures, the hooks, `host`.
fn gen_server_trait(g: &Grain) -> TokenStream2 {
    let p = &g.p;
    let (attrs, vis, trait_name, ref_name) = (&g.tr.attrs, &g.tr.vis, &g.tr.ident, &g.ref_name);
    let items = g.methods.iter().map(|m| {
        let mut f = m.sig_fn.clone();
        f.sig.asyncness = None;
        let out = &m.output;
        f.sig.output = syn::parse_quote_spanned! {out.span()=>
            -> impl ::core::future::Future<Output = #out> + ::core::marker::Send
        };
        quote!(#f)
    });
    let host_doc =
        format!("Hosts `{trait_name}` grains, each activation made by `factory` from its id.");
    // `#[interleave]` methods run beside other `&self` calls: the grain is shared.
    let (sync_bound, host_fn, state_fn) = if g.methods.iter().any(|m| m.interleave) {
        (
            quote!(+ ::core::marker::Sync),
            quote!(host_interleaving),
            quote!(host_with_state_interleaving),
        )
    } else {
        (quote!(), quote!(host), quote!(host_with_state))
    };
    let state_doc = format!(
        "Hosts `{trait_name}` grains with persisted state: each activation's state is loaded from `storage` before its first call and given to `factory` (with the grain's id), and written when the activation ends if it changed (the grain writes it when it matters with `Persisted::write`)."
    );
    quote! {
        #(#attrs)*
        #vis trait #trait_name: ::core::marker::Send + 'static {
            #(#items)*

            /// Runs when the grain is activated, before its first call.
            fn on_activate(&mut self, id: &#p::GrainId) -> impl ::core::future::Future<Output = ()> + ::core::marker::Send {
                let _ = id;
                async {}
            }

            /// Runs when the grain is deactivated (idle, or the server shutting down).
            fn on_deactivate(&mut self) -> impl ::core::future::Future<Output = ()> + ::core::marker::Send {
                async {}
            }

            /// Runs, as a turn of its own, when a session the grain watched ended
            /// (`GrainContext::watch`: presence).
            fn on_session_ended(&mut self, ended: #p::SessionEnded) -> impl ::core::future::Future<Output = ()> + ::core::marker::Send {
                let _ = ended;
                async {}
            }

            #[doc = #host_doc]
            fn host<__F>(factory: __F) -> #p::Host
            where
                Self: ::core::marker::Sized #sync_bound,
                __F: ::core::ops::Fn(&#p::GrainId) -> Self + ::core::marker::Send + ::core::marker::Sync + 'static,
            {
                #p::#host_fn::<#ref_name, Self, __F>(factory)
            }

            #[doc = #state_doc]
            fn host_with_state<__F>(storage: #p::Storage, factory: __F) -> #p::Host
            where
                Self: ::core::marker::Sized + #p::Stateful #sync_bound,
                __F: ::core::ops::Fn(&#p::GrainId, #p::Persisted<<Self as #p::Stateful>::State>) -> Self + ::core::marker::Send + ::core::marker::Sync + 'static,
            {
                #p::#state_fn::<#ref_name, Self, __F>(storage, factory)
            }
        }
    }
}

/// The ids and metadata: method ids (checked unique at compile time), the methods' and the
/// interface's statics, `Interface` for the reference type.
fn gen_ids(g: &Grain) -> TokenStream2 {
    let p = &g.p;
    let (ref_name, info_static, methods_static) = (&g.ref_name, &g.info_static, &g.methods_static);
    let grain_name = &g.name;
    let grain_type = &g.grain_type;
    let version = g.version;
    let contract = g.contract();
    let id_consts = g.id_consts();
    let id_names: Vec<syn::Ident> = g.methods.iter().map(Grain::id_const).collect();
    let infos = g.methods.iter().map(|m| {
        let name_str = m.name.to_string();
        let id_const = Grain::id_const(m);
        let (idempotent, exactly_once) = (m.idempotent, m.exactly_once);
        let (shared, interleave) = (m.shared, m.interleave);
        let kind = if m.one_way {
            quote!(#p::MethodKind::OneWay)
        } else if m.stream.is_some() {
            quote!(#p::MethodKind::Stream)
        } else {
            quote!(#p::MethodKind::Call)
        };
        let timeout = match m.timeout_ms {
            Some(ms) => quote!(::core::option::Option::Some(#p::Duration::from_millis(#ms))),
            None => quote!(::core::option::Option::None),
        };
        let size_hint = 16 * m.args.len();
        let signature = Grain::signature(m);
        let delivery = match m.delivery {
            Delivery::ReliableOrdered => quote!(#p::DeliveryClass::ReliableOrdered),
            Delivery::Unreliable => quote!(#p::DeliveryClass::Unreliable),
            Delivery::Sequenced => quote!(#p::DeliveryClass::Sequenced),
        };
        quote! {
            #p::MethodInfo { name: #name_str, id: #id_const, signature: #p::contract_hash(#signature), kind: #kind, delivery: #delivery, idempotent: #idempotent, exactly_once: #exactly_once, shared: #shared, interleave: #interleave, timeout: #timeout, size_hint: #size_hint }
        }
    });
    let n_methods = g.methods.len();
    quote! {
        #[allow(non_upper_case_globals)]
        static #methods_static: [#p::MethodInfo; #n_methods] = {
            #(#id_consts)*
            [#(#infos),*]
        };

        #[allow(non_upper_case_globals)]
        static #info_static: #p::InterfaceInfo = #p::InterfaceInfo {
            name: #grain_name,
            id: #p::InterfaceId::of(#grain_name),
            grain_type: #p::GrainType::of(#grain_type),
            version: #version,
            contract: #p::contract_hash(#contract),
            methods: &#methods_static,
        };

        const _: () = {
            #(#id_consts)*
            #p::assert_unique_method_ids(#grain_name, &[#(#id_names),*]);
        };

        impl #p::Interface for #ref_name {
            fn info() -> &'static #p::InterfaceInfo {
                &#info_static
            }
        }
    }
}

/// Server-side dispatch: decode the arguments, run the method, encode its answer. Generated
/// locals are `__`-prefixed, so no argument name can shadow them.
fn gen_dispatch(g: &Grain) -> TokenStream2 {
    let p = &g.p;
    let (trait_name, ref_name) = (&g.tr.ident, &g.ref_name);
    let id_consts = g.id_consts();
    let interleaves = g.methods.iter().any(|m| m.interleave);
    let arm = |m: &Method| {
        let name = &m.name;
        let id_const = Grain::id_const(m);
        let arg_names: Vec<&syn::Ident> = m.args.iter().map(|(n, _)| n).collect();
        let arg_tys = m.args.iter().map(|(_, t)| t);
        let tuple = quote!((#(#arg_names,)*));
        let tuple_ty = quote!((#(#arg_tys,)*));
        let call = quote!(<__G as #trait_name>::#name(__grain, #(#arg_names),*).await);
        let encode = if let Some((_, error)) = &m.stream {
            match error {
                Some(_) => quote!(#p::encode_stream_result(__out, #call)),
                None => quote!(#p::encode_stream(__out, #call)),
            }
        } else if m.app_error.is_some() {
            quote! {
                match #call {
                    ::core::result::Result::Ok(__v) => #p::encode_ok(__out, &__v),
                    ::core::result::Result::Err(__e) => #p::encode_app_err(__out, &__e),
                }
            }
        } else {
            quote!(#p::encode_ok(__out, &#call))
        };
        quote! {
            #id_const => {
                let #tuple: #tuple_ty = match #p::decode_args(__args) {
                    ::core::result::Result::Ok(__a) => __a,
                    ::core::result::Result::Err(__status) => return __status,
                };
                #encode
            }
        }
    };
    let arms = g.methods.iter().map(arm);
    // An interface with #[interleave] methods runs its `&self` methods on a shared borrow,
    // beside interleaving calls: its grains must be `Sync`.
    let (bound, shared) = if interleaves {
        let shared_arms = g.methods.iter().filter(|m| m.shared).map(arm);
        let id_consts = g.id_consts();
        let shared = quote! {
            #[allow(unused_variables, clippy::unit_arg, clippy::let_unit_value)]
            fn dispatch_shared<'__a>(
                __grain: &'__a __G,
                __method: #p::MethodId,
                __bytes: #p::Bytes,
                mut __reply: #p::Reply,
            ) -> #p::SharedCall<'__a> {
                #(#id_consts)*
                ::std::boxed::Box::pin(async move {
                    let __status = {
                        let (__args, __out): (&[u8], &mut #p::Reply) = (&__bytes, &mut __reply);
                        async {
                            match __method {
                                #(#shared_arms)*
                                _ => #p::Status::UnknownMethod,
                            }
                        }
                        .await
                    };
                    (__status, __reply)
                })
            }
        };
        (quote!(#trait_name + ::core::marker::Sync), shared)
    } else {
        (quote!(#trait_name), quote!())
    };
    quote! {
        impl<__G: #bound> #p::Dispatch<__G> for #ref_name {
            #shared

            #[allow(unused_variables, clippy::unit_arg, clippy::let_unit_value)]
            fn dispatch<'__a>(
                __grain: &'__a mut __G,
                __method: #p::MethodId,
                __args: &'__a [u8],
                __out: &'__a mut #p::Reply,
            ) -> impl ::core::future::Future<Output = #p::Status> + ::core::marker::Send + '__a {
                #(#id_consts)*
                async move {
                    match __method {
                        #(#arms)*
                        _ => #p::Status::UnknownMethod,
                    }
                }
            }

            fn activate<'__a>(__grain: &'__a mut __G, __id: &'__a #p::GrainId) -> impl ::core::future::Future<Output = ()> + ::core::marker::Send + '__a {
                <__G as #trait_name>::on_activate(__grain, __id)
            }

            fn deactivate(__grain: &mut __G) -> impl ::core::future::Future<Output = ()> + ::core::marker::Send + '_ {
                <__G as #trait_name>::on_deactivate(__grain)
            }

            fn session_ended(__grain: &mut __G, __ended: #p::SessionEnded) -> impl ::core::future::Future<Output = ()> + ::core::marker::Send + '_ {
                <__G as #trait_name>::on_session_ended(__grain, __ended)
            }
        }
    }
}
