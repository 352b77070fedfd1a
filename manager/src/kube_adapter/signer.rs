//! The manager as the signer of agent certificates (`mignet.io/agent`).
//!
//! - The cluster CA lives in the Secret `mignet-ca` of the manager's
//!   namespace (created on first start, never logged); its certificate, not
//!   the key, is published in the ConfigMap `mignet-ca-bundle`, which the
//!   agent DaemonSet mounts as its trust anchor.
//! - Each agent asks for its certificate with a Kubernetes
//!   CertificateSigningRequest (certificates.k8s.io/v1, signerName
//!   [`SIGNER_NAME`]); see `crate::agent::certificate` for that side.
//! - The manager approves and signs only requests that [`decide`] accepts:
//!   made by the agent ServiceAccount, from a pod-bound token whose
//!   `authentication.kubernetes.io/node-name` extra (set by the API server
//!   for pod-bound tokens, Kubernetes >= 1.30) names the same node as the
//!   one identity the request asks for, `spiffe://mignet/agent/<node>`.
//!   Anything else is denied with the reason. An agent can therefore only
//!   get its own node's identity, and a stolen agent token from one node
//!   cannot mint another node's certificate.
//!
//! Decisions are pure ([`decide`]); the loop here only reads and writes.

use std::collections::BTreeMap;
use std::future::Future;
use std::time::{Duration, SystemTime};

use futures::StreamExt;
use k8s_openapi::api::certificates::v1::{
    CertificateSigningRequest, CertificateSigningRequestCondition, CertificateSigningRequestStatus,
};
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use k8s_openapi::ByteString;
use kube::api::PostParams;
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Api, Client, ResourceExt};
use mignet_dataplane::certs::{self, CertError, ClusterCa, Role, Validity};

use super::FIELD_MANAGER;
use crate::error_chain;

/// The signerName agents ask for.
pub const SIGNER_NAME: &str = "mignet.io/agent";
/// The user-info extra the API server sets from a pod-bound token.
pub const NODE_NAME_EXTRA: &str = "authentication.kubernetes.io/node-name";
/// Key usages an agent certificate may carry (Kubernetes' usage names).
pub const AGENT_USAGES: [&str; 4] = [
    "digital signature",
    "key encipherment",
    "client auth",
    "server auth",
];
/// Keys of the CA Secret and of the bundle ConfigMap.
pub const CA_CERT_KEY: &str = "ca.crt";
pub const CA_KEY_KEY: &str = "ca.key";

#[derive(Debug, Clone)]
pub struct SignerSettings {
    /// The manager's namespace (CA Secret and bundle ConfigMap).
    pub namespace: String,
    pub ca_secret: String,
    pub ca_bundle: String,
    /// `system:serviceaccount:<namespace>:<this>` may request agent certs.
    pub agent_service_account: String,
    /// Upper bound on the lifetime of an issued certificate; a request's
    /// `expirationSeconds` may ask for less.
    pub max_lifetime: Duration,
    /// Lifetime of a CA created on first start.
    pub ca_lifetime: Duration,
    /// Re-list this often even without watch events.
    pub resync: Duration,
}

impl Default for SignerSettings {
    fn default() -> Self {
        Self {
            namespace: "mignet-system".into(),
            ca_secret: "mignet-ca".into(),
            ca_bundle: "mignet-ca-bundle".into(),
            agent_service_account: "mignet-agent".into(),
            max_lifetime: Duration::from_secs(30 * 86_400),
            ca_lifetime: Duration::from_secs(10 * 365 * 86_400),
            resync: Duration::from_secs(60),
        }
    }
}

