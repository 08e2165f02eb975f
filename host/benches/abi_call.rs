//! The cost of calling a task through the plugin ABI, against calling it directly.
//!
//! Run it with:
//!
//! ```text
//! cargo build --release -p mytasks && cargo bench -p fastworker --bench abi_call
//! ```
//!
//! The plugin is loaded from the directory of the profile this benchmark was built in:
//! `cargo bench` builds in the `bench` profile, whose output goes to `target/release`,
//! so it loads `target/release/libmytasks.so`, which only `cargo build --release -p
//! mytasks` (or `--workspace`) builds; `cargo bench` does not build it by itself.
//! (Built in the test profile, e.g. by `cargo test --benches`, it loads
//! `target/debug/libmytasks.so` instead.)
//!
//! Every variant calls `add(x, y)` on two `i64`s:
//! - `direct`: a plain Rust call of `mytasks::tasks::add`, linked into this binary;
//! - `direct+json` / `direct+bincode`: the same call plus the encode and decode work the
//!   ABI path does (encode arguments, decode them, call, encode the result, decode it);
//! - `abi+json` / `abi+bincode`: the whole ABI round trip as a caller sees it: encode
//!   arguments, call the plugin's entry point through `call_task`, decode the result;
//! - `abi_call_only+json` / `abi_call_only+bincode`: `call_task` alone on a payload
//!   encoded beforehand (the plugin still decodes, calls and encodes inside).

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};

mod support;
use fastworker_host::plugin::{
    call::call_task, CallContext, PluginLoader, PluginRegistry, TaskInfo,
};
use fastworker_plugin_sdk::{codec, Codec};
use support::plugin_path;

fn load_add() -> TaskInfo {
    let loader = PluginLoader::new().expect("shadow directory");
    let plugin = loader
        .load(&plugin_path("mytasks", "cargo build --release -p mytasks"))
        .expect("mytasks loads");
    let mut registry = PluginRegistry::new();
    registry.insert(plugin).expect("no conflicts");
    // The library stays mapped after the loader is dropped (plugins are never
    // unloaded); only the shadow directory goes.
    registry
        .task("add")
        .expect("mytasks has `add`")
        .info()
        .clone()
}

/// Encode `(x, y)`, decode it, call `add`, encode the result, decode it: the codec work
/// of one ABI round trip without the ABI.
fn direct_with_codec(codec: Codec, x: i64, y: i64) -> i64 {
    let payload = codec::encode(codec, &(x, y)).unwrap();
    let (x, y): (i64, i64) = codec::decode(codec, &payload).unwrap();
    let result = codec::encode(codec, &mytasks::tasks::add(x, y)).unwrap();
    codec::decode(codec, &result).unwrap()
}

fn through_abi(add: &TaskInfo, ctx: &CallContext, codec: Codec, x: i64, y: i64) -> i64 {
    let payload = codec::encode(codec, &(x, y)).unwrap();
    let result = call_task(add, ctx, codec, &payload).unwrap();
    codec::decode(codec, &result).unwrap()
}

fn bench_add(c: &mut Criterion) {
    let add = load_add();
    let ctx = CallContext::default();
    assert_eq!(through_abi(&add, &ctx, Codec::Json, 2, 3), 5);
    assert_eq!(through_abi(&add, &ctx, Codec::Bincode, 2, 3), 5);

    let mut group = c.benchmark_group("add");
    group.bench_function("direct", |b| {
        b.iter(|| mytasks::tasks::add(black_box(2), black_box(3)))
    });
    for (label, codec) in [("json", Codec::Json), ("bincode", Codec::Bincode)] {
        group.bench_function(format!("direct+{label}"), |b| {
            b.iter(|| direct_with_codec(codec, black_box(2), black_box(3)))
        });
        group.bench_function(format!("abi+{label}"), |b| {
            b.iter(|| through_abi(&add, &ctx, codec, black_box(2), black_box(3)))
        });
        let payload = codec::encode(codec, &(2i64, 3i64)).unwrap();
        group.bench_function(format!("abi_call_only+{label}"), |b| {
            b.iter(|| call_task(&add, &ctx, codec, black_box(&payload)).unwrap())
        });
    }
    group.finish();
}

criterion_group!(benches, bench_add);
criterion_main!(benches);
