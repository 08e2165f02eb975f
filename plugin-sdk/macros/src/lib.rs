//! The `#[plugin]` attribute of `fastworker-plugin-sdk`. Use it through that crate.
//!
//! It reads an inline module, makes every `pub fn` in it a task, and generates for each
//! one an `extern "C"` entry point (decode arguments, call, encode the result, catch
//! panics) and a `TaskDescriptor`; then it exports the plugin's root module.

use proc_macro::TokenStream;
use proc_macro2::{Span, TokenStream as TokenStream2};
use quote::{format_ident, quote, ToTokens};
use syn::{
    parse::Parser, parse_macro_input, spanned::Spanned, Attribute, Expr, FnArg, Item, ItemFn,
    ItemMod, Lit, LitStr, ReturnType, Type,
};

/// Turns an inline module of functions into a fastworker plugin. See the SDK docs.
#[proc_macro_attribute]
pub fn plugin(attr: TokenStream, item: TokenStream) -> TokenStream {
    let module = parse_macro_input!(item as ItemMod);
    match expand(attr.into(), module) {
        Ok(tokens) => tokens.into(),
        Err(err) => err.to_compile_error().into(),
    }
}

#[derive(Default)]
struct PluginOptions {
    name: Option<LitStr>,
}

#[derive(Default)]
struct TaskOptions {
    name: Option<String>,
    max_retries: Option<u32>,
    retry_delay: Option<f64>,
    retry_backoff: Option<f64>,
    retry_backoff_max: Option<f64>,
    timeout: Option<f64>,
    priority: Option<String>,
    every: Option<f64>,
    cron: Option<String>,
    repeat_count: Option<u64>,
    repeat_until: Option<i64>,
}

fn lit_f64(expr: &Expr) -> syn::Result<f64> {
    if let Expr::Lit(l) = expr {
        match &l.lit {
            Lit::Int(i) => return i.base10_parse::<f64>(),
            Lit::Float(f) => return f.base10_parse::<f64>(),
            _ => {}
        }
    }
    Err(syn::Error::new(expr.span(), "expected a number"))
}

fn lit_int<T: std::str::FromStr>(expr: &Expr) -> syn::Result<T>
where
    T::Err: std::fmt::Display,
{
    if let Expr::Lit(l) = expr {
        if let Lit::Int(i) = &l.lit {
            return i.base10_parse::<T>();
        }
    }
    Err(syn::Error::new(expr.span(), "expected an integer"))
}

fn lit_str(expr: &Expr) -> syn::Result<String> {
    if let Expr::Lit(l) = expr {
        if let Lit::Str(s) = &l.lit {
            return Ok(s.value());
        }
    }
    Err(syn::Error::new(expr.span(), "expected a string"))
}

fn parse_task_options(attr: &Attribute) -> syn::Result<TaskOptions> {
    let mut opts = TaskOptions::default();
    if matches!(attr.meta, syn::Meta::Path(_)) {
        return Ok(opts);
    }
    attr.parse_nested_meta(|meta| {
        let key = meta
            .path
            .get_ident()
            .map(|i| i.to_string())
            .unwrap_or_default();
        let value: Expr = meta.value()?.parse()?;
        match key.as_str() {
            "name" => opts.name = Some(lit_str(&value)?),
            "max_retries" => opts.max_retries = Some(lit_int(&value)?),
            "retry_delay" => opts.retry_delay = Some(lit_f64(&value)?),
            "retry_backoff" => opts.retry_backoff = Some(lit_f64(&value)?),
            "retry_backoff_max" => opts.retry_backoff_max = Some(lit_f64(&value)?),
            "timeout" => opts.timeout = Some(lit_f64(&value)?),
            "priority" => {
                let p = lit_str(&value)?;
                if !["critical", "high", "normal", "low"].contains(&p.as_str()) {
                    return Err(meta.error("priority is one of critical, high, normal, low"));
                }
                opts.priority = Some(p);
            }
            "every" => opts.every = Some(lit_f64(&value)?),
            "cron" => opts.cron = Some(lit_str(&value)?),
            "repeat_count" => opts.repeat_count = Some(lit_int(&value)?),
            "repeat_until" => opts.repeat_until = Some(lit_int(&value)?),
            _ => return Err(meta.error(format!("unknown task option `{key}`"))),
        }
        Ok(())
    })?;
    if opts
        .every
        .is_some_and(|secs| !(secs > 0.0 && secs.is_finite()))
    {
        return Err(syn::Error::new(
            attr.span(),
            "`every` takes a positive number of seconds",
        ));
    }
    if (opts.repeat_count.is_some() || opts.repeat_until.is_some())
        && opts.every.is_none()
        && opts.cron.is_none()
    {
        return Err(syn::Error::new(
            attr.span(),
            "`repeat_count` and `repeat_until` go with `every` or `cron`",
        ));
    }
    if opts.every.is_some() && opts.cron.is_some() {
        return Err(syn::Error::new(
            attr.span(),
            "a task takes `every` or `cron`, not both",
        ));
    }
    if let Some(cron) = &opts.cron {
        if cron.split_whitespace().count() != 5 {
            return Err(syn::Error::new(
                attr.span(),
                "`cron` takes a 5-field expression",
            ));
        }
    }
    Ok(opts)
}

