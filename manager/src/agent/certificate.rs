//! The agent's certificate in a cluster: requested through a Kubernetes
//! CertificateSigningRequest (signer `mignet.io/agent`, which the manager
//! runs: `crate::kube_adapter::signer`), written into the cert dir where
//! [`mignet_dataplane::tls::ReloadingTls`] picks it up, renewed before it
//! expires.
//!
//! The key is generated here and never leaves the node. The request asks
//! for exactly `spiffe://mignet/agent/<node>` with digital signature, key
//! encipherment, client auth and server auth; the manager signs it only
//! when the request comes from the agent ServiceAccount through a token
//! bound to a pod on that same node. Lab mode does not use this: the lab
//! issues its agents' certificates locally with rcgen (`lab::in_process_agents`).
//!
//! Pure parts: [`renew_at`] and [`renewal_due`]; the rest is I/O.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use k8s_openapi::api::certificates::v1::{
    CertificateSigningRequest, CertificateSigningRequestSpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::ByteString;
use kube::api::PostParams;
use kube::{Api, Client, ResourceExt};
use mignet_dataplane::certs::{self, CertError, IssuedCert, Role, Validity};

use super::error_chain;
use super::health::{AgentHealth, Gate};
use crate::kube_adapter::signer::{AGENT_USAGES, SIGNER_NAME};

