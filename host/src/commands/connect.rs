//! Connecting a CLI command to the control plane: directly, or through discovery.

use std::time::Duration;

use crate::{
    cli::ConnectArgs,
    client::{Client, ClientError},
};

/// Connects as `args` say, waiting at most `--connect-timeout`.
pub async fn connect(args: &ConnectArgs) -> Result<Client, ClientError> {
    let timeout = Duration::from_secs_f64(args.connect_timeout.max(0.05));
    let config = args
        .security
        .transport_config()
        .map_err(|e| ClientError::Settings(e.to_string()))?;
    match &args.control_plane_address {
        Some(address) => Client::connect_with(address, timeout, &config).await,
        None => Client::discover_with(&args.discovery_address, timeout, &config).await,
    }
}