fn is_task_attr(attr: &Attribute) -> bool {
    attr.path().is_ident("task")
}

/// The first paragraph of the doc comment, on one line.
fn doc_line(attrs: &[Attribute]) -> String {
    // The first paragraph of the doc comment, its lines joined: a sentence wrapped over
    // two lines stays whole.
    let mut words: Vec<String> = Vec::new();
    for attr in attrs {
        if !attr.path().is_ident("doc") {
            continue;
        }
        if let syn::Meta::NameValue(nv) = &attr.meta {
            if let Ok(text) = lit_str(&nv.value) {
                let line = text.trim();
                if line.is_empty() {
                    if words.is_empty() {
                        continue;
                    }
                    break;
                }
                words.push(line.to_string());
            }
        }
    }
    words.join(" ")
}

/// Readable text for a type: `Vec<u8>` rather than `Vec < u8 >`.
fn type_text(tokens: impl ToTokens) -> String {
    let raw = tokens.to_token_stream().to_string();
    raw.replace(" :: ", "::")
        .replace(":: ", "::")
        .replace(" < ", "<")
        .replace("< ", "<")
        .replace(" <", "<")
        .replace(" >", ">")
        .replace(" ,", ",")
        .replace("& ", "&")
        .replace("' ", "'")
}

/// Is `ty` a reference to something named `Context`?
fn is_context_param(ty: &Type) -> bool {
    if let Type::Reference(r) = ty {
        if let Type::Path(p) = &*r.elem {
            return p.path.segments.last().is_some_and(|s| s.ident == "Context");
        }
    }
    false
}

/// Does the function return something named `Result`?
fn returns_result(output: &ReturnType) -> bool {
    if let ReturnType::Type(_, ty) = output {
        if let Type::Path(p) = &**ty {
            return p.path.segments.last().is_some_and(|s| s.ident == "Result");
        }
    }
    false
}

struct GeneratedTask {
    entry_point: TokenStream2,
    descriptor: TokenStream2,
}

