//! `fastworker control-plane` and `fastworker subworker`: the command line turned into
//! the host library's configs, and the command line of the control plane's own
//! subworker (only the binary knows it).

use std::{ffi::OsString, path::Path, sync::Arc, time::Duration};

use fastworker_host::control_plane::{http::HttpConfig, server::Ready};

use fastworker_host::{
    control_plane::{
        own_worker::ChildCommand,
        server::{subworker_endpoint, ControlPlaneConfig, OwnWorker},
    },
    subworker::{ControlPlaneLocation, SubworkerConfig},
};

use crate::{
    cli::{ControlPlaneArgs, LogLevel, SubworkerArgs},
    protocol::{WorkerSecret, MAX_SPAN_SECS},
};

/// Seconds from the command line as a `Duration`, within `[min, max]`.
fn secs(value: f64, min: f64, max: f64) -> Duration {
    let value = if value.is_finite() { value } else { min };
    Duration::from_secs_f64(value.clamp(min, max))
}

/// The control plane's config.
pub fn control_plane_config(
    args: &ControlPlaneArgs,
    log_level: LogLevel,
    otlp_endpoint: Option<String>,
) -> anyhow::Result<ControlPlaneConfig> {
    let subworker_address = subworker_endpoint(&args.base_address, args.subworker_port);
    let mut listening = vec![args.base_address.as_str(), args.discovery_address.as_str()];
    if let Some(address) = &subworker_address {
        listening.push(address);
    }
    let transport = args
        .security
        .listen_config(&args.listen, &listening)
        .map_err(anyhow::Error::msg)?;
    let own_worker = if args.task_modules.is_empty() {
        None
    } else {
        let program = std::env::current_exe()
            .map_err(|e| anyhow::anyhow!("cannot find the fastworker binary: {e}"))?;
        let args = args.clone();
        Some(OwnWorker {
            task_modules: args.task_modules.clone(),
            command: Arc::new(move |address: &str, secret: &WorkerSecret| {
                let mut command = own_worker_command(&program, &args, log_level, address, secret);
                if let Some(endpoint) = &otlp_endpoint {
                    command
                        .args
                        .extend(["--otlp-endpoint".into(), endpoint.into()]);
                }
                command
            }),
        })
    };
    let dashboard = if !args.no_gui && args.gui_enabled {
        Some(dashboard_config(args, transport.key.clone())?)
    } else {
        None
    };
    Ok(ControlPlaneConfig {
        id: args.worker_id.clone(),
        base_address: args.base_address.clone(),
        subworker_address,
        discovery_address: args.discovery_address.clone(),
        transport,
        cache_size: args.result_cache_size as usize,
        cache_ttl: Duration::from_secs(args.result_cache_ttl),
        cache_max_bytes: args.result_cache_max_bytes,
        max_queued: args.max_queued,
        max_queued_bytes: args.max_queued_bytes,
        unserved_timeout: secs(args.unserved_timeout, 0.0, MAX_SPAN_SECS),
        inactive_after: secs(args.inactive_after, 0.1, MAX_SPAN_SECS),
        max_deliveries: args.max_deliveries.max(1),
        prefetch_per_slot: args.prefetch,
        max_payload_bytes: args.security.max_payload_size,
        shutdown_grace: secs(args.shutdown_grace, 0.0, MAX_SPAN_SECS),
        data_dir: args.data_dir.clone(),
        own_worker,
        dashboard,
    })
}

