//! The `mignet` binary: thin glue over the library.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::{CommandFactory, Parser, Subcommand};
use mignet::console::LoginLimits;
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
    #[command(flatten)]
    target: mignet::cli::target::TargetArgs,
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
        /// Prove a migration network before the agents move onto it: a
        /// probe pod per node, full-size frames and TLS handshakes between
        /// every pair. False annotates the DaemonSet at once.
        #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
        network_preflight: bool,
        /// A pre-flight round ends after this long; probes not done by then fail it.
        #[arg(long, default_value_t = 120, value_parser = clap::value_parser!(u64).range(10..=3600))]
        preflight_round_seconds: u64,
        /// After a failed round, the next one for the same network starts this much later.
        #[arg(long, default_value_t = 120, value_parser = clap::value_parser!(u64).range(1..=86400))]
        preflight_retry_seconds: u64,
        /// Also run the migration controller (VMIM admission, limits, cancel, drain).
        #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
        migrations: bool,
        /// Namespace whose VMIs/VMIMs the migration controller handles (default: all).
        #[arg(long)]
        migrations_namespace: Option<String>,
        /// Honour NodeMaintenances (nodemaintenance.medik8s.io). Set false
        /// where the node-maintenance-operator runs: it handles them.
        #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
        node_maintenance: bool,
        /// Namespaces holding mignet-ipam's IPPools (its kubeconfig's context namespace).
        #[arg(long, default_value = "mignet-system")]
        ipam_namespace: Vec<String>,
        /// Free IPPool allocations of deleted pods this often (and at start); 0 = never.
        #[arg(long, default_value_t = 300)]
        ipam_reconcile_seconds: u64,
        #[command(flatten)]
        signer: SignerArgs,
        #[command(flatten)]
        launchers: LauncherPodArgs,
        #[command(flatten)]
        eviction: EvictionWebhookArgs,
    },
    /// Run the node agent: migration IP, mTLS listeners, proxy, QEMU driver.
    Agent(AgentArgs),
    /// Serve the web console (VM list, Migrate / Cancel Migration, progress).
    Console(ConsoleArgs),
    /// Run one VM's QEMU in its launcher pod (spec in $MIGNET_LAUNCH_SPEC).
    Launcher(LauncherArgs),
    /// Pre-flight probe of a migration network on one node (in a probe pod).
    Probe(ProbeArgs),
    /// Write the CRD YAML files.
    Crdgen {
        #[arg(long, default_value = "deploy/crds")]
        out: PathBuf,
    },
    /// Print a shell completion script: `source <(mignet completion bash)`.
    Completion {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff), from the same definitions as --help:
    /// `mignet man > mignet.1`; with --out, write it and one page per
    /// subcommand (mignet-migrate.1, ...) there.
    Man {
        #[arg(long, value_name = "DIR")]
        out: Option<PathBuf>,
    },
    /// Lab mode and the CLI verbs against the lab or a cluster.
    #[command(flatten)]
    Local(mignet::cli::Verb),
}

/// How the migration controller makes VM launcher pods.
#[derive(clap::Args)]
struct LauncherPodArgs {
    /// Image of the launcher pods (it holds `mignet launcher`, QEMU and the
    /// lab guest); deploy/base/manager.yaml passes the manager's own.
    #[arg(long, default_value = "mignet:dev")]
    launcher_image: String,
    /// imagePullPolicy of the launcher pods (default: Kubernetes' for the tag).
    #[arg(long)]
    launcher_image_pull_policy: Option<String>,
    /// KubeVirt's useEmulation: run VMs under TCG where KVM does not work.
    /// Off: a VM asks for a node whose agent found KVM working (label
    /// mignet.io/kvm=true) and fails to schedule with the scheduler's reason
    /// otherwise.
    #[arg(long)]
    use_emulation: bool,
}

