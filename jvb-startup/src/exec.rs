//! `exec`: gather the inputs, decide, tell, and become the bridge's entrypoint.

use std::net::IpAddr;
use std::os::unix::process::CommandExt;
use std::process::Command;

use crate::cli::{ExecArgs, Output};
use crate::plan::{Inputs, NodeLookup, Plan, PlanError, plan};
use crate::{hocon, node, service};

/// How often --advertise-from-service asks for the Service while its load balancer has no address.
const SERVICE_POLL: std::time::Duration = std::time::Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    #[error(transparent)]
    Plan(#[from] PlanError),
    #[error("{0}")]
    Usage(String),
    #[error("cannot write {path}: {source}")]
    WriteConfig { path: String, source: std::io::Error },
    #[error("cannot start the Node or Service lookup: {0}")]
    Runtime(std::io::Error),
    #[error(transparent)]
    Service(#[from] crate::service::ServiceError),
    #[error("cannot exec {command}: {source}")]
    Exec { command: String, source: std::io::Error },
}

impl ExecError {
    /// 2 for anything the operator must fix in the pod's configuration; 3 when the load balancer never
    /// got an address (the pod restarts and waits again); 127 when the command cannot run.
    pub fn exit_code(&self) -> u8 {
        match self {
            ExecError::Exec { .. } => 127,
            ExecError::Service(crate::service::ServiceError::NoAddress { .. }) => 3,
            _ => 2,
        }
    }
}

/// Reads the inputs `args` does not carry (HOSTNAME, JVB_MUC_NICKNAME) and looks the Node up if asked.
fn gather(args: &ExecArgs) -> Result<Inputs, ExecError> {
    let node_port_range: crate::plan::NodePortRange = args
        .node_port_range
        .parse()
        .map_err(|why| ExecError::Usage(format!("--node-port-range {why}")))?;
    let flag_given = args
        .advertise_ip
        .as_deref()
        .is_some_and(|ip| !ip.trim().is_empty());
    let service = args
        .advertise_from_service
        .as_deref()
        .map(str::trim)
        .filter(|name| !name.is_empty() && !flag_given);
    let wants_node = args.advertise_from_node && !flag_given;
    // A small runtime just for these requests, gone before the exec.
    let runtime = || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(ExecError::Runtime)
    };
    let service_addresses = match service {
        Some(name) => {
            let namespace = args
                .pod_namespace
                .as_deref()
                .map(str::trim)
                .filter(|n| !n.is_empty());
            runtime()?.block_on(service::wait_for_address(
                name,
                namespace,
                args.service_wait,
                SERVICE_POLL,
            ))?
        }
        None => Vec::new(),
    };
    let node = if wants_node {
        runtime()?.block_on(node::lookup(args.node_name.as_deref()))
    } else {
        NodeLookup::NotRequested
    };
    Ok(Inputs {
        pod_name: args.pod_name.clone().or_else(|| std::env::var("HOSTNAME").ok()),
        base_port: args.base_port.clone(),
        advertise_ip: args.advertise_ip.clone(),
        service_addresses,
        node,
        host_ip: args.host_ip.clone(),
        muc_nickname: std::env::var("JVB_MUC_NICKNAME").ok(),
        node_port_range,
        require_public: args.require_public_address,
    })
}

/// Returns only on failure: on success the process has become the command.
pub fn run(args: &ExecArgs) -> Result<(), ExecError> {
    let inputs = gather(args)?;
    let plan = plan(&inputs)?;
    for warning in &plan.warnings {
        tracing::warn!("{warning}");
    }
    if args.dry_run {
        print_plan(&plan, args.output);
        return Ok(());
    }
    if let Some(path) = &args.write_config {
        let local = args
            .pod_ip
            .as_deref()
            .and_then(|ip| ip.trim().parse::<IpAddr>().ok());
        hocon::write_atomically(path, &hocon::render(&plan, local)).map_err(|source| {
            ExecError::WriteConfig {
                path: path.display().to_string(),
                source,
            }
        })?;
    }
    let Some((program, rest)) = args.command.split_first() else {
        return Err(ExecError::Usage(
            "nothing to exec: give the command after --, e.g. -- /init".to_owned(),
        ));
    };
    tracing::info!(port = plan.port, command = %program, "{}", plan.summary());
    // exec(2): this process becomes the command, keeping its PID (s6-overlay's /init must be PID 1).
    let error = Command::new(program)
        .args(rest)
        .envs(plan.env.iter().map(|(k, v)| (k, v)))
        .exec();
    Err(ExecError::Exec {
        command: program.clone(),
        source: error,
    })
}

fn print_plan(plan: &Plan, output: Output) {
    match output {
        Output::Plain => {
            println!("{}", plan.summary());
            for (key, value) in &plan.env {
                println!("{key}={value}");
            }
        }
        Output::Json => match serde_json::to_string_pretty(plan) {
            Ok(json) => println!("{json}"),
            Err(error) => tracing::error!(%error, "cannot print the decision as JSON"),
        },
    }
}