/// The dashboard's settings: `--gui-*`, and the API key from `FASTWORKER_GUI_API_KEY`
/// (only from the environment, so `ps` does not show it). A dashboard other machines
/// can reach needs a cluster key (then every request needs a token), or `--insecure`.
fn dashboard_config(
    args: &ControlPlaneArgs,
    cluster_key: Option<fastworker_transport::auth::ClusterKey>,
) -> anyhow::Result<HttpConfig> {
    let api_key = match std::env::var("FASTWORKER_GUI_API_KEY") {
        Ok(key) if key.trim().is_empty() => {
            tracing::warn!("FASTWORKER_GUI_API_KEY is empty: writes to the HTTP API need no key");
            None
        }
        Ok(key) => Some(key.trim().to_string()),
        Err(_) => None,
    };
    let host = args.gui_host.trim();
    let loopback = host.eq_ignore_ascii_case("localhost")
        || host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    if !loopback && cluster_key.is_none() && !args.listen.insecure {
        anyhow::bail!(
            "refusing to serve the dashboard on {host} without a cluster key: anyone who can reach it could read every task{}. Give --auth-key-file (the API then needs the key as a bearer token), keep --gui-host 127.0.0.1, or --insecure on a network you trust",
            if api_key.is_some() { "" } else { " and cancel or retry them" }
        );
    }
    Ok(HttpConfig {
        host: host.to_string(),
        port: args.gui_port,
        api_key,
        cluster_key,
        cors_origin: args.gui_cors_origin.clone(),
    })
}

/// The command line of the own subworker: the control plane's task flags, its limits,
/// and its address; the key and the worker secret go in the environment.
fn own_worker_command(
    program: &Path,
    args: &ControlPlaneArgs,
    log_level: LogLevel,
    address: &str,
    secret: &WorkerSecret,
) -> ChildCommand {
    let mut argv: Vec<OsString> = vec![
        "--log-level".into(),
        log_level.as_str().into(),
        "subworker".into(),
        "--plugin-dir".into(),
        args.plugins.plugin_dir.clone().into(),
        "--worker-id".into(),
        args.worker_id.clone().into(),
        "--control-plane-address".into(),
        address.into(),
        "--concurrency".into(),
        args.concurrency.max(1).to_string().into(),
        "--max-reloads".into(),
        args.max_reloads.to_string().into(),
        "--max-message-size".into(),
        args.security.max_message_size.to_string().into(),
        "--max-payload-size".into(),
        args.security.max_payload_size.to_string().into(),
        "--shutdown-grace".into(),
        args.shutdown_grace.to_string().into(),
        "--hung-task-grace".into(),
        args.hung_task_grace.to_string().into(),
    ];
    if args.no_watch {
        argv.push("--no-watch".into());
    }
    argv.push("--task-modules".into());
    argv.extend(args.task_modules.iter().map(Into::into));
    let mut env = vec![("FASTWORKER_WORKER_SECRET".to_string(), secret.to_hex())];
    if let Some(file) = &args.security.auth_key_file {
        let file = std::path::absolute(file).unwrap_or_else(|_| file.clone());
        env.push((
            "FASTWORKER_AUTH_KEY_FILE".into(),
            file.to_string_lossy().into_owned(),
        ));
    }
    ChildCommand {
        program: program.to_path_buf(),
        args: argv,
        env,
        inherit: vec!["FASTWORKER_AUTH_KEY".into(), "FASTWORKER_LOG".into()],
    }
}

/// The subworker's config.
pub fn subworker_config(args: &SubworkerArgs) -> anyhow::Result<SubworkerConfig> {
    let control_plane = match (&args.control_plane_address, &args.discovery_address) {
        (Some(address), _) => ControlPlaneLocation::Address(address.clone()),
        (None, Some(discovery)) => ControlPlaneLocation::Discovery(discovery.clone()),
        (None, None) => {
            anyhow::bail!("either --control-plane-address or --discovery-address is needed")
        }
    };
    let status_endpoint = match &args.base_address {
        Some(address) => {
            let config = args
                .security
                .listen_config(&args.listen, &[address.as_str()])
                .map_err(anyhow::Error::msg)?;
            Some((address.clone(), config))
        }
        None => None,
    };
    Ok(SubworkerConfig {
        worker_id: args.worker_id.clone(),
        control_plane,
        status_endpoint,
        task_modules: args.task_modules.clone(),
        plugin_dir: args.plugins.plugin_dir.clone(),
        concurrency: args.concurrency.max(1),
        inline_below: std::time::Duration::from_micros(args.inline_below_us),
        heartbeat_interval: secs(args.heartbeat_interval, 0.05, 3600.0),
        watch: !args.no_watch,
        max_reloads: args.max_reloads,
        hung_task_grace: secs(args.hung_task_grace, 0.0, MAX_SPAN_SECS),
        handback_after: secs(args.handback_after, 0.001, MAX_SPAN_SECS),
        shutdown_grace: secs(args.shutdown_grace, 0.0, 86_400.0),
        transport: args.security.transport_config()?,
        max_payload_bytes: args.security.max_payload_size,
    })
}