/// The pods/eviction admission webhook: `kubectl drain` live-migrates
/// LiveMigrate VMs (manager/src/kube_adapter/eviction.rs,
/// deploy/base/eviction-webhook.yaml).
#[derive(clap::Args)]
struct EvictionWebhookArgs {
    /// Serve the webhook (HTTPS, certificate from the --ca-secret CA) here;
    /// unset: no webhook (drains then delete launcher pods, stopping VMs).
    #[arg(long)]
    eviction_webhook_addr: Option<std::net::SocketAddr>,
    /// The Service (in --namespace) the API server calls the webhook through.
    #[arg(long, default_value = "mignet-manager-webhook")]
    eviction_webhook_service: String,
    /// The ValidatingWebhookConfiguration whose caBundle the manager keeps.
    #[arg(long, default_value = "mignet-eviction")]
    eviction_webhook_configuration: String,
    /// Eviction strategy of VMIs without spec.evictionStrategy (KubeVirt's
    /// cluster-wide evictionStrategy): None, LiveMigrate,
    /// LiveMigrateIfPossible or External; unset = None. Used by the
    /// webhook and the migration controller's drain.
    #[arg(long, value_parser = parse_eviction_strategy)]
    default_eviction_strategy: Option<mignet_policy::EvictionStrategy>,
}

fn parse_eviction_strategy(s: &str) -> Result<mignet_policy::EvictionStrategy, String> {
    mignet_policy::EvictionStrategy::parse(s).ok_or_else(|| {
        format!("{s:?}: expected None, LiveMigrate, LiveMigrateIfPossible or External")
    })
}

/// Flags of `mignet agent` (deploy/base/agent.yaml passes the first five).
#[derive(clap::Args)]
struct AgentArgs {
    #[arg(long)]
    node_name: String,
    /// The agent pod's IP: the migration IP when no migration network is set.
    #[arg(long)]
    pod_ip: std::net::IpAddr,
    /// Interface the migration network is attached as.
    #[arg(long, default_value = "migration0")]
    migration_interface: String,
    /// The migration NAD as `namespace/name`; unset or empty = pod network.
    /// With it set, a missing or addressless interface makes the agent not
    /// ready. Falls back to `$MIGNET_MIGRATION_NETWORK`, which deploy/ fills
    /// from the pod annotation `mignet.io/migration-network` the manager
    /// writes (always `namespace/name`).
    #[arg(long)]
    migration_network: Option<String>,
    #[command(flatten)]
    certs: CertArgs,
    /// VM run directories and migration sockets, kept across restarts.
    #[arg(long, default_value = "/var/run/mignet")]
    state_dir: PathBuf,
    /// Network namespace for the agent's sockets (lab); default: our own.
    #[arg(long)]
    netns: Option<String>,
    /// Multifd channels per migration; 0 = one connection.
    #[arg(long, default_value_t = 4)]
    multifd_channels: u8,
    /// Namespace to watch (default: all).
    #[arg(long)]
    namespace: Option<String>,
    /// Address of /healthz, /readyz (certificate, config readable, migration IP found) and /metrics.
    #[arg(long, default_value = "0.0.0.0:8081")]
    http_addr: std::net::SocketAddr,
    /// In-flight migrations get this long to end after SIGTERM.
    #[arg(long, default_value_t = 315)]
    graceful_shutdown_seconds: u64,
    /// The hostPath holding the launcher pods' run directories (QMP and
    /// migration sockets of this node's VMs).
    #[arg(long, default_value = mignet::launcher::RUN_ROOT)]
    launcher_root: PathBuf,
    /// Label this node (kubevirt.io/schedulable, mignet.io/kvm, its
    /// host-model CPU) so launcher pods land where an agent runs. Needs
    /// `patch` on nodes.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    label_node: bool,
}