impl SignerSettings {
    /// The username the API server records for the agent's token.
    pub fn agent_username(&self) -> String {
        format!(
            "system:serviceaccount:{}:{}",
            self.namespace, self.agent_service_account
        )
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SignerError {
    #[error("reading Secret {namespace}/{name}")]
    ReadSecret {
        namespace: String,
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("creating Secret {namespace}/{name}")]
    CreateSecret {
        namespace: String,
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("Secret {namespace}/{name} has no usable {key:?}")]
    SecretKey {
        namespace: String,
        name: String,
        key: &'static str,
    },
    #[error("the CA in Secret {namespace}/{name}")]
    Ca {
        namespace: String,
        name: String,
        #[source]
        source: CertError,
    },
    #[error("writing ConfigMap {namespace}/{name}")]
    WriteBundle {
        namespace: String,
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("listing CertificateSigningRequests")]
    List(#[source] kube::Error),
    #[error("updating CertificateSigningRequest {name} ({what})")]
    Update {
        name: String,
        what: &'static str,
        #[source]
        source: kube::Error,
    },
}

// ---- pure decisions -----------------------------------------------------------

/// What the signer sees of one request.
#[derive(Debug, Clone)]
pub struct CsrFacts {
    pub signer_name: String,
    pub username: Option<String>,
    pub extra: BTreeMap<String, Vec<String>>,
    pub usages: Vec<String>,
    /// The request's SAN entries (its signature verified), or why it could
    /// not be parsed.
    pub identities: Result<Vec<String>, String>,
    pub approved: bool,
    pub denied_or_failed: bool,
    pub issued: bool,
}

impl Default for CsrFacts {
    fn default() -> Self {
        Self {
            signer_name: String::new(),
            username: None,
            extra: BTreeMap::new(),
            usages: Vec::new(),
            identities: Ok(Vec::new()),
            approved: false,
            denied_or_failed: false,
            issued: false,
        }
    }
}

/// What to do with one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CsrDecision {
    /// Another signer's request, or one already finished: leave it.
    Skip,
    /// Approve (if not yet) and sign for `node`.
    Sign { node: String },
    /// Deny (or, when someone else approved it, fail) with this reason.
    Refuse {
        reason: &'static str,
        message: String,
    },
}

/// Whether `facts` qualifies for an agent certificate. Pure.
pub fn decide(facts: &CsrFacts, agent_username: &str) -> CsrDecision {
    if facts.signer_name != SIGNER_NAME || facts.denied_or_failed || facts.issued {
        return CsrDecision::Skip;
    }
    let refuse = |reason, message: String| CsrDecision::Refuse { reason, message };
    let user = facts.username.as_deref().unwrap_or("");
    if user != agent_username {
        return refuse(
            "NotTheAgent",
            format!("requested by {user:?}; only {agent_username:?} may request {SIGNER_NAME} certificates"),
        );
    }
    let ids = match &facts.identities {
        Ok(ids) => ids,
        Err(e) => return refuse("InvalidRequest", format!("spec.request: {e}")),
    };
    let node = match ids.as_slice() {
        [one] => match certs::parse_role_uri(one) {
            Some(id) if id.role == Role::Agent.as_str() => id.name,
            _ => {
                return refuse(
                    "WrongIdentity",
                    format!("SAN {one:?} is not {}", Role::Agent.uri("<node>")),
                )
            }
        },
        other => {
            return refuse(
                "WrongIdentity",
                format!(
                    "SANs {other:?}: exactly one, {}, is allowed",
                    Role::Agent.uri("<node>")
                ),
            )
        }
    };
    match facts.extra.get(NODE_NAME_EXTRA).map(Vec::as_slice) {
        Some([n]) if *n == node => {}
        Some(found) => {
            return refuse(
                "NodeMismatch",
                format!("the requesting pod runs on {found:?}, the request asks for node {node:?}"),
            )
        }
        None => {
            return refuse(
                "NoNodeBinding",
                format!(
                    "spec.extra[{NODE_NAME_EXTRA:?}] is missing: request with a pod-bound ServiceAccount token (Kubernetes >= 1.30)"
                ),
            )
        }
    }
    let bad: Vec<&String> = facts
        .usages
        .iter()
        .filter(|u| !AGENT_USAGES.contains(&u.as_str()))
        .collect();
    if !bad.is_empty() {
        return refuse(
            "WrongUsages",
            format!("spec.usages {bad:?} not allowed; allowed: {AGENT_USAGES:?}"),
        );
    }
    for needed in ["client auth", "server auth"] {
        if !facts.usages.iter().any(|u| u == needed) {
            return refuse(
                "WrongUsages",
                format!("spec.usages {:?} lacks {needed:?}", facts.usages),
            );
        }
    }
    CsrDecision::Sign { node }
}

/// The lifetime to issue: what the request asks (`expirationSeconds`,
/// Kubernetes' minimum 600 s), capped by `max`. Pure.
pub fn lifetime(requested_seconds: Option<i32>, max: Duration) -> Duration {
    match requested_seconds.and_then(|s| u64::try_from(s).ok()) {
        Some(s) => Duration::from_secs(s.max(600)).min(max),
        None => max,
    }
}

fn has_condition(csr: &CertificateSigningRequest, types: &[&str]) -> bool {
    csr.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| {
            c.iter()
                .any(|c| types.contains(&c.type_.as_str()) && c.status == "True")
        })
}

/// The facts [`decide`] needs, read from the object.
pub fn facts_of(csr: &CertificateSigningRequest) -> CsrFacts {
    let request = String::from_utf8_lossy(&csr.spec.request.0);
    CsrFacts {
        signer_name: csr.spec.signer_name.clone(),
        username: csr.spec.username.clone(),
        extra: csr.spec.extra.clone().unwrap_or_default(),
        usages: csr.spec.usages.clone().unwrap_or_default(),
        identities: certs::request_identities(&request).map_err(|e| error_chain(&e)),
        approved: has_condition(csr, &["Approved"]),
        denied_or_failed: has_condition(csr, &["Denied", "Failed"]),
        issued: csr
            .status
            .as_ref()
            .and_then(|s| s.certificate.as_ref())
            .is_some_and(|c| !c.0.is_empty()),
    }
}

// ---- the CA ------------------------------------------------------------------

/// The CA from the Secret, created (and the Secret with it) when missing;
/// then the bundle ConfigMap made to hold its certificate. The key is never
/// logged nor put anywhere else.
pub async fn ensure_ca(client: &Client, s: &SignerSettings) -> Result<ClusterCa, SignerError> {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &s.namespace);
    let read_err = |source| SignerError::ReadSecret {
        namespace: s.namespace.clone(),
        name: s.ca_secret.clone(),
        source,
    };
    let ca = match secrets.get_opt(&s.ca_secret).await.map_err(read_err)? {
        Some(secret) => ca_from_secret(&secret, s)?,
        None => {
            let now = SystemTime::now();
            let ca = ClusterCa::generate(
                "mignet cluster CA",
                Validity {
                    not_before: now - Duration::from_secs(60),
                    not_after: now + s.ca_lifetime,
                },
            )
            .map_err(|source| SignerError::Ca {
                namespace: s.namespace.clone(),
                name: s.ca_secret.clone(),
                source,
            })?;
            let secret = Secret {
                metadata: ObjectMeta {
                    name: Some(s.ca_secret.clone()),
                    namespace: Some(s.namespace.clone()),
                    ..Default::default()
                },
                type_: Some("Opaque".into()),
                data: Some(BTreeMap::from([
                    (
                        CA_CERT_KEY.into(),
                        ByteString(ca.cert_pem().as_bytes().to_vec()),
                    ),
                    (CA_KEY_KEY.into(), ByteString(ca.key_pem().into_bytes())),
                ])),
                ..Default::default()
            };
            match secrets.create(&post_params(), &secret).await {
                Ok(_) => {
                    tracing::info!(secret = %s.ca_secret, "created the agent CA");
                    ca
                }
                // Another manager won the race: use its CA.
                Err(kube::Error::Api(st)) if st.code == 409 => {
                    let secret = secrets.get(&s.ca_secret).await.map_err(read_err)?;
                    ca_from_secret(&secret, s)?
                }
                Err(source) => {
                    return Err(SignerError::CreateSecret {
                        namespace: s.namespace.clone(),
                        name: s.ca_secret.clone(),
                        source,
                    })
                }
            }
        }
    };
    publish_bundle(client, s, ca.cert_pem()).await?;
    Ok(ca)
}

