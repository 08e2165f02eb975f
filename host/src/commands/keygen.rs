//! `fastworker keygen FILE`: a new random cluster key, readable by its owner only.

use std::io::Write;

use crate::{cli::KeygenArgs, transport::auth::ClusterKey};

/// Writes a new key to `args.file` (never over an existing file); returns what to print.
pub fn run(args: &KeygenArgs) -> anyhow::Result<String> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(&args.file).map_err(|e| {
        anyhow::anyhow!(
            "cannot create {}: {e}{}",
            args.file.display(),
            if e.kind() == std::io::ErrorKind::AlreadyExists {
                " (an existing key file is never overwritten)"
            } else {
                ""
            }
        )
    })?;
    file.write_all(ClusterKey::generate().as_bytes())?;
    file.sync_all()?;
    Ok(format!(
        "wrote a new cluster key to {} (mode 0600); give it to every process: --auth-key-file {}\n",
        args.file.display(),
        args.file.display()
    ))
}