/// The agent certificate's flags, shared by `mignet agent` and `mignet probe`.
#[derive(clap::Args)]
struct CertArgs {
    /// ca.crt, tls.crt, tls.key (re-read when they change).
    #[arg(long, default_value = "/etc/mignet/certs")]
    cert_dir: PathBuf,
    /// Where the certificate comes from.
    #[arg(long, value_enum, default_value = "files")]
    cert_source: CertSource,
    /// The CA certificate published by the manager (with --cert-source=csr).
    #[arg(long, default_value = "/etc/mignet/ca/ca.crt")]
    ca_bundle: PathBuf,
    /// Lifetime asked for the agent certificate (with --cert-source=csr; the
    /// manager may cap it). Kubernetes' CSR minimum is 600 s: a smaller
    /// value is refused, naming the flag, rather than raised silently.
    #[arg(long, default_value_t = 7 * 86_400, value_parser = clap::value_parser!(u64).range(600..=i32::MAX as u64))]
    cert_lifetime_seconds: u64,
    #[arg(long)]
    allow_tls12: bool,
}

/// Flags of `mignet probe` (one node's side of a pre-flight round; see
/// manager/src/network/probe/mod.rs). The pods' API comes from the target
/// flags (`--kubeconfig`, `--lab`, in-cluster).
#[derive(clap::Args)]
struct ProbeArgs {
    /// This probe's node (the downward API's spec.nodeName).
    #[arg(long)]
    node: String,
    /// Namespace of the round's probe pods.
    #[arg(long)]
    namespace: String,
    /// The round: the value of the round's pods' mignet.io/preflight label.
    #[arg(long)]
    round: String,
    /// Probe pods in the round, this one included.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    expect: u32,
    /// The migration network's interface (no fallback to the pod network).
    #[arg(long, default_value = "migration0")]
    interface: String,
    /// UDP echo and TLS port on the interface's address.
    #[arg(long, default_value_t = mignet::network::preflight::PROBE_PORT)]
    port: u16,
    /// The report is written (and the probe exits 0) by then, whatever is
    /// still unanswered.
    #[arg(long, default_value_t = 45, value_parser = clap::value_parser!(u64).range(1..=3600))]
    deadline_seconds: u64,
    /// Where the report goes (as well as stdout): the termination message.
    #[arg(long, default_value = mignet::launcher::TERMINATION_LOG)]
    termination_log: PathBuf,
    #[command(flatten)]
    certs: CertArgs,
}

async fn run_probe(a: ProbeArgs, target: &mignet::cli::target::TargetArgs) -> anyhow::Result<()> {
    use mignet::cli::probe;
    let settings = mignet::network::probe::ProbeSettings {
        node: a.node,
        namespace: a.namespace,
        round: a.round,
        expect: a.expect as usize,
        interface: a.interface,
        port: a.port,
        deadline: Duration::from_secs(a.deadline_seconds),
        termination_log: a.termination_log,
    };
    let certs = probe::CertSettings {
        source: match a.certs.cert_source {
            CertSource::Files => probe::CertSource::Files,
            CertSource::Csr => probe::CertSource::Csr {
                ca_bundle: a.certs.ca_bundle,
                lifetime: Duration::from_secs(a.certs.cert_lifetime_seconds),
            },
        },
        cert_dir: a.certs.cert_dir,
        allow_tls12: a.certs.allow_tls12,
    };
    probe::run(settings, certs, target).await?;
    Ok(())
}

/// Flags of `mignet launcher` (see manager/src/launcher/mod.rs).
#[derive(clap::Args)]
struct LauncherArgs {
    /// The VM's run directory (controller: /var/run/mignet/vms/<namespace>_<pod>).
    #[arg(long)]
    run_dir: PathBuf,
    /// The launch spec as JSON instead of $MIGNET_LAUNCH_SPEC (tests).
    #[arg(long)]
    spec_json: Option<String>,
    /// Where failure messages go besides stderr, when the file is writable.
    #[arg(long, default_value = mignet::launcher::TERMINATION_LOG)]
    termination_log: PathBuf,
}

