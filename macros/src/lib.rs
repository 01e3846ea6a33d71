//! `#[lumen::remote]` and `#[lumen::actor]`: registration at link time and
//! typed handles. Use them through the `lumen` crate (`lumen::remote`,
//! `lumen::actor`); the generated code names only `::lumen` paths.
//!
//! # What `#[remote]` generates
//! For `fn add(a: u64, b: u64) -> u64` in module `m`:
//! - the function itself, unchanged (callable locally);
//! - `struct add` (type namespace only, so it coexists with the function)
//!   implementing `lumen::runtime::RemoteFunction`, with `add::remote(&rt,
//!   a, b)` and `add::options()` (a builder whose `.remote(&rt, a, b)` takes
//!   the same arguments). Each argument is `impl IntoArg<T>`: a value or an
//!   `ObjectRef<T>` (resolved where the task runs);
//! - a `linkme` entry in `lumen::__private::REMOTE_FUNCTIONS` with the
//!   function's stable id: an FNV-1a hash of `m::add`, its argument types and
//!   its return type, identical in every process that runs the same binary.
//!
//! A function returning `Result<T, E>` (by the last path segment's name)
//! yields `ObjectRef<T>`; an `Err` reaches the caller as a task error with
//! `E`'s `Display` text.
//!
//! # What `#[actor]` generates
//! On the struct: nothing (it marks the type for readers). On `impl Counter`:
//! the impl unchanged, `Counter::new_remote(&rt, args of new)`,
//! `Counter::actor_options()` (builder with `.new_remote(...)`), one
//! registry entry for the class (its `new`) and one per method with a
//! `self` receiver, and a methods type that `ActorHandle<Counter>`
//! dereferences to, so `handle.incr(5)` submits `incr` and returns an
//! `ObjectRef`. Generated items take the visibility of `new` (the handle
//! type) and of each method (its remote wrapper).

use proc_macro::TokenStream;
use proc_macro2::{Span, TokenStream as TokenStream2};
use quote::{format_ident, quote, ToTokens};
use syn::spanned::Spanned;
use syn::{
    parse_macro_input, FnArg, GenericArgument, ImplItem, ImplItemFn, Item, ItemFn, ItemImpl, Pat,
    PathArguments, ReturnType, Signature, Type, Visibility,
};

/// Registers a plain function as a remote function; see the crate docs.
#[proc_macro_attribute]
pub fn remote(attr: TokenStream, item: TokenStream) -> TokenStream {
    if !attr.is_empty() {
        return syn::Error::new(
            Span::call_site(),
            "#[lumen::remote] takes no arguments; give per-call options with `f::options()`",
        )
        .to_compile_error()
        .into();
    }
    let function = parse_macro_input!(item as ItemFn);
    match expand_remote(&function) {
        Ok(tokens) => tokens.into(),
        Err(error) => error.to_compile_error().into(),
    }
}

/// Marks an actor struct, or registers the methods of its `impl` block; see
/// the crate docs.
#[proc_macro_attribute]
pub fn actor(attr: TokenStream, item: TokenStream) -> TokenStream {
    if !attr.is_empty() {
        return syn::Error::new(
            Span::call_site(),
            "#[lumen::actor] takes no arguments; give options with `Type::actor_options()`",
        )
        .to_compile_error()
        .into();
    }
    let parsed = parse_macro_input!(item as Item);
    let result = match &parsed {
        Item::Struct(_) | Item::Enum(_) => Ok(parsed.to_token_stream()),
        Item::Impl(block) => expand_actor_impl(block),
        other => Err(syn::Error::new(
            other.span(),
            "#[lumen::actor] goes on a struct and on its inherent impl block",
        )),
    };
    match result {
        Ok(tokens) => tokens.into(),
        Err(error) => error.to_compile_error().into(),
    }
}

/// One argument of a remote function or method.
struct Argument {
    name: syn::Ident,
    ty: Type,
}

/// Arguments of `sig` after the receiver; rejects patterns and references.
fn arguments(sig: &Signature) -> syn::Result<Vec<Argument>> {
    let mut out = Vec::new();
    for (index, input) in sig.inputs.iter().enumerate() {
        let FnArg::Typed(typed) = input else {
            continue;
        };
        if let Type::Reference(reference) = &*typed.ty {
            return Err(syn::Error::new(
                reference.span(),
                "arguments of remote functions and actor methods travel by value: take an owned type (String, Vec<T>, ObjectRef<T>), not a reference",
            ));
        }
        let name = match &*typed.pat {
            Pat::Ident(ident) => ident.ident.clone(),
            _ => format_ident!("__lumen_arg{}", index),
        };
        out.push(Argument {
            name,
            ty: (*typed.ty).clone(),
        });
    }
    Ok(out)
}

