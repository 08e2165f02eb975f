//! Connecting a CLI command to the control plane: directly, or through discovery.

use std::time::Duration;

use crate::{
    cli::ConnectArgs,
    client::{Client, ClientError},
};

/// Connects as `args` say, waiting at most `--connect-timeout`.
pub async fn connect(args: &ConnectArgs) -> Result<Client, ClientError> {
    let timeout = Duration::from_secs_f64(args.connect_timeout.max(0.05));
    match &args.control_plane_address {
        Some(address) => Client::connect(address, timeout).await,
        None => Client::discover(&args.discovery_address, timeout).await,
    }
}