/// The launcher's exit code is part of its contract (2: invalid spec,
/// 3: no KVM and no emulation allowed), so it does not go through anyhow.
async fn run_launcher(a: LauncherArgs) -> i32 {
    let opts = mignet::launcher::LaunchOptions {
        run_dir: a.run_dir,
        spec_json: a.spec_json,
    };
    match mignet::launcher::run(opts).await {
        Ok(()) => 0,
        Err(e) => {
            mignet::launcher::report_failure(&e.to_string(), &a.termination_log);
            e.exit_code()
        }
    }
}

/// The manager's agent-certificate signer (`mignet.io/agent` CSRs).
#[derive(clap::Args)]
struct SignerArgs {
    /// Approve and sign agent CertificateSigningRequests (signer mignet.io/agent).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    agent_signer: bool,
    /// The agents' ServiceAccount (in --namespace): the only requester signed for.
    #[arg(long, default_value = "mignet-agent")]
    agent_service_account: String,
    /// Secret (in --namespace) holding the CA; created on first start.
    #[arg(long, default_value = "mignet-ca")]
    ca_secret: String,
    /// ConfigMap (in --namespace) the CA certificate is published in.
    #[arg(long, default_value = "mignet-ca-bundle")]
    ca_bundle_configmap: String,
    /// Longest lifetime of an issued agent certificate (at least 600 s,
    /// Kubernetes' CSR minimum; a smaller value is refused).
    #[arg(long, default_value_t = 30 * 86_400, value_parser = clap::value_parser!(u64).range(600..))]
    agent_cert_max_seconds: u64,
}

/// Where the agent's certificate comes from.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum CertSource {
    /// ca.crt, tls.crt, tls.key are put into --cert-dir by someone else
    /// (a mounted Secret, e.g. from cert-manager).
    Files,
    /// Request it from the manager with a CertificateSigningRequest, write
    /// it into --cert-dir, renew it at 2/3 of its lifetime.
    Csr,
}

/// Flags of `mignet console` (see manager/src/console/README.md).
#[derive(clap::Args)]
struct ConsoleArgs {
    /// Address to listen on (port 0: any free port; the address is printed).
    #[arg(long, default_value = "127.0.0.1:8443")]
    listen: std::net::SocketAddr,
    /// `token,user[,group...]` lines; group `admins` or `system:masters` =
    /// administrator. Lab mode default: `<lab dir>/pki/console-tokens.csv`,
    /// created with an `admin` and a `viewer` token if missing. Cluster
    /// mode without it: Kubernetes tokens (TokenReview + SubjectAccessReview).
    #[arg(long)]
    tokens: Option<PathBuf>,
    /// Lab mode on the lab in $MIGNET_LAB_DIR (default /var/lib/mignet/lab).
    #[arg(long, conflicts_with = "lab_dir")]
    lab: bool,
    /// Lab mode on the lab in this directory. Without `--lab` or
    /// `--lab-dir`: the cluster from the kubeconfig / in-cluster config.
    #[arg(long)]
    lab_dir: Option<PathBuf>,
    /// Failed token checks (login or bearer) from one client within 15
    /// minutes that are answered at once; each further attempt waits 1 s,
    /// doubling up to 8 s, before its token is checked.
    #[arg(long, default_value_t = LoginLimits::DEFAULT.failures_before_delay, value_parser = clap::value_parser!(u32).range(1..=1000))]
    login_failures_before_delay: u32,
    /// Failed token checks from one client within 15 minutes that lock it
    /// out: refused with 429 for --login-lockout-seconds, tokens unchecked.
    #[arg(long, default_value_t = LoginLimits::DEFAULT.failures_before_lockout, value_parser = clap::value_parser!(u32).range(1..=1000))]
    login_failures_before_lockout: u32,
    /// How long a locked-out client is refused (429 with Retry-After).
    #[arg(long, default_value_t = LoginLimits::DEFAULT.lockout.as_secs(), value_parser = clap::value_parser!(u64).range(1..=86_400))]
    login_lockout_seconds: u64,
}