fn ca_from_secret(secret: &Secret, s: &SignerSettings) -> Result<ClusterCa, SignerError> {
    let field = |key: &'static str| {
        secret
            .data
            .as_ref()
            .and_then(|d| d.get(key))
            .and_then(|b| String::from_utf8(b.0.clone()).ok())
            .ok_or_else(|| SignerError::SecretKey {
                namespace: s.namespace.clone(),
                name: s.ca_secret.clone(),
                key,
            })
    };
    ClusterCa::from_pem(&field(CA_CERT_KEY)?, &field(CA_KEY_KEY)?).map_err(|source| {
        SignerError::Ca {
            namespace: s.namespace.clone(),
            name: s.ca_secret.clone(),
            source,
        }
    })
}

/// Make the bundle ConfigMap hold exactly `ca_pem` under `ca.crt`.
async fn publish_bundle(
    client: &Client,
    s: &SignerSettings,
    ca_pem: &str,
) -> Result<(), SignerError> {
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), &s.namespace);
    let err = |source| SignerError::WriteBundle {
        namespace: s.namespace.clone(),
        name: s.ca_bundle.clone(),
        source,
    };
    let want = BTreeMap::from([(CA_CERT_KEY.to_string(), ca_pem.to_string())]);
    match api.get_opt(&s.ca_bundle).await.map_err(err)? {
        Some(cm) if cm.data.as_ref() == Some(&want) => Ok(()),
        Some(mut cm) => {
            // Update with the read resourceVersion: a concurrent writer
            // makes this fail and the next start fixes it.
            cm.data = Some(want);
            api.replace(&s.ca_bundle, &post_params(), &cm)
                .await
                .map(|_| ())
                .map_err(err)
        }
        None => {
            let cm = ConfigMap {
                metadata: ObjectMeta {
                    name: Some(s.ca_bundle.clone()),
                    namespace: Some(s.namespace.clone()),
                    ..Default::default()
                },
                data: Some(want),
                ..Default::default()
            };
            api.create(&post_params(), &cm)
                .await
                .map(|_| ())
                .map_err(err)
        }
    }
}