fn reject_generics(sig: &Signature) -> syn::Result<()> {
    if !sig.generics.params.is_empty() || sig.generics.where_clause.is_some() {
        return Err(syn::Error::new(
            sig.generics.span(),
            "remote functions and actor methods cannot be generic: each needs one stable id in the binary",
        ));
    }
    if sig.asyncness.is_some() {
        return Err(syn::Error::new(
            sig.asyncness.span(),
            "async remote functions are not supported; make it a plain fn",
        ));
    }
    Ok(())
}

/// `(output type, returns Result)`: `Result<T, E>` and `lumen::Result<T>`
/// (by the last segment's name) give `T`.
fn output_type(ret: &ReturnType) -> (Type, bool) {
    let ty = match ret {
        ReturnType::Default => return (syn::parse_quote!(()), false),
        ReturnType::Type(_, ty) => (**ty).clone(),
    };
    if let Type::Path(path) = &ty {
        if let Some(last) = path.path.segments.last() {
            if last.ident == "Result" {
                if let PathArguments::AngleBracketed(args) = &last.arguments {
                    if let Some(GenericArgument::Type(inner)) = args.args.first() {
                        return (inner.clone(), true);
                    }
                }
            }
        }
    }
    (ty, false)
}

/// The text hashed into a stable id: path, argument types, return type.
fn signature_text(sig: &Signature) -> String {
    let args: Vec<String> = sig
        .inputs
        .iter()
        .map(|input| match input {
            FnArg::Receiver(receiver) => receiver.to_token_stream().to_string(),
            FnArg::Typed(typed) => typed.ty.to_token_stream().to_string(),
        })
        .collect();
    format!("({}) {}", args.join(", "), sig.output.to_token_stream())
}

/// `visibility` made one level wider for items that move into a nested
/// scope: none here, the generated items sit beside the original.
fn same_visibility(vis: &Visibility) -> TokenStream2 {
    vis.to_token_stream()
}