/// How the agent gets its certificate.
#[derive(Debug, Clone)]
pub struct CertificateSettings {
    pub node_name: String,
    /// Where `tls.crt`, `tls.key` and `ca.crt` go (an emptyDir in the
    /// DaemonSet).
    pub cert_dir: PathBuf,
    /// The CA certificate the manager publishes (the mounted
    /// `mignet-ca-bundle` ConfigMap's `ca.crt`).
    pub ca_bundle: PathBuf,
    /// Asked of the signer as `expirationSeconds` (it may cap it); 600 s
    /// to `i32::MAX` s, as the CSR API takes (the flag's parser checks).
    pub lifetime: Duration,
    /// How often a pending request is re-read.
    pub poll: Duration,
    /// Give up on one request after this long (then make a new one).
    pub timeout: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum CertificateError {
    #[error("reading the CA bundle {path:?}")]
    CaBundle {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("generating the key and request for node {node}")]
    Generate {
        node: String,
        #[source]
        source: CertError,
    },
    #[error("creating the CertificateSigningRequest for node {node}")]
    Create {
        node: String,
        #[source]
        source: kube::Error,
    },
    #[error("reading CertificateSigningRequest {name}")]
    Read {
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("CertificateSigningRequest {name} was {state}: {reason}: {message}")]
    Refused {
        name: String,
        state: String,
        reason: String,
        message: String,
    },
    #[error("CertificateSigningRequest {name} not issued after {waited:?} (is the mignet manager running?)")]
    Timeout { name: String, waited: Duration },
    #[error("CertificateSigningRequest {name} was issued for {found:?}, not {expected}")]
    WrongIdentity {
        name: String,
        expected: String,
        found: Vec<String>,
    },
    #[error("the certificate issued by CertificateSigningRequest {name}")]
    Issued {
        name: String,
        #[source]
        source: CertError,
    },
    #[error("writing the certificate into {dir:?}")]
    Write {
        dir: PathBuf,
        #[source]
        source: CertError,
    },
}

/// When to renew a certificate valid over `v`: at two thirds of its
/// lifetime, so a renewal that fails has a third of the lifetime to be
/// retried before the old certificate expires. Pure.
pub fn renew_at(v: &Validity) -> SystemTime {
    let life = v
        .not_after
        .duration_since(v.not_before)
        .unwrap_or(Duration::ZERO);
    v.not_before + life * 2 / 3
}

/// Whether a certificate valid over `v` must be renewed at `now`. Pure.
pub fn renewal_due(v: &Validity, now: SystemTime) -> bool {
    now >= renew_at(v) || now < v.not_before
}

/// The validity of the certificate already in `dir`, if it is there with
/// its key, parses, and is still to be used (not due for renewal).
fn current(dir: &Path, now: SystemTime) -> Option<Validity> {
    let cert = std::fs::read_to_string(dir.join(certs::CERT_FILE)).ok()?;
    std::fs::metadata(dir.join(certs::KEY_FILE)).ok()?;
    let v = certs::validity_of(&cert).ok()?;
    (!renewal_due(&v, now)).then_some(v)
}

fn read_bundle(path: &Path) -> Result<String, CertificateError> {
    std::fs::read_to_string(path).map_err(|source| CertificateError::CaBundle {
        path: path.to_path_buf(),
        source,
    })
}

/// One request: create the CSR, wait for the signer, return the key and
/// certificate. Denied / Failed requests are errors carrying the signer's
/// reason.
pub async fn request(
    client: &Client,
    s: &CertificateSettings,
) -> Result<IssuedCert, CertificateError> {
    let (csr_pem, key_pem) =
        certs::request(Role::Agent, &s.node_name).map_err(|source| CertificateError::Generate {
            node: s.node_name.clone(),
            source,
        })?;
    let api: Api<CertificateSigningRequest> = Api::all(client.clone());
    let csr = CertificateSigningRequest {
        metadata: ObjectMeta {
            generate_name: Some(format!("mignet-agent-{}-", s.node_name)),
            ..Default::default()
        },
        spec: CertificateSigningRequestSpec {
            request: ByteString(csr_pem.into_bytes()),
            signer_name: SIGNER_NAME.into(),
            usages: Some(AGENT_USAGES.iter().map(|u| u.to_string()).collect()),
            expiration_seconds: i32::try_from(s.lifetime.as_secs()).ok(),
            ..Default::default()
        },
        status: None,
    };
    let created = api
        .create(&PostParams::default(), &csr)
        .await
        .map_err(|source| CertificateError::Create {
            node: s.node_name.clone(),
            source,
        })?;
    let name = created.name_any();
    tracing::info!(csr = %name, node = %s.node_name, "requested the agent certificate");
    let start = tokio::time::Instant::now();
    let mut csr = created;
    loop {
        let status = csr.status.clone().unwrap_or_default();
        if let Some(c) = status
            .conditions
            .iter()
            .flatten()
            .find(|c| (c.type_ == "Denied" || c.type_ == "Failed") && c.status == "True")
        {
            return Err(CertificateError::Refused {
                name,
                state: c.type_.to_lowercase(),
                reason: c.reason.clone().unwrap_or_default(),
                message: c.message.clone().unwrap_or_default(),
            });
        }
        if let Some(cert) = status.certificate.filter(|c| !c.0.is_empty()) {
            let cert_pem = String::from_utf8_lossy(&cert.0).into_owned();
            // What came back must be ours: parseable, and for exactly our
            // identity (a signer bug must not make us present another
            // node's name).
            let issued_err = |source| CertificateError::Issued {
                name: name.clone(),
                source,
            };
            certs::validity_of(&cert_pem).map_err(issued_err)?;
            let ids = certs::identities_pem(&cert_pem).map_err(issued_err)?;
            let expected = Role::Agent.uri(&s.node_name);
            if ids.len() != 1 || ids[0].role != Role::Agent.as_str() || ids[0].name != s.node_name {
                return Err(CertificateError::WrongIdentity {
                    name,
                    expected,
                    found: ids
                        .iter()
                        .map(|i| format!("spiffe://mignet/{}/{}", i.role, i.name))
                        .collect(),
                });
            }
            return Ok(IssuedCert { cert_pem, key_pem });
        }
        if start.elapsed() > s.timeout {
            return Err(CertificateError::Timeout {
                name,
                waited: s.timeout,
            });
        }
        tokio::time::sleep(s.poll).await;
        csr = api
            .get(&name)
            .await
            .map_err(|source| CertificateError::Read {
                name: name.clone(),
                source,
            })?;
    }
}

/// Make sure the cert dir holds a certificate not yet due for renewal:
/// reuse the one there (an agent container restart keeps the emptyDir),
/// else request a new one. `ca.crt` is refreshed from the bundle either
/// way. Returns the validity of the certificate in place.
pub async fn ensure(
    client: &Client,
    s: &CertificateSettings,
) -> Result<Validity, CertificateError> {
    let ca = read_bundle(&s.ca_bundle)?;
    let write_err = |source| CertificateError::Write {
        dir: s.cert_dir.clone(),
        source,
    };
    if let Some(v) = current(&s.cert_dir, SystemTime::now()) {
        certs::write_atomic(&s.cert_dir.join(certs::CA_FILE), ca.as_bytes(), 0o644)
            .map_err(write_err)?;
        return Ok(v);
    }
    let issued = request(client, s).await?;
    let v = certs::validity_of(&issued.cert_pem).map_err(|source| CertificateError::Issued {
        name: s.node_name.clone(),
        source,
    })?;
    certs::write_tls_dir(&s.cert_dir, &ca, &issued).map_err(write_err)?;
    Ok(v)
}

/// [`ensure`] until it succeeds, keeping [`Gate::Certificate`] closed with
/// the latest reason meanwhile (so `/readyz` says why), retrying every
/// `retry`. Returns the validity of the certificate in place.
pub async fn obtain(
    client: &Client,
    s: &CertificateSettings,
    health: &AgentHealth,
    retry: Duration,
) -> Validity {
    loop {
        match ensure(client, s).await {
            Ok(v) => {
                health.clear(Gate::Certificate);
                return v;
            }
            Err(e) => {
                let reason = format!("no agent certificate yet: {}", error_chain(&e));
                if health.block(Gate::Certificate, reason.clone()) {
                    tracing::warn!(%reason, "not ready");
                }
                tokio::time::sleep(retry_after(&e, retry)).await;
            }
        }
    }
}

/// How long to wait before the next request after `e`: a refusal needs a
/// human (RBAC, node binding), so asking again soon would only pile up
/// denied CSRs; anything else is retried at `retry`. A fixed interval, not
/// a backoff: a CSR is cheap for the API server and a human fixing RBAC
/// wants the agent to notice within one interval.
fn retry_after(e: &CertificateError, retry: Duration) -> Duration {
    match e {
        CertificateError::Refused { .. } => retry * 6,
        _ => retry,
    }
}

/// Renew for ever: sleep until [`renew_at`], then request a new
/// certificate (the reloader picks the files up). While the certificate in
/// place is still valid a failed renewal only logs and retries; once it has
/// expired the agent is not ready until renewal succeeds.
pub async fn renew_forever(
    client: Client,
    s: CertificateSettings,
    health: std::sync::Arc<AgentHealth>,
    mut validity: Validity,
    retry: Duration,
) {
    loop {
        let wait = renew_at(&validity)
            .duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO);
        tokio::time::sleep(wait).await;
        loop {
            match ensure(&client, &s).await {
                Ok(v) => {
                    health.clear(Gate::Certificate);
                    tracing::info!(not_after = ?v.not_after, "agent certificate renewed");
                    validity = v;
                    break;
                }
                Err(e) => {
                    let why = error_chain(&e);
                    if SystemTime::now() >= validity.not_after {
                        health.block(
                            Gate::Certificate,
                            format!("agent certificate expired; renewal failing: {why}"),
                        );
                    }
                    tracing::warn!(error = %why, "renewing the agent certificate failed; retrying");
                    tokio::time::sleep(retry_after(&e, retry)).await;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(from: u64, to: u64) -> Validity {
        let t = |s| SystemTime::UNIX_EPOCH + Duration::from_secs(s);
        Validity {
            not_before: t(from),
            not_after: t(to),
        }
    }

    #[test]
    fn renewal_at_two_thirds_of_the_lifetime() {
        let c = v(1000, 4000);
        assert_eq!(
            renew_at(&c),
            SystemTime::UNIX_EPOCH + Duration::from_secs(3000)
        );
        let at = |s| SystemTime::UNIX_EPOCH + Duration::from_secs(s);
        assert!(!renewal_due(&c, at(2999)));
        assert!(renewal_due(&c, at(3000)));
        assert!(renewal_due(&c, at(5000)));
        // A certificate from the future (clock stepped back) is not trusted
        // to be in place: renew.
        assert!(renewal_due(&c, at(500)));
    }

    #[test]
    fn a_certificate_ending_before_it_starts_is_due_at_once() {
        let c = v(2000, 1000);
        assert!(renewal_due(
            &c,
            SystemTime::UNIX_EPOCH + Duration::from_secs(2000)
        ));
    }
}
