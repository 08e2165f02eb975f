//! Submits `add 5 3` to a fastworker control plane and prints the result.
//!
//! ```sh
//! cargo run -- tcp://127.0.0.1:5555     # prints 8
//! ```
//!
//! With a cluster key, set `FASTWORKER_AUTH_KEY` (the key's 64 hex digits).

use std::time::Duration;

use fastworker_client::{Client, ClusterKey, TransportConfig};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let address = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "tcp://127.0.0.1:5555".to_string());
    let key = match std::env::var("FASTWORKER_AUTH_KEY") {
        Ok(text) if !text.trim().is_empty() => Some(ClusterKey::parse(&text)?),
        _ => None,
    };
    let config = TransportConfig::default().with_key(key);
    let client = Client::connect_with(&address, Duration::from_secs(5), &config).await?;
    let sum: i64 = client.call("add", &(5i64, 3i64)).await?;
    println!("{sum}");
    Ok(())
}
