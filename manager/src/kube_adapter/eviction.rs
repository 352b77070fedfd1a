//! The pod-eviction webhook: `kubectl drain` live-migrates VMs
//! (KubeVirt's mechanism, `pkg/virt-api/webhooks/validating-webhook/admitters/pod-eviction-admitter.go`).
//!
//! `kubectl drain NODE` cordons the node and evicts its pods through the
//! Eviction API (`POST pods/NAME/eviction`), retrying every 5 s while the
//! answer is HTTP 429. The API server calls this validating webhook for
//! every such request (`deploy/base/eviction-webhook.yaml`). For a launcher
//! pod of a VMI that must live-migrate, the webhook sets the VMI's
//! `status.evacuationNodeName` to the pod's node and denies the eviction with
//! 429: the migration controller then sees the cordoned node as draining
//! (`control::World::node_views`) and creates an evacuation migration; once
//! the VM runs elsewhere the controller deletes the source pod itself, the
//! next eviction retry finds no pod, and the drain completes.
//!
//! Why a webhook and not a PodDisruptionBudget per launcher pod: a PDB with
//! `maxUnavailable: 0` makes the eviction answer 429 too, but the Eviction
//! API only checks the budget; nothing tells mignet that someone wants the
//! pod gone, so no migration would ever start and the drain would wait
//! until its timeout. (KubeVirt keeps PDBs only to protect a migrating VMI's
//! pods from other evictors.) The webhook is the one place that sees the
//! request itself, with the pod's node.
//!
//! The decision is pure ([`decide`]); [`review`] reads the pod and the VMI
//! through [`Cluster`] and writes the evacuation mark; [`serve`] is the
//! HTTPS edge (axum over tokio-rustls) with a certificate for the webhook
//! Service issued by the manager's CA (`mignet-ca`); [`Webhook`] keeps that
//! certificate fresh and the `ValidatingWebhookConfiguration`'s `caBundle`
//! equal to the CA.

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use axum::extract::State;
use axum::routing::post;
use axum::{Json, Router};
use k8s_openapi::api::admissionregistration::v1::ValidatingWebhookConfiguration;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Patch, PatchParams};
use kube::core::admission::{AdmissionRequest, AdmissionResponse, AdmissionReview, Operation};
use kube::core::{DynamicObject, Status};
use kube::{Api, Client};
use mignet_dataplane::certs::{ClusterCa, IssuedCert};
use mignet_policy as policy;
use policy::EvictionStrategy;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::server::TlsStream;

use super::signer::{ensure_ca, SignerSettings};
use super::FIELD_MANAGER;
use crate::api::{VirtualMachineInstance, VmiPhase};
use crate::control::evict::{self, VmiEviction};
use crate::control::launcher_pod::{
    CREATED_BY_LABEL, LAUNCHER_LABEL, MIGRATION_LABEL, VMI_NAME_LABEL,
};
use crate::error_chain;

/// The path the API server posts AdmissionReviews to.
pub const PATH: &str = "/eviction";
/// Every launcher pod's name starts so ([`crate::control::launcher_pod::pod_name`]);
/// the webhook configuration's `matchConditions` sends only such evictions.
pub const LAUNCHER_NAME_PREFIX: &str = "virt-launcher-";
/// HTTP status of a denial: `kubectl drain` retries on 429 (every 5 s) and
/// gives up on any other error.
pub const RETRY_CODE: u16 = 429;

// ---------------------------------------------------------------- decision

/// What the webhook knows of the pod being evicted.
#[derive(Debug, Clone, Copy)]
pub struct EvictedPod<'a> {
    pub namespace: &'a str,
    pub name: &'a str,
    pub labels: &'a BTreeMap<String, String>,
    pub node: Option<&'a str>,
    /// Phase Succeeded or Failed: nothing runs in it any more.
    pub finished: bool,
    /// Already being deleted.
    pub deleting: bool,
}

impl<'a> EvictedPod<'a> {
    pub fn of(pod: &'a Pod) -> Self {
        EvictedPod {
            namespace: pod.metadata.namespace.as_deref().unwrap_or_default(),
            name: pod.metadata.name.as_deref().unwrap_or_default(),
            labels: pod.metadata.labels.as_ref().unwrap_or(&EMPTY),
            node: pod.spec.as_ref().and_then(|s| s.node_name.as_deref()),
            finished: matches!(
                pod.status.as_ref().and_then(|s| s.phase.as_deref()),
                Some("Succeeded" | "Failed")
            ),
            deleting: pod.metadata.deletion_timestamp.is_some(),
        }
    }