fn expand_remote(function: &ItemFn) -> syn::Result<TokenStream2> {
    let sig = &function.sig;
    reject_generics(sig)?;
    if let Some(FnArg::Receiver(receiver)) = sig.inputs.first() {
        return Err(syn::Error::new(
            receiver.span(),
            "#[lumen::remote] is for free functions; for methods with state use #[lumen::actor]",
        ));
    }
    let vis = same_visibility(&function.vis);
    let name = &sig.ident;
    let name_text = name.to_string();
    let args = arguments(sig)?;
    let (output, returns_result) = output_type(&sig.output);
    let call_struct = format_ident!("__lumen_call_{}", name);
    let entry = format_ident!("__LUMEN_REMOTE_{}", name.to_string().to_uppercase());
    let signature = signature_text(sig);
    let names: Vec<_> = args.iter().map(|a| &a.name).collect();
    let types: Vec<_> = args.iter().map(|a| &a.ty).collect();
    let params = quote! { #( #names: impl ::lumen::IntoArg<#types> ),* };
    let call = if returns_result {
        quote! { ::lumen::__private::TaskReturn::into_task_result(#name(#(#names),*))? }
    } else {
        quote! { #name(#(#names),*) }
    };
    let doc_handle = format!(
        "Remote handle of [`{name_text}`](fn@{name_text}): `{name_text}::remote(&rt, ...)` runs it as a task."
    );
    let doc_call = format!("Per-call options of the remote function `{name_text}`.");
    Ok(quote! {
        #function

        #[doc = #doc_handle]
        #[allow(non_camel_case_types, dead_code)]
        #vis struct #name {
            _private: (),
        }

        #[doc = #doc_call]
        #[allow(non_camel_case_types, dead_code)]
        #[doc(hidden)]
        #vis struct #call_struct {
            options: ::lumen::TaskOptions,
        }

        impl ::lumen::runtime::RemoteFunction for #name {
            type Output = #output;
            const ID: u64 = ::lumen::__private::stable_id(
                ::core::concat!(::core::module_path!(), "::", #name_text, #signature),
            );
            const NAME: &'static str = ::core::concat!(::core::module_path!(), "::", #name_text);
        }

        #[allow(dead_code)]
        impl #name {
            /// Submits this function as a task with default options.
            #vis fn remote(
                rt: &::lumen::Runtime,
                #params
            ) -> ::lumen::Result<::lumen::ObjectRef<#output>> {
                Self::options().remote(rt, #(#names),*)
            }

            /// Options for one call: `.num_cpus(2).max_retries(3).remote(&rt, ...)`.
            #vis fn options() -> #call_struct {
                #call_struct { options: ::lumen::TaskOptions::default() }
            }
        }

        #[allow(dead_code)]
        impl #call_struct {
            ::lumen::__task_option_methods!([#vis]);

            /// Submits the task with these options.
            #vis fn remote(
                self,
                rt: &::lumen::Runtime,
                #params
            ) -> ::lumen::Result<::lumen::ObjectRef<#output>> {
                let args = ( #( ::lumen::IntoArg::<#types>::into_arg(#names), )* );
                rt.__submit_task::<#name, _>(&args, self.options)
            }
        }

        #[::lumen::__private::linkme::distributed_slice(::lumen::__private::REMOTE_FUNCTIONS)]
        #[linkme(crate = ::lumen::__private::linkme)]
        #[allow(non_upper_case_globals)]
        static #entry: ::lumen::__private::RemoteEntry = ::lumen::__private::RemoteEntry {
            id: <#name as ::lumen::runtime::RemoteFunction>::ID,
            name: <#name as ::lumen::runtime::RemoteFunction>::NAME,
            invoke: {
                fn invoke(
                    args: &[u8],
                ) -> ::core::result::Result<::std::vec::Vec<u8>, ::lumen::__private::TaskFailure> {
                    let ( #( #names, )* ): ( #( ::lumen::__private::Arg<#types>, )* ) =
                        ::lumen::__private::decode_args(args)?;
                    #( let #names = #names.resolve()?; )*
                    let output: #output = #call;
                    ::lumen::__private::encode_output(&output)
                }
                invoke
            },
        };
    })
}

fn self_type_name(block: &ItemImpl) -> syn::Result<syn::Ident> {
    if let Some((_, path, _)) = &block.trait_ {
        return Err(syn::Error::new(
            path.span(),
            "#[lumen::actor] goes on the inherent impl block (impl Type { ... }), not a trait impl",
        ));
    }
    if !block.generics.params.is_empty() {
        return Err(syn::Error::new(
            block.generics.span(),
            "actors cannot be generic: each class needs one stable id in the binary",
        ));
    }
    match &*block.self_ty {
        Type::Path(path) if path.qself.is_none() => path
            .path
            .segments
            .last()
            .map(|segment| segment.ident.clone())
            .ok_or_else(|| syn::Error::new(path.span(), "expected a type name")),
        other => Err(syn::Error::new(other.span(), "expected a type name")),
    }
}

