//! The one integration-test binary: it drives the real `fastworker` executable and
//! loads the real plugins cargo built (`cargo build --workspace` builds them).

mod auth;
mod bench;
mod browser;
mod cli;
mod cluster;
mod dashboard;
mod durable;
mod faults;
mod hostile;
mod http;
mod lifecycle;
mod memory;
mod netns;
mod otlp;
mod plugins;
mod prefetch;
mod procs;
mod reload;
mod scaffold;
mod support;
mod traces;
mod upgrade;