fn post_params() -> PostParams {
    PostParams {
        field_manager: Some(FIELD_MANAGER.to_owned()),
        ..Default::default()
    }
}

// ---- the signing loop ----------------------------------------------------------

/// What one pass did, for logs and tests.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct SignReport {
    /// Requests signed, by name.
    pub signed: Vec<String>,
    /// Requests refused, by name, with the reason.
    pub refused: Vec<(String, String)>,
    /// Requests whose write failed this pass (retried on the next one);
    /// one failing request never holds up the others.
    pub errors: Vec<String>,
}

/// Append a `True` condition (Approved, Denied, Failed) to the request.
fn add_condition(csr: &mut CertificateSigningRequest, type_: &str, reason: &str, message: &str) {
    let now = Time(k8s_openapi::jiff::Timestamp::now());
    csr.status
        .get_or_insert_with(CertificateSigningRequestStatus::default)
        .conditions
        .get_or_insert_with(Vec::new)
        .push(CertificateSigningRequestCondition {
            type_: type_.into(),
            status: "True".into(),
            reason: Some(reason.into()),
            message: Some(message.into()),
            last_update_time: Some(now.clone()),
            last_transition_time: Some(now),
        });
}

/// Only our signer's requests: the API server filters by
/// `spec.signerName`, so kubelet and other signers' CSRs never reach us.
fn ours() -> String {
    format!("spec.signerName={SIGNER_NAME}")
}

/// One pass over every CertificateSigningRequest for [`SIGNER_NAME`]
/// (listed with [`ours`]).
pub async fn sign_pending(
    client: &Client,
    ca: &ClusterCa,
    s: &SignerSettings,
) -> Result<SignReport, SignerError> {
    let api: Api<CertificateSigningRequest> = Api::all(client.clone());
    let list = api
        .list(&kube::api::ListParams::default().fields(&ours()))
        .await
        .map_err(SignerError::List)?;
    let agent = s.agent_username();
    let mut report = SignReport::default();
    for csr in list.items {
        let name = csr.name_any();
        if let Err(e) = handle(&api, ca, s, &agent, csr, &mut report).await {
            report.errors.push(error_chain(&e));
            if !is_conflict(&e) {
                tracing::warn!(csr = %name, error = %error_chain(&e), "handling agent certificate request");
            }
        }
    }
    Ok(report)
}

