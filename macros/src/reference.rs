//! The generated reference (`PlayerRef`): its methods, its own helpers (`id`, `cast`,
//! `with_timeout`, ...), and what makes it a value (equality, order, hashing, `Display`,
//! `Debug`, serde through the surrogate).

use proc_macro2::TokenStream as TokenStream2;
use quote::quote;

use crate::Grain;

/// `PlayerRef`: the typed reference clients call.
pub(crate) fn gen_reference(g: &Grain) -> TokenStream2 {
    let p = &g.p;
    let (vis, trait_name, ref_name) = (&g.tr.vis, &g.tr.ident, &g.ref_name);
    let (info_static, methods_static) = (&g.info_static, &g.methods_static);
    let methods = g.methods.iter().enumerate().map(|(i, m)| {
        let name = &m.name;
        let docs = &m.docs;
        let call_doc = format!("Calls `{name}` on the grain.");
        let arg_names: Vec<&syn::Ident> = m.args.iter().map(|(n, _)| n).collect();
        let arg_decls = m.args.iter().map(|(n, t)| quote!(#n: #t));
        let arg_tys = m.args.iter().map(|(_, t)| t);
        let tuple = quote!((#(#arg_names,)*));
        let tuple_ty = quote!((#(#arg_tys,)*));
        let info = quote!(&#methods_static[#i]);
        let out = &m.output;
        if let Some((item, error)) = &m.stream {
            let (out, open) = match error {
                Some(e) => (
                    quote!(#p::CallStream<#item, #e>),
                    quote!(stream_result::<#tuple_ty, #item, #e>),
                ),
                None => (quote!(#p::CallStream<#item>), quote!(stream::<#tuple_ty, #item>)),
            };
            quote! {
                #[doc = #call_doc]
                #(#docs)*
                /// A stream: opened now; read its items (in order, each once) and its typed end
                /// from what this returns. Dropping it stops the grain's producer.
                pub fn #name(&self, #(#arg_decls),*) -> #out {
                    self.inner.get().#open(#info, &#tuple)
                }
            }
        } else if m.one_way {
            quote! {
                #[doc = #call_doc]
                #(#docs)*
                /// One-way: queued reliably, in order with this grain's other calls; no response.
                pub async fn #name(&self, #(#arg_decls),*) -> ::core::result::Result<(), #p::CallError> {
                    self.inner.get().call_one_way::<#tuple_ty>(#info, &#tuple).await
                }
            }
        } else if let Some((ok, err)) = &m.app_error {
            quote! {
                #[doc = #call_doc]
                #(#docs)*
                pub async fn #name(&self, #(#arg_decls),*) -> ::core::result::Result<#ok, #p::CallError<#err>> {
                    self.inner.get().call_result::<#tuple_ty, #ok, #err>(#info, &#tuple).await
                }
            }
        } else {
            quote! {
                #[doc = #call_doc]
                #(#docs)*
                pub async fn #name(&self, #(#arg_decls),*) -> ::core::result::Result<#out, #p::CallError> {
                    self.inner.get().call::<#tuple_ty, #out>(#info, &#tuple).await
                }
            }
        }
    });
    let ref_doc = format!(
        "A reference to a `{trait_name}` grain, made by `Client::grain`: call its methods through the client. A value: compare, hash, order, print and send it in calls like any other."
    );
    let ref_str = ref_name.to_string();
    quote! {
        #[doc = #ref_doc]
        #[derive(Clone)]
        #vis struct #ref_name {
            inner: #p::Checked<#ref_name>,
        }

        impl #ref_name {
            #(#methods)*

            /// The interface's metadata: name, ids, version, contract hash, methods.
            pub fn info() -> &'static #p::InterfaceInfo {
                &#info_static
            }

            /// The grain's id.
            pub fn id(&self) -> &#p::GrainId {
                self.inner.get().id()
            }

            /// The same grain through another interface of its grain type (or another version
            /// of this one), checked against the servers' manifests: see `GrainRef::cast`.
            pub fn cast<__R: #p::GrainInterface>(&self) -> ::core::result::Result<__R, #p::ReferenceError> {
                self.inner.get().cast::<__R>()
            }

            /// The same reference with every call's deadline set to `timeout`.
            pub fn with_timeout(&self, timeout: #p::Duration) -> Self {
                Self { inner: self.inner.with_timeout(timeout) }
            }

            /// The same reference with calls routed by `affinity` (a preferred or a required
            /// server).
            pub fn with_affinity(&self, affinity: #p::Affinity) -> Self {
                Self { inner: self.inner.with_affinity(affinity) }
            }

            /// The same reference, sent to `server` while it is available (else routed as usual).
            pub fn prefer(&self, server: &#p::ServerId) -> Self {
                self.with_affinity(#p::Affinity::Preferred(server.clone()))
            }

            /// The same reference, sent only to `server` (`CallError::ServerUnavailable` when it
            /// is not available).
            pub fn require(&self, server: &#p::ServerId) -> Self {
                self.with_affinity(#p::Affinity::Required(server.clone()))
            }
        }

        impl #p::GrainInterface for #ref_name {
            fn from_checked(r: #p::Checked<Self>) -> Self {
                Self { inner: r }
            }
            fn grain_ref(&self) -> &#p::GrainRef {
                self.inner.get()
            }
        }

        // A value: equal, ordered and hashed by grain (and interface), shown as `Player/ann`,
        // serialized as its surrogate (a few bytes) and bound where it is decoded.
        impl ::core::cmp::PartialEq for #ref_name {
            fn eq(&self, __other: &Self) -> bool {
                self.inner.get() == __other.inner.get()
            }
        }

        impl ::core::cmp::Eq for #ref_name {}

        impl ::core::hash::Hash for #ref_name {
            fn hash<__H: ::core::hash::Hasher>(&self, __state: &mut __H) {
                ::core::hash::Hash::hash(self.inner.get(), __state)
            }
        }

        impl ::core::cmp::PartialOrd for #ref_name {
            fn partial_cmp(&self, __other: &Self) -> ::core::option::Option<::core::cmp::Ordering> {
                ::core::option::Option::Some(::core::cmp::Ord::cmp(self, __other))
            }
        }

        impl ::core::cmp::Ord for #ref_name {
            fn cmp(&self, __other: &Self) -> ::core::cmp::Ordering {
                ::core::cmp::Ord::cmp(self.inner.get(), __other.inner.get())
            }
        }

        impl ::core::fmt::Display for #ref_name {
            fn fmt(&self, __f: &mut ::core::fmt::Formatter<'_>) -> ::core::fmt::Result {
                ::core::fmt::Display::fmt(self.inner.get(), __f)
            }
        }

        impl ::core::fmt::Debug for #ref_name {
            fn fmt(&self, __f: &mut ::core::fmt::Formatter<'_>) -> ::core::fmt::Result {
                let __r = self.inner.get();
                if __f.alternate() {
                    __f.debug_tuple(#ref_str).field(__r).finish()
                } else {
                    __f.debug_tuple(#ref_str).field(&::core::format_args!("{}", __r)).finish()
                }
            }
        }

        impl #p::serde::Serialize for #ref_name {
            fn serialize<__S: #p::serde::Serializer>(&self, __s: __S) -> ::core::result::Result<__S::Ok, __S::Error> {
                #p::serde::Serialize::serialize(self.inner.get(), __s)
            }
        }

        impl<'__de> #p::serde::Deserialize<'__de> for #ref_name {
            fn deserialize<__D: #p::serde::Deserializer<'__de>>(__d: __D) -> ::core::result::Result<Self, __D::Error> {
                #p::deserialize_typed::<Self, __D>(__d).map(|__r| Self { inner: __r })
            }
        }
    }
}