    /// The VMI this pod says it runs (`vm.kubevirt.io/name`), for a
    /// launcher pod only.
    pub fn vmi_name(&self) -> Option<&'a str> {
        self.labels.contains_key(LAUNCHER_LABEL).then_some(())?;
        self.labels.get(VMI_NAME_LABEL).map(String::as_str)
    }
}

static EMPTY: BTreeMap<String, String> = BTreeMap::new();

/// The webhook's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Let the eviction proceed; the reason is for the log.
    Allow(String),
    /// Deny with 429 (the drain retries).
    Deny(String),
    /// Mark the VMI for evacuation from `node` (`status.evacuationNodeName`;
    /// `mark` is false when it already says so) and deny with 429.
    Evacuate {
        vmi: String,
        node: String,
        mark: bool,
        message: String,
    },
}

impl Verdict {
    pub fn allowed(&self) -> bool {
        matches!(self, Verdict::Allow(_))
    }

    pub fn message(&self) -> &str {
        match self {
            Verdict::Allow(m) | Verdict::Deny(m) => m,
            Verdict::Evacuate { message, .. } => message,
        }
    }
}

/// Decide one eviction. `vmi` is the VMI named by the pod's
/// `vm.kubevirt.io/name` label in the pod's namespace (`None`: not found).
///
/// - Not a launcher pod, a finished or deleting one, one whose VMI is gone,
///   final, or another VMI of the same name (`kubevirt.io/created-by` is
///   not its uid): allow.
/// - A pod on another node than the VMI's (a migration's target): while
///   that migration is in flight (the VMI's `migrationState` does not say
///   this migration completed or failed) deny with 429, since the
///   migration is about to run the VM in it; afterwards allow (it is a
///   leftover the controller deletes anyway).
/// - The pod that runs the VM, by effective strategy:
///   - `None`: allow; the VM stops with its pod and the controller ends
///     the VMI (the seed's rule);
///   - `LiveMigrate`: not Running or `LiveMigratable=False`: deny (the VM
///     must not be killed; the drain waits and times out, naming why);
///     otherwise evacuate (mark + 429). A missing condition does not block:
///     the controller decides and reports on the node's drain report;
///   - `LiveMigrateIfPossible`: Running and `LiveMigratable=True`:
///     evacuate; otherwise allow (stop);
///   - `External`: mark (so the external controller sees the request, as
///     KubeVirt does) and deny with 429, naming the strategy.
pub fn decide(
    pod: &EvictedPod<'_>,
    vmi: Option<&VirtualMachineInstance>,
    cluster_default: Option<EvictionStrategy>,
) -> Verdict {
    let allow = |m: String| Verdict::Allow(m);
    let Some(vmi_name) = pod.vmi_name() else {
        return allow("not a launcher pod".into());
    };
    if pod.finished {
        return allow("the launcher pod already ended".into());
    }
    if pod.deleting {
        return allow("the launcher pod is already being deleted".into());
    }
    let key = format!("{}/{}", pod.namespace, vmi_name);
    let Some(vmi) = vmi else {
        return allow(format!("VMI {key} does not exist"));
    };
    let uid = vmi.metadata.uid.as_deref().unwrap_or_default();
    if pod.labels.get(CREATED_BY_LABEL).map(String::as_str) != Some(uid) {
        return allow(format!("the pod belongs to an earlier VMI {key}"));
    }
    let status = vmi.status.clone().unwrap_or_default();
    if matches!(status.phase, Some(VmiPhase::Succeeded | VmiPhase::Failed)) {
        return allow(format!("VMI {key} already ended"));
    }
    let Some(node) = pod.node else {
        return allow("the launcher pod is not scheduled".into());
    };
    if status.node_name.as_deref() != Some(node) {
        // Not the pod running the VM: a migration target (or a leftover).
        let migration = pod.labels.get(MIGRATION_LABEL);
        let ended = status.migration_state.as_ref().is_some_and(|m| {
            m.migration_uid.as_ref() == migration
                && (m.completed == Some(true) || m.failed == Some(true))
        });
        return match migration {
            Some(m) if !ended => Verdict::Deny(format!(
                "pod {} is the target of migration {m} of VMI {key}, in flight; \
                 retry after the migration ends",
                pod.name
            )),
            _ => allow(format!(
                "the pod does not run VMI {key} (it runs on {})",
                status.node_name.as_deref().unwrap_or("no node")
            )),
        };
    }
    let evacuate = |message: String| Verdict::Evacuate {
        vmi: vmi_name.to_owned(),
        node: node.to_owned(),
        mark: status.evacuation_node_name.as_deref() != Some(node),
        message,
    };
    let triggered = format!("Eviction triggered evacuation of VMI {key} from {node}");
    match evict::vmi_eviction(vmi, cluster_default) {
        VmiEviction::Stop { if_possible: false } => allow(format!(
            "VMI {key} has evictionStrategy None: it stops with its pod"
        )),
        VmiEviction::Stop { if_possible: true } => allow(format!(
            "VMI {key} has evictionStrategy LiveMigrateIfPossible and is not \
             live-migratable: it stops with its pod"
        )),
        VmiEviction::External => evacuate(format!(
            "VMI {key} has evictionStrategy External: it is left to an external \
             controller, marked for evacuation from {node}"
        )),
        VmiEviction::NotRunning(phase) => Verdict::Deny(format!(
            "VMI {key} has evictionStrategy LiveMigrate but is not running (phase {phase:?}); \
             its pod cannot be evicted"
        )),
        VmiEviction::NotMigratable(why) => Verdict::Deny(format!(
            "VMI {key} has evictionStrategy LiveMigrate but is not live-migratable ({why}); \
             its pod cannot be evicted"
        )),
        VmiEviction::Evacuate => evacuate(triggered),
    }
}