/// Decide one request and write the outcome.
async fn handle(
    api: &Api<CertificateSigningRequest>,
    ca: &ClusterCa,
    s: &SignerSettings,
    agent: &str,
    csr: CertificateSigningRequest,
    report: &mut SignReport,
) -> Result<(), SignerError> {
    let name = csr.name_any();
    let facts = facts_of(&csr);
    match decide(&facts, agent) {
        CsrDecision::Skip => {}
        CsrDecision::Refuse { reason, message } => {
            // Not approved yet: deny. Approved by someone else (an
            // admin): the signer still refuses, which Kubernetes
            // records as Failed.
            let (type_, sub, what) = if facts.approved {
                ("Failed", "status", "fail")
            } else {
                ("Denied", "approval", "deny")
            };
            tracing::warn!(csr = %name, %reason, %message, "refusing agent certificate request");
            let mut csr = csr;
            add_condition(&mut csr, type_, reason, &message);
            api.replace_subresource(sub, &name, &post_params(), &csr)
                .await
                .map_err(|source| SignerError::Update {
                    name: name.clone(),
                    what,
                    source,
                })?;
            report.refused.push((name, format!("{reason}: {message}")));
        }
        CsrDecision::Sign { node } => {
            let mut csr = csr;
            if !facts.approved {
                add_condition(
                    &mut csr,
                    "Approved",
                    "AgentNodeMatches",
                    &format!("mignet manager: agent ServiceAccount on node {node}"),
                );
                csr = api
                    .replace_subresource("approval", &name, &post_params(), &csr)
                    .await
                    .map_err(|source| SignerError::Update {
                        name: name.clone(),
                        what: "approve",
                        source,
                    })?;
            }
            let now = SystemTime::now();
            let validity = Validity {
                // A minute back: the agents' clocks may lag ours.
                not_before: now - Duration::from_secs(60),
                not_after: now + lifetime(csr.spec.expiration_seconds, s.max_lifetime),
            };
            let request = String::from_utf8_lossy(&csr.spec.request.0).into_owned();
            let cert = match ca.sign_request(Role::Agent, &request, validity) {
                Ok((pem, _)) => pem,
                Err(e) => {
                    // decide() parsed the same request; a failure here is
                    // recorded on the object rather than retried forever.
                    let message = error_chain(&e);
                    add_condition(&mut csr, "Failed", "SigningFailed", &message);
                    api.replace_status(&name, &post_params(), &csr)
                        .await
                        .map_err(|source| SignerError::Update {
                            name: name.clone(),
                            what: "fail",
                            source,
                        })?;
                    report
                        .refused
                        .push((name, format!("SigningFailed: {message}")));
                    return Ok(());
                }
            };
            csr.status.get_or_insert_with(Default::default).certificate =
                Some(ByteString(cert.into_bytes()));
            api.replace_status(&name, &post_params(), &csr)
                .await
                .map_err(|source| SignerError::Update {
                    name: name.clone(),
                    what: "sign",
                    source,
                })?;
            tracing::info!(csr = %name, %node, "signed agent certificate");
            report.signed.push(name);
        }
    }
    Ok(())
}

/// Sign on every change of a [`SIGNER_NAME`] request (and every
/// `resync`) until `shutdown`, with the CA [`ensure_ca`] set up. A failed
/// pass is logged and retried on the next change or tick.
pub async fn run_with_ca(
    client: Client,
    ca: ClusterCa,
    s: SignerSettings,
    shutdown: impl Future<Output = ()>,
) {
    let api: Api<CertificateSigningRequest> = Api::all(client.clone());
    let mut events = watcher(api, watcher::Config::default().fields(&ours()))
        .default_backoff()
        .boxed();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        match sign_pending(&client, &ca, &s).await {
            Ok(r) if r == SignReport::default() => {}
            Ok(r) => tracing::debug!(?r, "signer pass"),
            Err(e) => tracing::warn!(error = %error_chain(&e), "signer pass failed"),
        }
        tokio::select! {
            _ = &mut shutdown => return,
            _ = events.next() => {}
            _ = tokio::time::sleep(s.resync) => {}
        }
    }
}