fn expand_actor_impl(block: &ItemImpl) -> syn::Result<TokenStream2> {
    let class = self_type_name(block)?;
    let class_text = class.to_string();
    let methods_struct = format_ident!("__lumen_{}_methods", class);
    let create_struct = format_ident!("__lumen_{}_create", class);
    let class_entry = format_ident!("__LUMEN_ACTOR_{}", class.to_string().to_uppercase());

    let mut constructor: Option<&ImplItemFn> = None;
    let mut methods: Vec<&ImplItemFn> = Vec::new();
    for item in &block.items {
        let ImplItem::Fn(function) = item else {
            continue;
        };
        match function.sig.inputs.first() {
            Some(FnArg::Receiver(receiver)) => {
                if receiver.reference.is_none() {
                    return Err(syn::Error::new(
                        receiver.span(),
                        "actor methods take &self or &mut self (the actor keeps its state)",
                    ));
                }
                reject_generics(&function.sig)?;
                methods.push(function);
            }
            _ if function.sig.ident == "new" => {
                reject_generics(&function.sig)?;
                constructor = Some(function);
            }
            _ => {}
        }
    }
    let Some(new) = constructor else {
        return Err(syn::Error::new(
            block.self_ty.span(),
            "an actor's impl block needs a constructor `fn new(...) -> Self`",
        ));
    };
    let (_, new_returns_result) = output_type(&new.sig.output);
    let vis = same_visibility(&new.vis);
    let new_args = arguments(&new.sig)?;
    let new_names: Vec<_> = new_args.iter().map(|a| &a.name).collect();
    let new_types: Vec<_> = new_args.iter().map(|a| &a.ty).collect();
    let new_params = quote! { #( #new_names: impl ::lumen::IntoArg<#new_types> ),* };
    let construct = if new_returns_result {
        quote! { ::lumen::__private::TaskReturn::into_task_result(#class::new(#(#new_names),*))? }
    } else {
        quote! { #class::new(#(#new_names),*) }
    };

    let mut wrappers = Vec::new();
    let mut entries = Vec::new();
    for method in &methods {
        let sig = &method.sig;
        let method_name = &sig.ident;
        let method_text = method_name.to_string();
        let method_vis = &method.vis;
        let args = arguments(sig)?;
        let names: Vec<_> = args.iter().map(|a| &a.name).collect();
        let types: Vec<_> = args.iter().map(|a| &a.ty).collect();
        let (output, returns_result) = output_type(&sig.output);
        let signature = signature_text(sig);
        let call = if returns_result {
            quote! { ::lumen::__private::TaskReturn::into_task_result(state.#method_name(#(#names),*))? }
        } else {
            quote! { state.#method_name(#(#names),*) }
        };
        let entry = format_ident!(
            "__LUMEN_METHOD_{}_{}",
            class.to_string().to_uppercase(),
            method_text.to_uppercase()
        );
        let doc = format!("Calls `{class_text}::{method_text}` on the actor; runs in submission order per caller.");
        let id = quote! {
            ::lumen::__private::stable_id(::core::concat!(
                ::core::module_path!(), "::", #class_text, "::", #method_text, #signature
            ))
        };
        wrappers.push(quote! {
            #[doc = #doc]
            #method_vis fn #method_name(
                &self,
                #( #names: impl ::lumen::IntoArg<#types> ),*
            ) -> ::lumen::Result<::lumen::ObjectRef<#output>> {
                let args = ( #( ::lumen::IntoArg::<#types>::into_arg(#names), )* );
                self.raw.__call::<#output, _>(
                    #id,
                    ::core::concat!(::core::module_path!(), "::", #class_text, "::", #method_text),
                    &args,
                )
            }
        });
        entries.push(quote! {
            #[::lumen::__private::linkme::distributed_slice(::lumen::__private::ACTOR_METHODS)]
            #[linkme(crate = ::lumen::__private::linkme)]
            #[allow(non_upper_case_globals)]
            static #entry: ::lumen::__private::ActorMethodEntry = ::lumen::__private::ActorMethodEntry {
                id: #id,
                class_id: <#class as ::lumen::runtime::ActorClass>::CLASS_ID,
                name: ::core::concat!(::core::module_path!(), "::", #class_text, "::", #method_text),
                invoke: {
                    fn invoke(
                        state: &mut (dyn ::core::any::Any + ::core::marker::Send),
                        args: &[u8],
                    ) -> ::core::result::Result<::std::vec::Vec<u8>, ::lumen::__private::TaskFailure> {
                        let state = state
                            .downcast_mut::<#class>()
                            .ok_or_else(::lumen::__private::TaskFailure::wrong_actor_class)?;
                        let ( #( #names, )* ): ( #( ::lumen::__private::Arg<#types>, )* ) =
                            ::lumen::__private::decode_args(args)?;
                        #( let #names = #names.resolve()?; )*
                        let output: #output = #call;
                        ::lumen::__private::encode_output(&output)
                    }
                    invoke
                },
            };
        });
    }
    let new_signature = signature_text(&new.sig);
    let methods_doc = format!("Remote methods of actor `{class_text}` (what `ActorHandle<{class_text}>` dereferences to).");
    Ok(quote! {
        #block

        #[doc = #methods_doc]
        #[doc(hidden)]
        #[allow(non_camel_case_types, dead_code)]
        #[derive(Clone, Debug)]
        #vis struct #methods_struct {
            raw: ::lumen::runtime::RawActorHandle,
        }

        impl ::core::convert::From<::lumen::runtime::RawActorHandle> for #methods_struct {
            fn from(raw: ::lumen::runtime::RawActorHandle) -> Self {
                #methods_struct { raw }
            }
        }

        impl ::core::convert::AsRef<::lumen::runtime::RawActorHandle> for #methods_struct {
            fn as_ref(&self) -> &::lumen::runtime::RawActorHandle {
                &self.raw
            }
        }

        #[allow(dead_code)]
        impl #methods_struct {
            #( #wrappers )*
        }

        impl ::lumen::runtime::ActorClass for #class {
            const CLASS_ID: u64 = ::lumen::__private::stable_id(
                ::core::concat!(::core::module_path!(), "::", #class_text, #new_signature),
            );
            const CLASS_NAME: &'static str = ::core::concat!(::core::module_path!(), "::", #class_text);
            type Methods = #methods_struct;
        }

        #[doc(hidden)]
        #[allow(non_camel_case_types, dead_code)]
        #vis struct #create_struct {
            options: ::lumen::ActorOptions,
        }

        #[allow(dead_code)]
        impl #create_struct {
            ::lumen::__actor_option_methods!([#vis]);

            /// Creates one such actor per planned GPU of `plan`, with these
            /// options (see `lumen::runtime::mesh`).
            #vis fn new_mesh(
                self,
                rt: &::lumen::Runtime,
                plan: &::lumen::shard::ShardPlan,
                #new_params
            ) -> ::lumen::Result<::lumen::ActorMesh<#class>> {
                let args = ( #( ::lumen::IntoArg::<#new_types>::into_arg(#new_names), )* );
                rt.__create_actor_mesh::<#class, _>(plan, &args, self.options)
            }

            /// Creates the actor with these options.
            #vis fn new_remote(
                self,
                rt: &::lumen::Runtime,
                #new_params
            ) -> ::lumen::Result<::lumen::ActorHandle<#class>> {
                let args = ( #( ::lumen::IntoArg::<#new_types>::into_arg(#new_names), )* );
                rt.__create_actor::<#class, _>(&args, self.options)
            }
        }

        #[allow(dead_code)]
        impl #class {
            /// Creates this actor on a rank the scheduler picks; returns its handle.
            #vis fn new_remote(
                rt: &::lumen::Runtime,
                #new_params
            ) -> ::lumen::Result<::lumen::ActorHandle<#class>> {
                Self::actor_options().new_remote(rt, #(#new_names),*)
            }

            /// Options for creating this actor: `.rank(1).name("counter").new_remote(&rt, ...)`.
            #vis fn actor_options() -> #create_struct {
                #create_struct { options: ::lumen::ActorOptions::default() }
            }

            /// Options for creating a mesh of this actor:
            /// `.num_gpus(1.0).new_mesh(&rt, &plan, ...)`.
            #vis fn mesh_options() -> #create_struct {
                Self::actor_options()
            }
        }

        #[allow(clippy::unused_unit)]
        impl ::lumen::runtime::ActorNew for #class {
            type Args = ( #( #new_types, )* );
            type Wrapped = ( #( ::lumen::__private::Arg<#new_types>, )* );
            fn wrap(args: Self::Args) -> Self::Wrapped {
                let ( #( #new_names, )* ) = args;
                ( #( ::lumen::IntoArg::<#new_types>::into_arg(#new_names), )* )
            }
        }

        #[::lumen::__private::linkme::distributed_slice(::lumen::__private::ACTOR_CLASSES)]
        #[linkme(crate = ::lumen::__private::linkme)]
        #[allow(non_upper_case_globals)]
        static #class_entry: ::lumen::__private::ActorClassEntry = ::lumen::__private::ActorClassEntry {
            id: <#class as ::lumen::runtime::ActorClass>::CLASS_ID,
            name: <#class as ::lumen::runtime::ActorClass>::CLASS_NAME,
            construct: {
                fn construct(
                    args: &[u8],
                ) -> ::core::result::Result<
                    ::std::boxed::Box<dyn ::core::any::Any + ::core::marker::Send>,
                    ::lumen::__private::TaskFailure,
                > {
                    let ( #( #new_names, )* ): ( #( ::lumen::__private::Arg<#new_types>, )* ) =
                        ::lumen::__private::decode_args(args)?;
                    #( let #new_names = #new_names.resolve()?; )*
                    let state: #class = #construct;
                    ::core::result::Result::Ok(::std::boxed::Box::new(state))
                }
                construct
            },
        };

        #( #entries )*
    })
}