// ---------------------------------------------------------------- review

/// What the webhook reads and writes (a kube [`Client`] in the manager; an
/// in-memory fake in tests).
pub trait Cluster: Send + Sync + 'static {
    fn pod(
        &self,
        namespace: &str,
        name: &str,
    ) -> impl Future<Output = Result<Option<Pod>, kube::Error>> + Send;
    fn vmi(
        &self,
        namespace: &str,
        name: &str,
    ) -> impl Future<Output = Result<Option<VirtualMachineInstance>, kube::Error>> + Send;
    /// Merge-patch `status.evacuationNodeName = node` on the VMI.
    fn mark_evacuation(
        &self,
        namespace: &str,
        name: &str,
        node: &str,
    ) -> impl Future<Output = Result<(), kube::Error>> + Send;
}

impl Cluster for Client {
    async fn pod(&self, namespace: &str, name: &str) -> Result<Option<Pod>, kube::Error> {
        Api::<Pod>::namespaced(self.clone(), namespace)
            .get_opt(name)
            .await
    }

    async fn vmi(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<Option<VirtualMachineInstance>, kube::Error> {
        Api::<VirtualMachineInstance>::namespaced(self.clone(), namespace)
            .get_opt(name)
            .await
    }

    async fn mark_evacuation(
        &self,
        namespace: &str,
        name: &str,
        node: &str,
    ) -> Result<(), kube::Error> {
        let patch = serde_json::json!({"status": {"evacuationNodeName": node}});
        Api::<VirtualMachineInstance>::namespaced(self.clone(), namespace)
            .patch_status(name, &super::patch_params(), &Patch::Merge(&patch))
            .await
            .map(|_| ())
    }
}

fn respond(req: &AdmissionRequest<DynamicObject>, verdict: &Verdict) -> AdmissionResponse {
    let mut r = AdmissionResponse::from(req);
    if !verdict.allowed() {
        r.allowed = false;
        let mut st = Status::failure(verdict.message(), "TooManyRequests");
        st.code = RETRY_CODE;
        r.result = st;
    }
    r
}

/// Answer one AdmissionReview. Anything that is not a `pods/eviction`
/// CREATE of a launcher-named pod is allowed without an API call. A failed
/// read of a launcher pod or its VMI denies with 429 (the drain retries)
/// rather than risk killing a VM.
pub async fn review<C: Cluster>(
    cluster: &C,
    cluster_default: Option<EvictionStrategy>,
    body: AdmissionReview<DynamicObject>,
) -> AdmissionReview<DynamicObject> {
    let req: AdmissionRequest<DynamicObject> = match body.try_into() {
        Ok(r) => r,
        Err(e) => return AdmissionResponse::invalid(e.to_string()).into_review(),
    };
    let verdict = verdict_of(cluster, cluster_default, &req).await;
    let ns = req.namespace.as_deref().unwrap_or_default();
    if verdict.allowed() {
        tracing::debug!(namespace = ns, pod = %req.name, message = verdict.message(), "eviction allowed");
    } else {
        tracing::info!(namespace = ns, pod = %req.name, message = verdict.message(), "eviction denied (429)");
    }
    respond(&req, &verdict).into_review()
}

async fn verdict_of<C: Cluster>(
    cluster: &C,
    cluster_default: Option<EvictionStrategy>,
    req: &AdmissionRequest<DynamicObject>,
) -> Verdict {
    let is_eviction = req.resource.group.is_empty()
        && req.resource.resource == "pods"
        && req.sub_resource.as_deref() == Some("eviction")
        && matches!(req.operation, Operation::Create);
    if !is_eviction {
        return Verdict::Allow("not a pod eviction".into());
    }
    if !req.name.starts_with(LAUNCHER_NAME_PREFIX) {
        return Verdict::Allow("not a launcher pod (by name)".into());
    }
    let ns = req.namespace.as_deref().unwrap_or_default();
    let pod = match cluster.pod(ns, &req.name).await {
        Ok(Some(p)) => p,
        Ok(None) => return Verdict::Allow("no such pod".into()),
        Err(e) => {
            return Verdict::Deny(format!(
                "reading pod {ns}/{}: {}",
                req.name,
                error_chain(&e)
            ))
        }
    };
    let evicted = EvictedPod::of(&pod);
    let Some(vmi_name) = evicted.vmi_name() else {
        return Verdict::Allow("not a launcher pod".into());
    };
    let vmi = match cluster.vmi(ns, vmi_name).await {
        Ok(v) => v,
        Err(e) => {
            return Verdict::Deny(format!("reading VMI {ns}/{vmi_name}: {}", error_chain(&e)))
        }
    };
    let verdict = decide(&evicted, vmi.as_ref(), cluster_default);
    if let Verdict::Evacuate {
        vmi, node, mark, ..
    } = &verdict
    {
        // sideEffects: NoneOnDryRun.
        if *mark && !req.dry_run {
            if let Err(e) = cluster.mark_evacuation(ns, vmi, node).await {
                return Verdict::Deny(format!(
                    "marking VMI {ns}/{vmi} for evacuation from {node}: {}",
                    error_chain(&e)
                ));
            }
            tracing::info!(namespace = ns, vmi = %vmi, node = %node, "VMI marked for evacuation (status.evacuationNodeName)");
        }
    }
    verdict
}

// ---------------------------------------------------------------- HTTPS

/// The serving certificate, replaceable while serving.
#[derive(Debug)]
pub struct ServingCert(RwLock<Arc<CertifiedKey>>);

impl ServingCert {
    pub fn new(cert: &IssuedCert) -> Result<Arc<Self>, WebhookError> {
        Ok(Arc::new(ServingCert(RwLock::new(certified_key(cert)?))))
    }