fn is_conflict(e: &SignerError) -> bool {
    matches!(e, SignerError::Update { source: kube::Error::Api(st), .. } if st.code == 409)
}

#[cfg(test)]
mod tests {
    use super::*;

    const AGENT: &str = "system:serviceaccount:mignet-system:mignet-agent";

    fn good(node: &str) -> CsrFacts {
        CsrFacts {
            signer_name: SIGNER_NAME.into(),
            username: Some(AGENT.into()),
            extra: BTreeMap::from([(NODE_NAME_EXTRA.into(), vec![node.into()])]),
            usages: AGENT_USAGES.iter().map(|u| u.to_string()).collect(),
            identities: Ok(vec![Role::Agent.uri(node)]),
            ..Default::default()
        }
    }

    fn reason(d: CsrDecision) -> &'static str {
        match d {
            CsrDecision::Refuse { reason, .. } => reason,
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[test]
    fn the_agent_on_its_own_node_is_signed() {
        assert_eq!(
            decide(&good("node-a"), AGENT),
            CsrDecision::Sign {
                node: "node-a".into()
            }
        );
        // Already approved (by us in an earlier pass) and not issued: sign.
        let approved = CsrFacts {
            approved: true,
            ..good("node-a")
        };
        assert!(matches!(decide(&approved, AGENT), CsrDecision::Sign { .. }));
    }

    #[test]
    fn other_signers_and_finished_requests_are_left_alone() {
        for f in [
            CsrFacts {
                signer_name: "kubernetes.io/kube-apiserver-client".into(),
                ..good("a")
            },
            CsrFacts {
                issued: true,
                ..good("a")
            },
            CsrFacts {
                denied_or_failed: true,
                ..good("a")
            },
        ] {
            assert_eq!(decide(&f, AGENT), CsrDecision::Skip);
        }
    }

    #[test]
    fn anything_but_the_agent_for_its_own_node_is_refused() {
        let other_user = CsrFacts {
            username: Some("system:serviceaccount:default:default".into()),
            ..good("a")
        };
        assert_eq!(reason(decide(&other_user, AGENT)), "NotTheAgent");
        let other_node = CsrFacts {
            identities: Ok(vec![Role::Agent.uri("b")]),
            ..good("a")
        };
        let d = decide(&other_node, AGENT);
        assert!(format!("{d:?}").contains("\\\"b\\\""), "{d:?}");
        assert_eq!(reason(d), "NodeMismatch");
        let unbound = CsrFacts {
            extra: BTreeMap::new(),
            ..good("a")
        };
        assert_eq!(reason(decide(&unbound, AGENT)), "NoNodeBinding");
        let two = CsrFacts {
            identities: Ok(vec![Role::Agent.uri("a"), Role::Agent.uri("b")]),
            ..good("a")
        };
        assert_eq!(reason(decide(&two, AGENT)), "WrongIdentity");
        let manager = CsrFacts {
            identities: Ok(vec![Role::Manager.uri("a")]),
            ..good("a")
        };
        assert_eq!(reason(decide(&manager, AGENT)), "WrongIdentity");
        let garbage = CsrFacts {
            identities: Err("bad PEM".into()),
            ..good("a")
        };
        assert_eq!(reason(decide(&garbage, AGENT)), "InvalidRequest");
        let signing = CsrFacts {
            usages: vec![
                "client auth".into(),
                "server auth".into(),
                "cert sign".into(),
            ],
            ..good("a")
        };
        assert_eq!(reason(decide(&signing, AGENT)), "WrongUsages");
        let client_only = CsrFacts {
            usages: vec!["client auth".into()],
            ..good("a")
        };
        assert_eq!(reason(decide(&client_only, AGENT)), "WrongUsages");
    }

    #[test]
    fn lifetime_is_the_request_capped() {
        let max = Duration::from_secs(86_400);
        assert_eq!(lifetime(None, max), max);
        assert_eq!(lifetime(Some(3600), max), Duration::from_secs(3600));
        assert_eq!(lifetime(Some(10), max), Duration::from_secs(600));
        assert_eq!(lifetime(Some(1_000_000), max), max);
        assert_eq!(lifetime(Some(-5), max), max);
    }
}