async fn run_console(a: ConsoleArgs) -> anyhow::Result<()> {
    use mignet::console::{auth, Authenticator, KubeAuthenticator, Settings, TokenFile};
    let settings = Settings {
        login: LoginLimits {
            failures_before_delay: a.login_failures_before_delay,
            failures_before_lockout: a.login_failures_before_lockout,
            lockout: Duration::from_secs(a.login_lockout_seconds),
            ..LoginLimits::DEFAULT
        },
    };
    let lab_dir = match (a.lab, a.lab_dir) {
        (_, Some(dir)) => Some(dir),
        (true, None) => Some(mignet::lab::LabConfig::dir_from_env()),
        (false, None) => None,
    };
    // The `mignet console:` lines say where to go (tests read them); the
    // log says what happens.
    let console = if let Some(dir) = lab_dir {
        // Lab mode never asks a cluster: tokens always come from a file.
        let store = Arc::new(mignet::lab::open_store(&dir)?);
        let (tokens, path) = match a.tokens {
            Some(p) => (TokenFile::load(&p)?, p),
            None => {
                let p = auth::lab_tokens_path(&dir);
                let (t, created) = TokenFile::load_or_create(&p)?;
                if created {
                    println!("mignet console: created {}", p.display());
                }
                (t, p)
            }
        };
        let users: Vec<String> = tokens
            .users()
            .into_iter()
            .map(|(u, admin)| {
                if admin {
                    format!("{u} (administrator)")
                } else {
                    u
                }
            })
            .collect();
        println!(
            "mignet console: lab {}, tokens in {} for {}",
            dir.display(),
            path.display(),
            users.join(", ")
        );
        let backend = mignet::backend::LocalBackend::new(store);
        mignet::console::serve_with(a.listen, backend, Arc::new(tokens), settings).await?
    } else {
        let client = kube::Client::try_default()
            .await
            .context("connecting to the Kubernetes API")?;
        let auth: Arc<dyn Authenticator> = match &a.tokens {
            Some(p) => Arc::new(TokenFile::load(p)?),
            None => Arc::new(KubeAuthenticator::new(client.clone())),
        };
        let backend = mignet::backend::KubeBackend::new(client, None);
        mignet::console::serve_with(a.listen, backend, auth, settings).await?
    };
    println!("mignet console: open http://{}/", console.addr);
    tracing::info!(addr = %console.addr, "console: serving");
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    tokio::select! {
        _ = console.wait() => anyhow::bail!("the console server stopped"),
        _ = tokio::signal::ctrl_c() => Ok(()),
        _ = sigterm.recv() => Ok(()),
    }
}

/// Put this node's agent labels on it (see `agent::node_labels`): a failure
/// stops the agent, visibly, rather than leaving VMs unable to land here.
async fn label_node(client: &kube::Client, node: &str) -> anyhow::Result<()> {
    use k8s_openapi::api::core::v1::Node;
    use kube::ResourceExt;
    use mignet::agent::node_labels;
    let kvm = mignet::launcher::probe_kvm();
    let kvm_usable = matches!(kvm, mignet::launcher::KvmProbe::Usable);
    let model = if kvm_usable {
        node_labels::host_cpu_model()
    } else {
        // TCG: what `host-model` becomes in the launcher.
        mignet::launcher::request::TCG_HOST_MODEL.to_owned()
    };
    let want = node_labels::desired(kvm_usable, &model);
    let nodes: kube::Api<Node> = kube::Api::all(client.clone());
    let current = nodes
        .get(node)
        .await
        .with_context(|| format!("reading node {node} to label it"))?;
    if let Some(patch) = node_labels::patch(current.labels(), &want) {
        nodes
            .patch(
                node,
                &kube::api::PatchParams::default(),
                &kube::api::Patch::Merge(&patch),
            )
            .await
            .with_context(|| format!("labelling node {node}"))?;
    }
    tracing::info!(%node, ?kvm, labels = ?want, "node labelled");
    Ok(())
}

