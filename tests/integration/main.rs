//! The one integration-test binary: it drives the real `fastworker` executable and
//! loads the real plugins cargo built (`cargo build --workspace` builds them).

mod cluster;
mod hostile;
mod lifecycle;
mod plugins;
mod procs;
mod reload;
mod support;