    pub fn replace(&self, cert: &IssuedCert) -> Result<(), WebhookError> {
        let k = certified_key(cert)?;
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = k;
        Ok(())
    }
}

impl ResolvesServerCert for ServingCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.read().unwrap_or_else(|e| e.into_inner()).clone())
    }
}

fn certified_key(cert: &IssuedCert) -> Result<Arc<CertifiedKey>, WebhookError> {
    let chain = CertificateDer::pem_slice_iter(cert.cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| WebhookError::Tls(format!("serving certificate: {e}")))?;
    let key = PrivateKeyDer::from_pem_slice(cert.key_pem.as_bytes())
        .map_err(|e| WebhookError::Tls(format!("serving key: {e}")))?;
    let provider = rustls::crypto::ring::default_provider();
    let signing = provider
        .key_provider
        .load_private_key(key)
        .map_err(|e| WebhookError::Tls(format!("serving key: {e}")))?;
    Ok(Arc::new(CertifiedKey::new(chain, signing)))
}

/// A TLS server config answering with `cert` (TLS 1.2 and 1.3: the API
/// server's webhook client speaks both).
pub fn server_config(cert: Arc<ServingCert>) -> Result<Arc<rustls::ServerConfig>, WebhookError> {
    let mut c = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| WebhookError::Tls(e.to_string()))?
    .with_no_client_auth()
    .with_cert_resolver(cert);
    c.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(c))
}