async fn run_agent(a: AgentArgs) -> anyhow::Result<()> {
    use mignet::agent::certificate::{self, CertificateSettings};
    use mignet::agent::{AgentCore, AgentHealth, AgentSettings, Gate, GuestBoot, Readiness};
    // The agent never starts a QEMU here (VMs run in launcher pods): the
    // guest boot only matters to a runner that does (lab tests, benches).
    let (kernel, initrd) = mignet::launcher::guest_files();
    let boot = GuestBoot::new(kernel, initrd);
    let settings = AgentSettings {
        node_name: a.node_name,
        pod_ip: a.pod_ip,
        migration_network: a
            .migration_network
            .or_else(|| std::env::var("MIGNET_MIGRATION_NETWORK").ok())
            .filter(|n| !n.trim().is_empty())
            .map(|n| mignet::NetworkRef::parse_qualified("--migration-network", &n))
            .transpose()?,
        migration_interface: a.migration_interface,
        prefer_family: None,
        netns: a.netns,
        cert_dir: a.certs.cert_dir,
        allow_tls12: a.certs.allow_tls12,
        state_dir: a.state_dir,
        boot,
        multifd_channels: (a.multifd_channels > 0).then_some(a.multifd_channels),
        shutdown_grace: Duration::from_secs(a.graceful_shutdown_seconds),
        launcher_root: Some(a.launcher_root),
    };
    // Serve /readyz first: while the certificate is requested the probe
    // must say why the agent is not ready, not refuse connections.
    let metrics = Arc::new(mignet::metrics::Metrics::default());
    metrics.set_readiness(false, "starting");
    let (bound, _http) = mignet::http::serve(a.http_addr, metrics.clone()).await?;
    tracing::info!(%bound, "serving /healthz, /readyz, /metrics");
    let health = Arc::new(AgentHealth::default());
    let core_slot: Arc<std::sync::OnceLock<Arc<AgentCore>>> = Arc::default();
    // Readiness = no gate closed (certificate, config) and the migration
    // IP found (never the pod IP in disguise when a migration network is
    // configured). Warnings (an invalid config) are shown while ready.
    let (probe, probe_health) = (core_slot.clone(), health.clone());
    let agent_metrics = metrics.clone();
    let _ready = tokio::spawn(async move {
        let mut last: Option<(bool, String)> = None;
        loop {
            // Before the core exists (the certificate is being requested)
            // only the gates can be read; after, the core's readiness holds
            // them and the migration IP.
            let (ready, mut detail) = match probe.get() {
                Some(core) => match core.readiness().await {
                    Readiness::Ready(ip) => (true, format!("ready: migration IP {}", ip.ip)),
                    Readiness::NotReady(why) => (false, why),
                },
                None => {
                    let blockers = probe_health.blockers();
                    let why = if blockers.is_empty() {
                        "starting".to_string()
                    } else {
                        blockers.join("; ")
                    };
                    (false, why)
                }
            };
            for w in probe_health.warnings() {
                detail.push_str("; warning: ");
                detail.push_str(&w);
            }
            if last.as_ref() != Some(&(ready, detail.clone())) {
                if ready {
                    tracing::info!(%detail, "ready");
                } else {
                    tracing::warn!(%detail, "not ready");
                }
                metrics.set_readiness(ready, detail.clone());
                last = Some((ready, detail));
            }
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
    });
    let client = kube::Client::try_default()
        .await
        .context("connecting to the Kubernetes API")?;
    if a.certs.cert_source == CertSource::Csr {
        let cs = CertificateSettings {
            node_name: settings.node_name.clone(),
            cert_dir: settings.cert_dir.clone(),
            ca_bundle: a.certs.ca_bundle,
            lifetime: Duration::from_secs(a.certs.cert_lifetime_seconds),
            poll: Duration::from_secs(1),
            timeout: Duration::from_secs(120),
        };
        health.block(
            Gate::Certificate,
            "no agent certificate yet: requesting one (CSR, signer mignet.io/agent)",
        );
        let retry = Duration::from_secs(10);
        let validity = certificate::obtain(&client, &cs, &health, retry).await;
        tokio::spawn(certificate::renew_forever(
            client.clone(),
            cs,
            health.clone(),
            validity,
            retry,
        ));
    }
    let node_name = settings.node_name.clone();
    let core = Arc::new(AgentCore::start_with_health(settings, health).await?);
    let _ = core_slot.set(core.clone());
    agent_metrics.set_agent(core.node_name(), core.migration_metrics.clone());
    if a.label_node {
        label_node(&client, &node_name).await?;
    }
    let backend =
        mignet::backend::KubeBackend::for_agent(client, a.namespace.as_deref(), &node_name);
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    let shutdown = async move {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = sigterm.recv() => {}
        }
        tracing::info!("stopping: waiting for in-flight migrations");
    };
    mignet::agent::run_with_core(backend, core, shutdown).await;
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let Cli { command, target } = Cli::parse();
    // The target flags are global so they go anywhere on a verb's command
    // line; the daemons find their cluster by kube's rules and have no use
    // for them. (The console's own `--lab` shares the flag's id, so it is
    // the console's to read.)
    let daemon_target = match &command {
        // The probe lists its round's pods like a verb, in both modes.
        Command::Local(_) | Command::Probe(_) => None,
        Command::Console(_) => target.kubeconfig.as_ref().map(|_| "--kubeconfig"),
        _ if target.kubeconfig.is_some() => Some("--kubeconfig"),
        _ if target.lab => Some("--lab"),
        _ => None,
    };
    if let Some(flag) = daemon_target {
        anyhow::bail!(
            "{flag} is for the CLI verbs (get, describe, migrate, ...); the daemons take $KUBECONFIG or the in-cluster config"
        );
    }
    match command {
        // Synchronous: the lab and its verbs block on ip/CNI commands and
        // files; nothing else runs on this runtime meanwhile.
        // The demo drives the CLI verbs, so it runs above the CLI.
        Command::Local(mignet::cli::Verb::Lab(mignet::cli::lab::LabCommand::Demo {
            nodes,
            keep,
        })) => mignet::demo::run_command(nodes, keep)?,
        Command::Local(verb) => mignet::cli::run(&target, verb).await?,
        Command::Agent(args) => run_agent(args).await?,
        Command::Console(args) => run_console(args).await?,
        Command::Launcher(args) => std::process::exit(run_launcher(args).await),
        Command::Probe(args) => run_probe(args, &target).await?,
        Command::Completion { shell } => {
            clap_complete::generate(shell, &mut Cli::command(), "mignet", &mut std::io::stdout())
        }
        Command::Man { out: None } => clap_mangen::Man::new(Cli::command())
            .render(&mut std::io::stdout())
            .context("writing the man page")?,
        Command::Man { out: Some(dir) } => std::fs::create_dir_all(&dir)
            .and_then(|()| clap_mangen::generate_to(Cli::command(), &dir))
            .with_context(|| format!("writing the man pages to {}", dir.display()))?,
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
            network_preflight,
            preflight_round_seconds,
            preflight_retry_seconds,
            http_addr,
            migrations,
            migrations_namespace,
            node_maintenance,
            ipam_namespace,
            ipam_reconcile_seconds,
            signer,
            launchers,
            eviction,
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
                preflight: mignet::network::preflight::PreflightSettings {
                    enabled: network_preflight,
                    // The probe reports well inside the round, which also
                    // covers its pod's start and its certificate request.
                    probe_deadline: Duration::from_secs(preflight_round_seconds * 3 / 8),
                    round_deadline: Duration::from_secs(preflight_round_seconds),
                    retry_after: Duration::from_secs(preflight_retry_seconds),
                    hold_settle: mignet::network::switch::HOLD_SETTLE,
                },
                migrations_namespace: migrations_namespace.clone(),
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
            let metrics = Arc::new(mignet::metrics::Metrics::default());
            let migration_controller = migrations.then(|| {
                let backend = mignet::backend::KubeBackend::for_controller(
                    client.clone(),
                    migrations_namespace.as_deref(),
                    &hco_namespace,
                );
                let settings = mignet::control::Settings {
                    namespace: migrations_namespace.clone(),
                    hco_namespace: Some(hco_namespace.clone()),
                    launchers: Some(mignet::control::launcher_pod::LauncherSettings {
                        image: launchers.launcher_image,
                        image_pull_policy: launchers.launcher_image_pull_policy,
                        emulation_allowed: launchers.use_emulation,
                    }),
                    default_eviction_strategy: eviction.default_eviction_strategy,
                    node_maintenance,
                    metrics: Some(metrics.clone()),
                    ..Default::default()
                };
                tokio::spawn(mignet::control::run(
                    backend,
                    settings,
                    stopped(stop_rx.clone()),
                ))
            });
            if ipam_reconcile_seconds > 0 {
                let s = mignet::kube_adapter::ipam::IpamReconcileSettings {
                    namespaces: ipam_namespace,
                    interval: Duration::from_secs(ipam_reconcile_seconds),
                    ..Default::default()
                };
                let ipam =
                    mignet::kube_adapter::ipam::run(client.clone(), s, stopped(stop_rx.clone()));
                tokio::spawn(ipam);
            }
            let (signer_ca_secret, signer_ca_bundle) =
                (signer.ca_secret.clone(), signer.ca_bundle_configmap.clone());
            if signer.agent_signer {
                let s = mignet::kube_adapter::signer::SignerSettings {
                    namespace: settings.namespace.clone(),
                    ca_secret: signer.ca_secret,
                    ca_bundle: signer.ca_bundle_configmap,
                    agent_service_account: signer.agent_service_account,
                    max_lifetime: Duration::from_secs(signer.agent_cert_max_seconds),
                    ..Default::default()
                };
                // The CA must exist before agents can trust anything: a
                // failure to set it up stops the manager (restarted by its
                // Deployment, visibly) rather than running without a signer.
                let ca = mignet::kube_adapter::signer::ensure_ca(&client, &s)
                    .await
                    .context("setting up the agent CA")?;
                tokio::spawn(mignet::kube_adapter::signer::run_with_ca(
                    client.clone(),
                    ca,
                    s,
                    stopped(stop_rx.clone()),
                ));
            }
            if let Some(addr) = eviction.eviction_webhook_addr {
                use mignet::kube_adapter::{eviction as ev, signer as sg};
                let ca = sg::SignerSettings {
                    namespace: settings.namespace.clone(),
                    ca_secret: signer_ca_secret.clone(),
                    ca_bundle: signer_ca_bundle.clone(),
                    ..Default::default()
                };
                let s = ev::WebhookSettings {
                    addr,
                    namespace: settings.namespace.clone(),
                    service: eviction.eviction_webhook_service,
                    configuration: eviction.eviction_webhook_configuration,
                    cluster_default: eviction.default_eviction_strategy,
                    ..Default::default()
                };
                // Like the signer's CA: no webhook, no manager (restarted
                // by its Deployment, visibly).
                let webhook = ev::Webhook::start(client.clone(), &ca, s)
                    .await
                    .context("starting the eviction webhook")?;
                tokio::spawn(webhook.run(stopped(stop_rx.clone())));
            }
            let (bound, _http) = mignet::http::serve(http_addr, metrics.clone()).await?;
            tracing::info!(%bound, "serving /healthz, /readyz, /metrics");
            mignet::kube_adapter::network_watch::run(client, settings, metrics, shutdown).await?;
            if let Some(task) = migration_controller {
                task.await
                    .context("migration controller task")?
                    .context("migration controller")?;
            }
        }
    }
    Ok(())
}
