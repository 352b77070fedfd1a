//! The `mignet` binary: thin glue over the library.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use mignet::{parse_cidrs, ClusterNetworks, RolloutSettings};

#[derive(Parser)]
#[command(
    name = "mignet",
    version,
    about = "Live-migration traffic on a dedicated, encrypted secondary network"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the cluster manager (network rollout controller).
    Manager {
        /// Namespace of the HyperConverged CR, the agent DaemonSet and the migration NAD.
        #[arg(long, default_value = "mignet-system")]
        namespace: String,
        /// Name of the HyperConverged CR holding the migration config.
        #[arg(long, default_value = "kubevirt-hyperconverged")]
        hyperconverged: String,
        /// Name of the node-agent DaemonSet whose pod template carries the network annotation.
        #[arg(long, default_value = "mignet-agent")]
        agent_daemonset: String,
        /// Cluster pod network CIDR(s); a migration range must not overlap them.
        #[arg(long, required = true)]
        pod_cidr: Vec<String>,
        /// Cluster service network CIDR(s); a migration range must not overlap them.
        #[arg(long, required = true)]
        service_cidr: Vec<String>,
        /// Address of /healthz, /readyz and /metrics.
        #[arg(long, default_value = "0.0.0.0:8080")]
        http_addr: std::net::SocketAddr,
        /// Re-check every HyperConverged this often even without events.
        #[arg(long, default_value_t = 300)]
        resync_seconds: u64,
        /// Also run the migration controller (VMIM admission, limits, cancel, drain).
        #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
        migrations: bool,
        /// Namespace whose VMIs/VMIMs the migration controller handles (default: all).
        #[arg(long)]
        migrations_namespace: Option<String>,
    },
    /// Write the CRD YAML files.
    Crdgen {
        #[arg(long, default_value = "deploy/crds")]
        out: PathBuf,
    },
    /// Lab mode and the CLI verbs against the lab's store.
    #[command(flatten)]
    Local(mignet::cli::Verb),
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    match Cli::parse().command {
        // Synchronous: the lab and its verbs block on ip/CNI commands and
        // files; nothing else runs on this runtime meanwhile.
        Command::Local(verb) => mignet::cli::run(verb)?,
        Command::Crdgen { out } => {
            for p in mignet::api::crdgen::write_all(&out)? {
                println!("{}", p.display());
            }
        }
        Command::Manager {
            namespace,
            hyperconverged,
            agent_daemonset,
            pod_cidr,
            service_cidr,
            resync_seconds,
            http_addr,
            migrations,
            migrations_namespace,
        } => {
            let hco_namespace = namespace.clone();
            let settings = RolloutSettings {
                namespace,
                hyperconverged,
                agent_daemonset,
                cluster: ClusterNetworks {
                    pod: parse_cidrs("--pod-cidr", &pod_cidr)?,
                    service: parse_cidrs("--service-cidr", &service_cidr)?,
                },
                resync: Duration::from_secs(resync_seconds),
            };
            let client = kube::Client::try_default()
                .await
                .context("connecting to the Kubernetes API")?;
            // The kubelet stops pods with SIGTERM; a terminal sends SIGINT.
            let mut sigterm =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                    .context("installing the SIGTERM handler")?;
            let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
            tokio::spawn(async move {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = sigterm.recv() => {}
                }
                let _ = stop_tx.send(true);
            });
            let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
                let _ = rx.wait_for(|s| *s).await;
            };
            let shutdown = stopped(stop_rx.clone());
            let migration_controller = migrations.then(|| {
                let backend = mignet::backend::KubeBackend::new(
                    client.clone(),
                    migrations_namespace.as_deref(),
                );
                let settings = mignet::control::Settings {
                    namespace: migrations_namespace.clone(),
                    hco_namespace: Some(hco_namespace.clone()),
                    ..Default::default()
                };
                tokio::spawn(mignet::control::run(backend, settings, stopped(stop_rx.clone())))
            });
            let metrics = Arc::new(mignet::metrics::Metrics::default());
            let (bound, _http) = mignet::http::serve(http_addr, metrics.clone()).await?;
            tracing::info!(%bound, "serving /healthz, /readyz, /metrics");
            mignet::kube_adapter::rollout::run(client, settings, metrics, shutdown).await?;
            if let Some(task) = migration_controller {
                task.await
                    .context("migration controller task")?
                    .context("migration controller")?;
            }
        }
    }
    Ok(())
}
