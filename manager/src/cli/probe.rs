//! `mignet probe`'s glue: the API its round's pods are read from (the
//! verbs' target rules: `--kubeconfig`, `--lab`/`$MIGNET_LAB_DIR`,
//! in-cluster) and the agent certificate (the agent's sources: files, or a
//! CertificateSigningRequest); the round itself is
//! [`crate::network::probe`].

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::target::{self, Target, TargetArgs, TargetEnv};
use crate::error_chain;
use crate::network::preflight::{Failure, FailureReason, ProbeReport};
use crate::network::probe::{self, ProbeError, ProbeSettings};

/// Where the agent certificate comes from, as for `mignet agent`.
#[derive(Debug, Clone)]
pub enum CertSource {
    /// `ca.crt`, `tls.crt`, `tls.key` are in the cert dir already.
    Files,
    /// Requested with a CertificateSigningRequest
    /// ([`crate::agent::certificate::ensure`]).
    Csr {
        ca_bundle: PathBuf,
        lifetime: Duration,
    },
}

#[derive(Debug, Clone)]
pub struct CertSettings {
    pub source: CertSource,
    pub cert_dir: PathBuf,
    pub allow_tls12: bool,
}

/// Run the round on the target the flags name, write the report
/// (termination log and stdout) and return it. Errs only on bad flags:
/// an unreachable API or a missing certificate is in the report.
pub async fn run(
    s: ProbeSettings,
    certs: CertSettings,
    target_args: &TargetArgs,
) -> Result<ProbeReport, ProbeError> {
    let started = Instant::now();
    s.check()?;
    let target = target::choose(target_args, &TargetEnv::from_env())
        .map_err(|e| ProbeError::Usage(e.to_string()))?;
    let tls = || probe::load_tls(&certs.cert_dir, certs.allow_tls12);
    let round = async {
        Ok(match target {
            Target::Lab(dir) => {
                if matches!(certs.source, CertSource::Csr { .. }) {
                    return Err(ProbeError::Usage(
                    "--cert-source csr needs a cluster; in the lab pass --cert-source files --cert-dir <lab>/agents/<node>/certs".into(),
                ));
                }
                let backend = target::open_lab(&dir)
                    .map(|store| crate::backend::LocalBackend::new(Arc::new(store)))
                    .map_err(|e| error_chain(&e));
                probe::run(&s, backend, tls(), started).await
            }
            Target::Cluster(kubeconfig) => {
                let client = target::connect(kubeconfig.as_deref())
                    .await
                    .map_err(|e| error_chain(&e));
                let tls = match (&certs.source, &client) {
                    (CertSource::Files, _) => tls(),
                    (CertSource::Csr { .. }, Err(e)) => Err(format!("requesting it: {e}")),
                    (
                        CertSource::Csr {
                            ca_bundle,
                            lifetime,
                        },
                        Ok(c),
                    ) => request(c, &s, &certs, ca_bundle, *lifetime)
                        .await
                        .and_then(|()| tls()),
                };
                let backend = client.map(crate::backend::KubeBackend::unwatched);
                probe::run(&s, backend, tls, started).await
            }
        })
    };
    // As a pod's PID 1 the probe would ignore SIGTERM without a handler,
    // and a deleted pod (an abandoned round) would linger for its grace
    // period, its address with it.
    let report = tokio::select! {
        r = round => r?,
        () = terminated() => ProbeReport {
            node: s.node.clone(),
            address: None,
            mtu: None,
            own_failure: Some(Failure {
                reason: FailureReason::NotStarted,
                detail: "stopped by SIGTERM before the round ended".into(),
            }),
            peers: Vec::new(),
        },
    };
    probe::write_report(&report, &s.termination_log);
    Ok(report)
}

/// Resolves on SIGTERM (never, if the handler cannot be installed).
async fn terminated() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut s) => {
            s.recv().await;
        }
        Err(e) => {
            tracing::warn!(error = %e, "probe: no SIGTERM handler");
            std::future::pending::<()>().await
        }
    }
}

/// The agent's certificate request, within half the probe's time (the
/// checks need the rest).
async fn request(
    client: &kube::Client,
    s: &ProbeSettings,
    certs: &CertSettings,
    ca_bundle: &std::path::Path,
    lifetime: Duration,
) -> Result<(), String> {
    use crate::agent::certificate::{ensure, CertificateSettings};
    let cs = CertificateSettings {
        node_name: s.node.clone(),
        cert_dir: certs.cert_dir.clone(),
        ca_bundle: ca_bundle.to_path_buf(),
        lifetime,
        poll: Duration::from_secs(1),
        timeout: s.deadline / 2,
    };
    match tokio::time::timeout(cs.timeout, ensure(client, &cs)).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(error_chain(&e)),
        Err(_) => Err(format!(
            "no certificate from the signer within {:?} (is the mignet manager running?)",
            cs.timeout
        )),
    }
}