/// The line a control plane prints once it takes tasks: where it is, and a submit
/// command that works as printed — the binary as it was started (a path, or the bare
/// name when it was found on the PATH) and a task that is loaded (`add 5 3` when
/// served, else the first task that runs on demand, else the first one, with sample
/// arguments of its parameters' types).
pub fn ready_line(ready: &Ready) -> String {
    let program = super::program_name();
    let head = format!(
        "fastworker control plane `{}` ready on {}",
        ready.id, ready.endpoint
    );
    let task = ready
        .tasks
        .iter()
        .find(|t| t.spec.name == "add")
        .or_else(|| ready.tasks.iter().find(|t| t.spec.periodic.is_none()))
        .or_else(|| ready.tasks.first());
    let example = task.map(|t| match t.spec.name.as_str() {
        "add" => "--task-name add --args 5 3".to_string(),
        name => example_args(name, &t.spec.signature),
    });
    match example {
        Some(example) => format!(
            "{head}; submit with: {program} submit --control-plane-address {} {example}",
            ready.endpoint
        ),
        None => format!(
            "{head}; no task is served yet: start a subworker with --task-modules, or give the control plane --task-modules"
        ),
    }
}

/// `--task-name NAME --args 1 text` from a signature like `(n: u64, s: String) -> T`:
/// one sample value a parameter of that type takes, quoted for a shell.
fn example_args(name: &str, signature: &str) -> String {
    let params = signature
        .split_once('(')
        .and_then(|(_, rest)| rest.rsplit_once(") ->").or_else(|| rest.rsplit_once(')')))
        .map(|(params, _)| params)
        .unwrap_or("");
    let samples: Vec<&str> = split_params(params)
        .into_iter()
        .map(|param| sample_of(param.split_once(':').map_or("", |(_, ty)| ty.trim())))
        .collect();
    if samples.is_empty() {
        format!("--task-name {name}")
    } else {
        format!("--task-name {name} --args {}", samples.join(" "))
    }
}

/// The parameters of a list like `a: HashMap<String, u64>, b: (i32, i32)`, split on
/// the commas that are not inside brackets.
fn split_params(params: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let (mut depth, mut start) = (0i32, 0);
    for (i, c) in params.char_indices() {
        match c {
            '<' | '(' | '[' | '{' => depth += 1,
            '>' | ')' | ']' | '}' => depth -= 1,
            ',' if depth == 0 => {
                out.push(params[start..i].trim());
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(params[start..].trim());
    out.retain(|p| !p.is_empty());
    out
}

/// A value `--args` turns into something of type `ty`, as a shell word.
fn sample_of(ty: &str) -> &'static str {
    let ty = ty.trim_start_matches('&').trim();
    match ty {
        "i8" | "i16" | "i32" | "i64" | "i128" | "isize" | "u8" | "u16" | "u32" | "u64" | "u128"
        | "usize" => "1",
        "f32" | "f64" => "1.5",
        "bool" => "true",
        "String" | "str" | "char" => "text",
        _ if ty.starts_with("Vec<") || ty.starts_with('[') => "'[]'",
        _ if ty.starts_with("Option<") => "null",
        _ => "'{}'",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn example_arguments_fit_the_parameter_types() {
        assert_eq!(
            example_args("add_versioned", "(x: i64) -> String"),
            "--task-name add_versioned --args 1"
        );
        assert_eq!(
            example_args("greet", "(name: String, loud: bool) -> String"),
            "--task-name greet --args text true"
        );
        assert_eq!(
            example_args(
                "count",
                "(m: HashMap<String, u64>, xs: Vec<(i32, i32)>) -> u64"
            ),
            "--task-name count --args '{}' '[]'"
        );
        assert_eq!(example_args("tick", "() -> u64"), "--task-name tick");
    }
}