/// The DNS names the API server checks when calling the webhook Service.
pub fn service_dns_names(service: &str, namespace: &str) -> Vec<String> {
    vec![
        format!("{service}.{namespace}.svc"),
        format!("{service}.{namespace}.svc.cluster.local"),
    ]
}

/// A serving certificate for `dns_names`, signed by the manager's CA.
pub fn issue_serving_cert(
    ca: &ClusterCa,
    dns_names: &[String],
    lifetime: Duration,
) -> Result<IssuedCert, WebhookError> {
    let err = |e: rcgen::Error| WebhookError::Tls(format!("issuing the serving certificate: {e}"));
    let ca_key = rcgen::KeyPair::from_pem(&ca.key_pem()).map_err(err)?;
    let issuer = rcgen::Issuer::from_ca_cert_pem(ca.cert_pem(), ca_key).map_err(err)?;
    let mut params = rcgen::CertificateParams::new(dns_names.to_vec()).map_err(err)?;
    let mut dn = rcgen::DistinguishedName::new();
    dn.push(rcgen::DnType::OrganizationName, "mignet");
    dn.push(
        rcgen::DnType::CommonName,
        dns_names.first().cloned().unwrap_or_default(),
    );
    params.distinguished_name = dn;
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    params.key_usages = vec![
        rcgen::KeyUsagePurpose::DigitalSignature,
        rcgen::KeyUsagePurpose::KeyEncipherment,
    ];
    let now = SystemTime::now();
    params.not_before = (now - Duration::from_secs(60)).into();
    params.not_after = (now + lifetime).into();
    params.use_authority_key_identifier_extension = true;
    let key = rcgen::KeyPair::generate().map_err(err)?;
    let cert = params.signed_by(&key, &issuer).map_err(err)?;
    Ok(IssuedCert {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

struct TlsListener {
    rx: tokio::sync::mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    local: SocketAddr,
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.rx.recv().await {
            Some(c) => c,
            // The accept loop ended (it only does when the runtime stops).
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local)
    }
}

pub fn router<C: Cluster>(cluster: Arc<C>, cluster_default: Option<EvictionStrategy>) -> Router {
    Router::new()
        .route(
            PATH,
            post(
                |State((c, d)): State<(Arc<C>, Option<EvictionStrategy>)>,
                 Json(body): Json<AdmissionReview<DynamicObject>>| async move {
                    Json(review(c.as_ref(), d, body).await)
                },
            ),
        )
        .with_state((cluster, cluster_default))
}

/// Bind `addr` now and serve the webhook over HTTPS in the background.
/// TLS handshakes run concurrently (a slow or broken client cannot stall
/// the others; 10 s limit).
pub async fn serve<C: Cluster>(
    addr: SocketAddr,
    tls: Arc<rustls::ServerConfig>,
    cluster: Arc<C>,
    cluster_default: Option<EvictionStrategy>,
) -> Result<(SocketAddr, tokio::task::JoinHandle<()>), WebhookError> {
    let tcp = TcpListener::bind(addr)
        .await
        .map_err(|source| WebhookError::Bind { addr, source })?;
    let local = tcp
        .local_addr()
        .map_err(|source| WebhookError::Bind { addr, source })?;
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    let accept_loop = async move {
        loop {
            let (stream, peer) = match tcp.accept().await {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, "eviction webhook: accept");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let acceptor = acceptor.clone();
            let tx = tx.clone();
            tokio::spawn(async move {
                match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(stream)).await {
                    Ok(Ok(tls)) => {
                        let _ = tx.send((tls, peer)).await;
                    }
                    Ok(Err(e)) => {
                        tracing::debug!(%peer, error = %e, "eviction webhook: TLS handshake")
                    }
                    Err(_) => tracing::debug!(%peer, "eviction webhook: TLS handshake timed out"),
                }
            });
        }
    };
    let app = router(cluster, cluster_default);
    let task = tokio::spawn(async move {
        tokio::spawn(accept_loop);
        if let Err(e) = axum::serve(TlsListener { rx, local }, app).await {
            tracing::error!(error = %e, "eviction webhook server stopped");
        }
    });
    Ok((local, task))
}

// ---------------------------------------------------------------- the manager's loop

#[derive(Debug, Clone)]
pub struct WebhookSettings {
    pub addr: SocketAddr,
    /// The manager's namespace (the Service's).
    pub namespace: String,
    /// The Service the webhook configuration calls.
    pub service: String,
    /// The `ValidatingWebhookConfiguration` whose `caBundle` we keep.
    pub configuration: String,
    pub cluster_default: Option<EvictionStrategy>,
    /// Serving certificate lifetime; renewed at 2/3 of it.
    pub cert_lifetime: Duration,
    /// How often the caBundle is checked (and the certificate's age).
    pub resync: Duration,
}

impl Default for WebhookSettings {
    fn default() -> Self {
        WebhookSettings {
            addr: ([0, 0, 0, 0], 8443).into(),
            namespace: "mignet-system".into(),
            service: "mignet-manager-webhook".into(),
            configuration: "mignet-eviction".into(),
            cluster_default: None,
            cert_lifetime: Duration::from_secs(30 * 86_400),
            resync: Duration::from_secs(60),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    #[error("binding the eviction webhook on {addr}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("eviction webhook TLS: {0}")]
    Tls(String),
    #[error("the manager's CA")]
    Ca(#[source] super::signer::SignerError),
}

/// Make every webhook of the configuration trust `ca_pem` (strategic merge
/// patch: `webhooks` merges by name, so only `caBundle` changes). Returns
/// whether a patch was needed.
pub async fn sync_ca_bundle(
    client: &Client,
    configuration: &str,
    ca_pem: &str,
) -> Result<bool, kube::Error> {
    let api: Api<ValidatingWebhookConfiguration> = Api::all(client.clone());
    let cfg = api.get(configuration).await?;
    let want = ca_pem.as_bytes();
    let stale: Vec<String> = cfg
        .webhooks
        .iter()
        .flatten()
        .filter(|w| w.client_config.ca_bundle.as_ref().map(|b| b.0.as_slice()) != Some(want))
        .map(|w| w.name.clone())
        .collect();
    if stale.is_empty() {
        return Ok(false);
    }
    let b64 = k8s_openapi::ByteString(want.to_vec());
    let webhooks: Vec<_> = stale
        .iter()
        .map(|n| serde_json::json!({"name": n, "clientConfig": {"caBundle": b64}}))
        .collect();
    let patch = serde_json::json!({"webhooks": webhooks});
    api.patch(
        configuration,
        &PatchParams {
            field_manager: Some(FIELD_MANAGER.to_owned()),
            ..Default::default()
        },
        &Patch::Strategic(&patch),
    )
    .await?;
    tracing::info!(configuration, webhooks = ?stale, "eviction webhook caBundle set to the manager's CA");
    Ok(true)
}

/// The webhook in the manager, started: the CA (created if missing, as
/// the signer does), a serving certificate for the Service, the HTTPS
/// server bound and serving. [`Webhook::run`] then keeps the
/// configuration's caBundle and the certificate's age every `resync`.
pub struct Webhook {
    client: Client,
    ca: ClusterCa,
    cert: Arc<ServingCert>,
    issued: SystemTime,
    names: Vec<String>,
    settings: WebhookSettings,
    pub bound: SocketAddr,
}

impl Webhook {
    /// Fails when there is no usable CA or the port is taken (the manager
    /// then stops, visibly, as it does for the signer's CA).
    pub async fn start(
        client: Client,
        signer: &SignerSettings,
        settings: WebhookSettings,
    ) -> Result<Self, WebhookError> {
        let ca = ensure_ca(&client, signer).await.map_err(WebhookError::Ca)?;
        let names = service_dns_names(&settings.service, &settings.namespace);
        let cert = ServingCert::new(&issue_serving_cert(&ca, &names, settings.cert_lifetime)?)?;
        let (bound, _task) = serve(
            settings.addr,
            server_config(cert.clone())?,
            Arc::new(client.clone()),
            settings.cluster_default,
        )
        .await?;
        tracing::info!(%bound, names = ?names, configuration = %settings.configuration, "serving the pods/eviction webhook");
        Ok(Webhook {
            client,
            ca,
            cert,
            issued: SystemTime::now(),
            names,
            settings,
            bound,
        })
    }

    /// Until `stop`: API errors are logged and retried next `resync`.
    pub async fn run(mut self, stop: impl Future<Output = ()>) {
        let s = self.settings.clone();
        tokio::pin!(stop);
        loop {
            if let Err(e) = sync_ca_bundle(&self.client, &s.configuration, self.ca.cert_pem()).await
            {
                tracing::warn!(configuration = %s.configuration, error = %error_chain(&e),
                    "cannot set the eviction webhook's caBundle; evictions of launcher pods fail until it is set");
            }
            if self.issued.elapsed().unwrap_or_default() > s.cert_lifetime * 2 / 3 {
                match issue_serving_cert(&self.ca, &self.names, s.cert_lifetime)
                    .and_then(|c| self.cert.replace(&c))
                {
                    Ok(()) => {
                        self.issued = SystemTime::now();
                        tracing::info!("eviction webhook serving certificate renewed");
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "renewing the eviction webhook certificate")
                    }
                }
            }
            tokio::select! {
                _ = &mut stop => return,
                _ = tokio::time::sleep(s.resync) => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{
        VirtualMachineInstanceMigrationState, VirtualMachineInstanceStatus, VmiCondition,
    };
    use crate::backend::protocol::LIVE_MIGRATABLE;

    fn labels(role: &str, vmi: &str, uid: &str) -> BTreeMap<String, String> {
        BTreeMap::from([
            (LAUNCHER_LABEL.into(), role.into()),
            (VMI_NAME_LABEL.into(), vmi.into()),
            (CREATED_BY_LABEL.into(), uid.into()),
        ])
    }

    fn pod<'a>(labels: &'a BTreeMap<String, String>, node: &'a str) -> EvictedPod<'a> {
        EvictedPod {
            namespace: "default",
            name: "virt-launcher-vm-abcde",
            labels,
            node: Some(node),
            finished: false,
            deleting: false,
        }
    }

    fn vmi(
        strategy: Option<crate::api::EvictionStrategy>,
        node: &str,
        migratable: Option<bool>,
    ) -> VirtualMachineInstance {
        let mut v = VirtualMachineInstance::new("vm", Default::default());
        v.metadata.namespace = Some("default".into());
        v.metadata.uid = Some("uid-1".into());
        v.spec.eviction_strategy = strategy;
        v.status = Some(VirtualMachineInstanceStatus {
            node_name: Some(node.into()),
            phase: Some(VmiPhase::Running),
            conditions: migratable
                .map(|m| VmiCondition {
                    type_: LIVE_MIGRATABLE.into(),
                    status: if m { "True" } else { "False" }.into(),
                    reason: (!m).then(|| "DisksNotLiveMigratable".into()),
                    message: (!m).then(|| "claim disk is ReadWriteOnce".into()),
                    ..Default::default()
                })
                .into_iter()
                .collect(),
            ..Default::default()
        });
        v
    }

    use crate::api::EvictionStrategy as S;

    #[test]
    fn non_launcher_pods_are_allowed() {
        let l = BTreeMap::from([("app".to_string(), "web".to_string())]);
        let v = decide(&pod(&l, "node2"), None, Some(EvictionStrategy::LiveMigrate));
        assert_eq!(v, Verdict::Allow("not a launcher pod".into()));
    }

    #[test]
    fn live_migrate_marks_and_denies_with_the_message() {
        let l = labels("source", "vm", "uid-1");
        let v = decide(
            &pod(&l, "node2"),
            Some(&vmi(Some(S::LiveMigrate), "node2", Some(true))),
            None,
        );
        assert_eq!(
            v,
            Verdict::Evacuate {
                vmi: "vm".into(),
                node: "node2".into(),
                mark: true,
                message: "Eviction triggered evacuation of VMI default/vm from node2".into(),
            }
        );
        assert!(!v.allowed());
    }

    #[test]
    fn marking_is_idempotent() {
        let l = labels("source", "vm", "uid-1");
        let mut x = vmi(Some(S::LiveMigrate), "node2", None);
        x.status.as_mut().unwrap().evacuation_node_name = Some("node2".into());
        match decide(&pod(&l, "node2"), Some(&x), None) {
            Verdict::Evacuate { mark, .. } => assert!(!mark),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn the_cluster_default_applies_when_the_vmi_has_none() {
        let l = labels("source", "vm", "uid-1");
        let x = vmi(None, "node2", Some(true));
        assert!(decide(&pod(&l, "node2"), Some(&x), None).allowed());
        assert!(matches!(
            decide(
                &pod(&l, "node2"),
                Some(&x),
                Some(EvictionStrategy::LiveMigrate)
            ),
            Verdict::Evacuate { .. }
        ));
        // The VMI's own strategy wins over the default.
        let y = vmi(Some(S::None), "node2", Some(true));
        assert!(decide(
            &pod(&l, "node2"),
            Some(&y),
            Some(EvictionStrategy::LiveMigrate)
        )
        .allowed());
    }

    #[test]
    fn live_migrate_not_migratable_denies_without_marking() {
        let l = labels("source", "vm", "uid-1");
        let v = decide(
            &pod(&l, "node2"),
            Some(&vmi(Some(S::LiveMigrate), "node2", Some(false))),
            None,
        );
        let Verdict::Deny(m) = v else { panic!("{v:?}") };
        assert!(m.contains("DisksNotLiveMigratable"), "{m}");
    }

    #[test]
    fn if_possible_migrates_only_when_migratable() {
        let l = labels("source", "vm", "uid-1");
        let p = pod(&l, "node2");
        let s = Some(S::LiveMigrateIfPossible);
        assert!(matches!(
            decide(&p, Some(&vmi(s, "node2", Some(true))), None),
            Verdict::Evacuate { .. }
        ));
        assert!(decide(&p, Some(&vmi(s, "node2", Some(false))), None).allowed());
        assert!(decide(&p, Some(&vmi(s, "node2", None)), None).allowed());
    }

    #[test]
    fn none_allows_and_external_denies_naming_it() {
        let l = labels("source", "vm", "uid-1");
        let p = pod(&l, "node2");
        assert!(decide(&p, Some(&vmi(Some(S::None), "node2", Some(true))), None).allowed());
        let v = decide(&p, Some(&vmi(Some(S::External), "node2", Some(true))), None);
        assert!(matches!(v, Verdict::Evacuate { .. }));
        assert!(v.message().contains("evictionStrategy External"), "{v:?}");
    }

    #[test]
    fn target_pods_are_protected_while_their_migration_runs() {
        let mut l = labels("target", "vm", "uid-1");
        l.insert(MIGRATION_LABEL.into(), "mig-1".into());
        let p = pod(&l, "node3");
        let mut x = vmi(Some(S::LiveMigrate), "node2", Some(true));
        let v = decide(&p, Some(&x), None);
        assert!(
            matches!(&v, Verdict::Deny(m) if m.contains("mig-1")),
            "{v:?}"
        );
        x.status.as_mut().unwrap().migration_state = Some(VirtualMachineInstanceMigrationState {
            migration_uid: Some("mig-1".into()),
            failed: Some(true),
            ..Default::default()
        });
        assert!(decide(&p, Some(&x), None).allowed());
        // Once migrated, the former target runs the VM: the strategy applies.
        x.status.as_mut().unwrap().node_name = Some("node3".into());
        assert!(matches!(
            decide(&p, Some(&x), None),
            Verdict::Evacuate { .. }
        ));
    }

    #[test]
    fn stale_orphaned_finished_and_foreign_pods_are_allowed() {
        let l = labels("source", "vm", "uid-1");
        let x = vmi(Some(S::LiveMigrate), "node2", Some(true));
        // Not on the VMI's node and no migration: a leftover.
        assert!(decide(&pod(&l, "node1"), Some(&x), None).allowed());
        // VMI gone.
        assert!(decide(&pod(&l, "node2"), None, None).allowed());
        // Another VMI of the same name.
        let other = labels("source", "vm", "uid-0");
        assert!(decide(&pod(&other, "node2"), Some(&x), None).allowed());
        let mut p = pod(&l, "node2");
        p.finished = true;
        assert!(decide(&p, Some(&x), None).allowed());
        // A VMI that is not Running yet cannot be migrated: LiveMigrate blocks.
        let mut y = x.clone();
        y.status.as_mut().unwrap().phase = Some(VmiPhase::Scheduled);
        assert!(matches!(
            decide(&pod(&l, "node2"), Some(&y), None),
            Verdict::Deny(_)
        ));
        y.status.as_mut().unwrap().phase = Some(VmiPhase::Failed);
        assert!(decide(&pod(&l, "node2"), Some(&y), None).allowed());
    }

    #[test]
    fn serving_certificate_names_the_service() {
        let now = SystemTime::now();
        let ca = ClusterCa::generate(
            "test CA",
            mignet_dataplane::certs::Validity {
                not_before: now - Duration::from_secs(60),
                not_after: now + Duration::from_secs(3600),
            },
        )
        .unwrap();
        let names = service_dns_names("mignet-manager-webhook", "mignet-system");
        assert_eq!(names[0], "mignet-manager-webhook.mignet-system.svc");
        let c = issue_serving_cert(&ca, &names, Duration::from_secs(600)).unwrap();
        assert!(certified_key(&c).is_ok());
    }
}