fn generate_task(
    func: &ItemFn,
    opts: &TaskOptions,
    module: &syn::Ident,
) -> syn::Result<GeneratedTask> {
    let sig = &func.sig;
    if sig.asyncness.is_some() {
        return Err(syn::Error::new(
            sig.span(),
            "a task is a plain (not async) function",
        ));
    }
    if !sig.generics.params.is_empty() {
        return Err(syn::Error::new(
            sig.generics.span(),
            "a task cannot be generic",
        ));
    }
    let fn_name = &sig.ident;
    let task_name = opts.name.clone().unwrap_or_else(|| fn_name.to_string());
    let entry = format_ident!("__fastworker_call_{}", fn_name);

    let mut takes_context = false;
    let mut arg_types = Vec::new();
    for (index, input) in sig.inputs.iter().enumerate() {
        let FnArg::Typed(pat_ty) = input else {
            return Err(syn::Error::new(input.span(), "a task is a free function"));
        };
        if index == 0 && is_context_param(&pat_ty.ty) {
            takes_context = true;
            continue;
        }
        let name = pat_ty.pat.to_token_stream().to_string();
        arg_types.push((name, (*pat_ty.ty).clone()));
    }

    let arg_idents: Vec<_> = (0..arg_types.len())
        .map(|i| format_ident!("__arg{}", i))
        .collect();
    let types: Vec<_> = arg_types.iter().map(|(_, t)| t).collect();
    let param_list = arg_types
        .iter()
        .map(|(name, ty)| format!("{name}: {}", type_text(ty)))
        .collect::<Vec<_>>()
        .join(", ");
    let param_count = arg_types.len();
    let params = quote!(&::fastworker_plugin_sdk::__private::Params {
        task: #task_name,
        list: #param_list,
        count: #param_count,
    });
    let decode = if arg_types.is_empty() {
        quote!(::fastworker_plugin_sdk::__private::decode_no_args(__codec, __payload, #params)?;)
    } else {
        quote!(
            let (#(#arg_idents,)*): (#(#types,)*) =
                ::fastworker_plugin_sdk::__private::decode_args(__codec, __payload, #params)?;
        )
    };
    let ctx_arg = takes_context.then(|| quote!(__ctx,));
    let call = quote!(#fn_name(#ctx_arg #(#arg_idents),*));
    let finish = if returns_result(&sig.output) {
        quote!(match #call {
            ::core::result::Result::Ok(__out) => ::fastworker_plugin_sdk::__private::encode_output(__codec, &__out),
            ::core::result::Result::Err(__err) => ::core::result::Result::Err(::fastworker_plugin_sdk::__private::task_failed(__err)),
        })
    } else {
        quote!({
            let __out = #call;
            ::fastworker_plugin_sdk::__private::encode_output(__codec, &__out)
        })
    };
    let entry_point = quote! {
        #[doc(hidden)]
        pub(super) extern "C" fn #entry(
            ctx: &::fastworker_plugin_sdk::abi::TaskContext<'_>,
            codec: ::fastworker_plugin_sdk::abi::Codec,
            payload: ::fastworker_plugin_sdk::abi_stable::std_types::RSlice<'_, u8>,
        ) -> ::fastworker_plugin_sdk::abi_stable::std_types::RResult<
            ::fastworker_plugin_sdk::abi_stable::std_types::RVec<u8>,
            ::fastworker_plugin_sdk::abi::TaskError,
        > {
            #[allow(unused_variables)]
            ::fastworker_plugin_sdk::__private::invoke(ctx, codec, payload, |__ctx, __codec, __payload| {
                #decode
                #finish
            })
        }
    };

    let params: Vec<String> = arg_types
        .iter()
        .map(|(name, ty)| format!("{name}: {}", type_text(ty)))
        .collect();
    let ret = match &sig.output {
        ReturnType::Default => "()".to_string(),
        ReturnType::Type(_, ty) => type_text(ty),
    };
    let signature = format!("({}) -> {}", params.join(", "), ret);
    let doc = doc_line(&func.attrs);

    let schedule = match (&opts.every, &opts.cron) {
        (None, None) => quote!(::fastworker_plugin_sdk::abi::Schedule::NONE),
        (every, cron) => {
            let (kind, interval, cron) = match (every, cron) {
                (Some(secs), _) => (quote!(Interval), *secs, String::new()),
                (None, Some(c)) => (quote!(Cron), 0.0, c.clone()),
                (None, None) => unreachable!(),
            };
            let repeat_count = opts.repeat_count.unwrap_or(0);
            let repeat_until = opts.repeat_until.unwrap_or(0);
            quote!(::fastworker_plugin_sdk::abi::Schedule {
                kind: ::fastworker_plugin_sdk::abi::ScheduleKind::#kind,
                interval_secs: #interval,
                cron: ::fastworker_plugin_sdk::abi_stable::std_types::RStr::from_str(#cron),
                repeat_count: #repeat_count,
                repeat_until_unix: #repeat_until,
            })
        }
    };
    let priority = match opts.priority.as_deref().unwrap_or("normal") {
        "critical" => quote!(Critical),
        "high" => quote!(High),
        "low" => quote!(Low),
        _ => quote!(Normal),
    };
    let max_retries = opts.max_retries.unwrap_or(0);
    let retry_delay = opts.retry_delay.unwrap_or(60.0);
    let retry_backoff = opts.retry_backoff.unwrap_or(2.0);
    let retry_backoff_max = opts.retry_backoff_max.unwrap_or(3600.0);
    let timeout = opts.timeout.unwrap_or(0.0);
    let descriptor = quote! {
        ::fastworker_plugin_sdk::abi::TaskDescriptor {
            name: ::fastworker_plugin_sdk::abi_stable::std_types::RStr::from_str(#task_name),
            doc: ::fastworker_plugin_sdk::abi_stable::std_types::RStr::from_str(#doc),
            signature: ::fastworker_plugin_sdk::abi_stable::std_types::RStr::from_str(#signature),
            schedule: #schedule,
            max_retries: #max_retries,
            retry_delay_secs: #retry_delay,
            retry_backoff: #retry_backoff,
            retry_backoff_max_secs: #retry_backoff_max,
            timeout_secs: #timeout,
            priority: ::fastworker_plugin_sdk::abi::Priority::#priority,
            options_json: ::fastworker_plugin_sdk::abi_stable::std_types::RStr::from_str("{}"),
            call: #module::#entry,
        }
    };
    Ok(GeneratedTask {
        entry_point,
        descriptor,
    })
}

fn expand(attr: TokenStream2, mut module: ItemMod) -> syn::Result<TokenStream2> {
    let mut plugin_opts = PluginOptions::default();
    let parser = syn::meta::parser(|meta| {
        if meta.path.is_ident("name") {
            plugin_opts.name = Some(meta.value()?.parse()?);
            Ok(())
        } else {
            Err(meta.error("the only plugin option is `name = \"...\"`"))
        }
    });
    parser.parse2(attr)?;

    let module_ident = module.ident.clone();
    let Some((_, items)) = module.content.as_mut() else {
        return Err(syn::Error::new(
            module.span(),
            "#[plugin] goes on an inline module: `mod tasks { ... }`",
        ));
    };

    let mut entry_points = Vec::new();
    let mut descriptors = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for item in items.iter_mut() {
        let Item::Fn(func) = item else { continue };
        let task_attr = func.attrs.iter().find(|a| is_task_attr(a)).cloned();
        let is_pub = matches!(func.vis, syn::Visibility::Public(_));
        if !is_pub {
            if let Some(attr) = task_attr {
                return Err(syn::Error::new(
                    attr.span(),
                    "a #[task] function must be `pub`",
                ));
            }
            continue;
        }
        let opts = match &task_attr {
            Some(attr) => parse_task_options(attr)?,
            None => TaskOptions::default(),
        };
        func.attrs.retain(|a| !is_task_attr(a));
        let generated = generate_task(func, &opts, &module_ident)?;
        let name = opts
            .name
            .clone()
            .unwrap_or_else(|| func.sig.ident.to_string());
        if !seen.insert(name.clone()) {
            return Err(syn::Error::new(
                func.sig.span(),
                format!("two tasks named `{name}`"),
            ));
        }
        entry_points.push(generated.entry_point);
        descriptors.push(generated.descriptor);
    }
    if descriptors.is_empty() {
        return Err(syn::Error::new(
            module.span(),
            "a plugin needs at least one `pub fn` task",
        ));
    }
    for entry in entry_points {
        items.push(Item::Verbatim(entry));
    }

    let count = descriptors.len();
    let plugin_name = match plugin_opts.name {
        Some(name) => quote!(#name),
        None => quote!(env!("CARGO_PKG_NAME")),
    };
    let span = Span::call_site();
    let tasks_static = syn::Ident::new("__FASTWORKER_TASKS", span);
    Ok(quote! {
        #module

        #[doc(hidden)]
        static #tasks_static: [::fastworker_plugin_sdk::abi::TaskDescriptor; #count] = [#(#descriptors),*];

        #[doc(hidden)]
        pub fn __fastworker_root_module() -> ::fastworker_plugin_sdk::abi::PluginModuleRef {
            use ::fastworker_plugin_sdk::abi_stable::prefix_type::PrefixTypeTrait;
            ::fastworker_plugin_sdk::abi::PluginModule {
                abi_version: ::fastworker_plugin_sdk::abi::ABI_VERSION,
                sdk_version: ::fastworker_plugin_sdk::abi_stable::std_types::RStr::from_str(
                    ::fastworker_plugin_sdk::abi::SDK_VERSION,
                ),
                plugin_name: ::fastworker_plugin_sdk::abi_stable::std_types::RStr::from_str(#plugin_name),
                plugin_version: ::fastworker_plugin_sdk::abi_stable::std_types::RStr::from_str(env!("CARGO_PKG_VERSION")),
                tasks: ::fastworker_plugin_sdk::abi_stable::std_types::RSlice::from_slice(&#tasks_static),
                install_log: __fastworker_install_log,
            }
            .leak_into_prefix()
        }

        #[doc(hidden)]
        extern "C" fn __fastworker_install_log(
            sink: ::fastworker_plugin_sdk::abi::LogSink,
            level: ::fastworker_plugin_sdk::abi::LogLevel,
        ) {
            ::fastworker_plugin_sdk::__private::install_log(
                sink,
                level,
                #plugin_name,
                env!("CARGO_PKG_VERSION"),
            )
        }

        ::fastworker_plugin_sdk::export_plugin_module!(__fastworker_root_module);
    })
}
