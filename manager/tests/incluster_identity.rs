//! The agent and the manager as in-cluster components, each under its own
//! ServiceAccount token (TokenRequest), on the real kube-apiserver bed:
//!
//! - the agent's real loop and writes succeed with exactly the ClusterRole
//!   in deploy/base/rbac-agent.yaml, and a write it must not make is 403;
//! - the manager's signer (CA Secret, bundle ConfigMap, CSR approval and
//!   signing) works with deploy/base/rbac-manager.yaml, and the agent gets
//!   a certificate for its own node only (pod-bound token -> node-name
//!   extra), chaining to the published CA; another node's SAN is denied;
//! - (no bed needed) an unreadable HyperConverged closes the agent's
//!   readiness gate and holds migrations; an invalid one is a warning.
//!
//! Run: `tests/k8s/run.sh cargo test -p mignet --test incluster_identity`.

mod common;

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{ensure_crds, env, kubectl_ok, kubectl_stdin, wait_for, TestNamespace, TestRbac};
use k8s_openapi::api::authentication::v1::{BoundObjectReference, TokenRequest, TokenRequestSpec};
use k8s_openapi::api::certificates::v1::CertificateSigningRequest;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret, ServiceAccount};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff;
use kube::api::{PostParams, ResourceExt};
use kube::config::{AuthInfo, KubeConfigOptions, Kubeconfig};
use kube::{Api, Client};
use mignet::agent::certificate::{self, CertificateError, CertificateSettings};
use mignet::agent::{AgentCore, AgentSettings, GuestBoot, Readiness};
use mignet::api::{
    HyperConverged, HyperConvergedSpec, LiveMigrationConfig, MigrationPhase,
    VirtualMachineInstance, VirtualMachineInstanceMigration, VirtualMachineInstanceMigrationSpec,
    VirtualMachineInstanceMigrationState, VirtualMachineInstanceSpec, VirtualMachineInstanceStatus,
};
use mignet::backend::protocol::enter_phase;
use mignet::backend::{
    modify, modify_status, protocol, Backend, BackendError, Changes, Kind, KubeBackend,
    LocalBackend, ObjectRef, Op,
};
use mignet::kube_adapter::signer::{self, SignerSettings};
use mignet_dataplane::certs::{self, ClusterCa, Role, Validity};
use serde_json::json;

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// One signer at a time: a signer owns its signerName cluster-wide and
/// (rightly) denies requests from any other agent ServiceAccount, so two
/// tests' signers running at once would deny each other's agents.
static SIGNER: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn tmpdir(what: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!(
        "mignet-{what}-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&d).unwrap();
    d
}

struct RmDir(std::path::PathBuf);
impl Drop for RmDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn now() -> Time {
    let t = jiff::Timestamp::now();
    Time(jiff::Timestamp::from_second(t.as_second()).unwrap())
}

/// A client that authenticates with `token` only (no admin credentials, no
/// impersonation): what a pod with that ServiceAccount token gets.
async fn client_with_token(token: &str) -> Client {
    let e = env();
    let kc = Kubeconfig::read_from(&e.kubeconfig).expect("reading MIGNET_KUBECONFIG");
    let mut cfg = kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .expect("kubeconfig");
    cfg.auth_info = AuthInfo {
        token: Some(token.to_string().into()),
        ..Default::default()
    };
    Client::try_from(cfg).expect("client")
}

/// A TokenRequest for `sa` in `ns`, bound to `pod` when given (then the API
/// server records the pod's node as the `node-name` extra).
async fn token_for(admin: &Client, ns: &str, sa: &str, pod: Option<&Pod>) -> String {
    let api: Api<ServiceAccount> = Api::namespaced(admin.clone(), ns);
    let req = TokenRequest {
        spec: TokenRequestSpec {
            audiences: vec![],
            expiration_seconds: Some(3600),
            bound_object_ref: pod.map(|p| BoundObjectReference {
                api_version: Some("v1".into()),
                kind: Some("Pod".into()),
                name: p.metadata.name.clone(),
                uid: p.metadata.uid.clone(),
            }),
        },
        ..Default::default()
    };
    api.create_token_request(sa, &PostParams::default(), &req)
        .await
        .expect("TokenRequest")
        .status
        .expect("token status")
        .token
}

fn sa_name(full: &str) -> &str {
    full.rsplit(':').next().unwrap()
}

fn is_forbidden(e: &BackendError) -> bool {
    let s = mignet::agent::error_chain(e);
    s.contains("forbidden") || s.contains("Forbidden")
}

fn agent_settings(node: &str, root: &std::path::Path) -> AgentSettings {
    let ca = ClusterCa::generate("test CA", Validity::days_from_now(1)).unwrap();
    let leaf = ca
        .issue(Role::Agent, node, Validity::days_from_now(1))
        .unwrap();
    let cert_dir = root.join("certs");
    certs::write_tls_dir(&cert_dir, ca.cert_pem(), &leaf).unwrap();
    AgentSettings {
        node_name: node.into(),
        pod_ip: "127.0.0.1".parse().unwrap(),
        migration_network: None,
        migration_interface: "migration0".into(),
        prefer_family: None,
        netns: None,
        cert_dir,
        allow_tls12: false,
        state_dir: root.join("state"),
        // No guest here: a VM start fails fast and is recorded as such.
        boot: GuestBoot::new(root.join("no-kernel"), root.join("no-initrd")),
        multifd_channels: None,
        shutdown_grace: Duration::ZERO,
        launcher_root: None,
    }
}

/// A VMI `name` whose migration `m` runs from `source` to `target`, and
/// the migration in `phase`. Returns the migration's uid.
async fn migration<B: Backend>(
    b: &B,
    ns: &str,
    name: &str,
    source: &str,
    target: &str,
    phase: MigrationPhase,
    abort: bool,
) -> String {
    let mut vmi = VirtualMachineInstance::new(name, VirtualMachineInstanceSpec::default());
    vmi.metadata.namespace = Some(ns.into());
    b.create(&vmi).await.expect("create VMI");
    let mut m = VirtualMachineInstanceMigration::new(
        &format!("{name}-mig"),
        VirtualMachineInstanceMigrationSpec {
            vmi_name: name.into(),
        },
    );
    m.metadata.namespace = Some(ns.into());
    let m = b.create(&m).await.expect("create VMIM");
    let uid = m.uid().unwrap();
    let u = uid.clone();
    let (src, tgt) = (source.to_string(), target.to_string());
    modify_status(b, ns, name, move |v: &mut VirtualMachineInstance| {
        v.status = Some(VirtualMachineInstanceStatus {
            node_name: Some(src.clone()),
            migration_state: Some(VirtualMachineInstanceMigrationState {
                migration_uid: Some(u.clone()),
                source_node: Some(src.clone()),
                target_node: Some(tgt.clone()),
                target_node_address: (phase == MigrationPhase::TargetReady)
                    .then(|| "127.0.0.1:1".to_string()),
                abort_requested: abort.then_some(true),
                ..Default::default()
            }),
            ..Default::default()
        });
        true
    })
    .await
    .expect("VMI status");
    let (src, tgt) = (source.to_string(), target.to_string());
    modify_status(
        b,
        ns,
        &format!("{name}-mig"),
        |m: &mut VirtualMachineInstanceMigration| {
            enter_phase(m, phase, now());
            // The controller's copy, from which the VMIM's node labels come.
            m.status
                .get_or_insert_with(Default::default)
                .migration_state = Some(VirtualMachineInstanceMigrationState {
                migration_uid: Some(uid.clone()),
                source_node: Some(src.clone()),
                target_node: Some(tgt.clone()),
                ..Default::default()
            });
            true
        },
    )
    .await
    .expect("VMIM status");
    // The controller's node labels, by which the agent selects its objects.
    modify(b, ns, name, |v: &mut VirtualMachineInstance| {
        let wanted = protocol::vmi_node_labels(v);
        protocol::set_labels(&mut v.metadata.labels, &wanted)
    })
    .await
    .expect("VMI labels");
    modify(
        b,
        ns,
        &format!("{name}-mig"),
        |m: &mut VirtualMachineInstanceMigration| {
            let wanted = protocol::vmim_node_labels(m);
            protocol::set_labels(&mut m.metadata.labels, &wanted)
        },
    )
    .await
    .expect("VMIM labels");
    uid
}

async fn phase_of<B: Backend>(b: &B, ns: &str, name: &str) -> Option<MigrationPhase> {
    b.get::<VirtualMachineInstanceMigration>(ns, name)
        .await
        .ok()
        .flatten()
        .and_then(|m| m.status.and_then(|s| s.phase))
}

struct Task(tokio::task::JoinHandle<()>);
impl Drop for Task {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[tokio::test]
async fn agent_loop_runs_under_its_own_token_and_nothing_more() {
    ensure_crds();
    let ns = TestNamespace::new("mignet-agent-rbac");
    let n = ns.name.as_str();
    let rbac = TestRbac::apply(n);
    let admin = common::client().await;
    let token = token_for(&admin, n, sa_name(&rbac.agent_sa), None).await;
    let agent = client_with_token(&token).await;
    let admin_b = KubeBackend::new(admin.clone(), Some(n));
    let me = format!("node-{n}");

    // The config the agent reads every pass.
    let mut hco = HyperConverged::new("kubevirt-hyperconverged", HyperConvergedSpec::default());
    hco.metadata.namespace = Some(n.into());
    admin_b.create(&hco).await.expect("create HCO");
    // Three migrations the agent must finish by itself without QEMU:
    // source with no VM here (fails), abort before start (aborted), and a
    // target whose preparing agent "restarted" (fails).
    migration(
        &admin_b,
        n,
        "src",
        &me,
        "other",
        MigrationPhase::TargetReady,
        false,
    )
    .await;
    migration(
        &admin_b,
        n,
        "abort",
        &me,
        "other",
        MigrationPhase::Scheduling,
        true,
    )
    .await;
    migration(
        &admin_b,
        n,
        "tgt",
        "other",
        &me,
        MigrationPhase::PreparingTarget,
        false,
    )
    .await;

    let root = tmpdir("agent-rbac");
    let _rm = RmDir(root.clone());
    let core = Arc::new(
        AgentCore::start(agent_settings(&me, &root))
            .await
            .expect("agent core"),
    );
    let backend = KubeBackend::for_agent(agent.clone(), Some(n), &me);
    // Until RBAC is in the authorizer's cache the loop's first passes may be
    // refused; it retries by itself (level-triggered).
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let _loop = Task(tokio::spawn(mignet::agent::run_with_core(
        backend.clone(),
        core.clone(),
        async move {
            let _ = stop_rx.await;
        },
    )));
    for name in ["src-mig", "abort-mig", "tgt-mig"] {
        wait_for(
            &format!("the agent ends {name} under its own token"),
            Duration::from_secs(60),
            || async {
                (phase_of(&admin_b, n, name).await == Some(MigrationPhase::Failed)).then_some(())
            },
        )
        .await;
    }
    let vmi: VirtualMachineInstance = admin_b.get(n, "abort").await.unwrap().unwrap();
    let ms = vmi.status.unwrap().migration_state.unwrap();
    assert_eq!(ms.failed, Some(true));
    assert!(
        ms.abort_status.is_some(),
        "abortStatus written by the agent"
    );
    let vmi: VirtualMachineInstance = admin_b.get(n, "src").await.unwrap().unwrap();
    let reason = vmi
        .status
        .unwrap()
        .migration_state
        .unwrap()
        .failure_reason
        .unwrap();
    assert!(reason.contains("not running on"), "{reason}");
    // The config was readable all along: no gate closed.
    assert!(
        core.health.blockers().is_empty(),
        "{:?}",
        core.health.blockers()
    );
    assert!(matches!(core.readiness().await, Readiness::Ready(_)));

    // The progress annotation (the source's write while migrating).
    let m: VirtualMachineInstanceMigration = admin_b.get(n, "src-mig").await.unwrap().unwrap();
    let progress = mignet::agent::Progress {
        elapsed: Duration::from_secs(2),
        transferred: 10,
        total: 20,
        remaining: 10,
        ..Default::default()
    };
    mignet::agent::run_loop::write_progress(&backend, &m, &progress, None).await;
    let m: VirtualMachineInstanceMigration = admin_b.get(n, "src-mig").await.unwrap().unwrap();
    assert!(
        m.annotations()
            .contains_key(mignet::backend::protocol::PROGRESS_ANNOTATION),
        "progress annotation written with the agent's token"
    );

    // Status merge patches keep fields our types do not model.
    kubectl_ok(&[
        "patch",
        "vmi",
        "src",
        "-n",
        n,
        "--subresource=status",
        "--type=merge",
        "-p",
        r#"{"status":{"foreignField":"kept"}}"#,
    ]);
    modify_status(&backend, n, "src", |v: &mut VirtualMachineInstance| {
        v.status
            .get_or_insert_with(Default::default)
            .evacuation_node_name = Some("agent-wrote".into());
        true
    })
    .await
    .expect("agent status patch");
    let raw = kubectl_ok(&["get", "vmi", "src", "-n", n, "-o", "json"]);
    let raw: serde_json::Value = serde_json::from_str(&raw).unwrap();
    assert_eq!(raw["status"]["foreignField"], "kept", "{raw}");

    // What the agent must not do: write a VMI's spec, create a migration,
    // read Secrets, approve certificates.
    let before: VirtualMachineInstance = admin_b.get(n, "src").await.unwrap().unwrap();
    let mut after = before.clone();
    after.labels_mut().insert("x".into(), "y".into());
    let e = backend.patch_object(&before, &after).await.unwrap_err();
    assert!(is_forbidden(&e), "{e:?}");
    let mut m = VirtualMachineInstanceMigration::new(
        "not-allowed",
        VirtualMachineInstanceMigrationSpec {
            vmi_name: "src".into(),
        },
    );
    m.metadata.namespace = Some(n.into());
    let e = backend.create(&m).await.unwrap_err();
    assert!(is_forbidden(&e), "{e:?}");
    let secrets: Api<Secret> = Api::namespaced(agent.clone(), n);
    match secrets.list(&Default::default()).await {
        Err(kube::Error::Api(s)) => assert_eq!(s.code, 403),
        other => panic!("the agent read Secrets: {other:?}"),
    }
    let _ = stop_tx.send(());
}

/// A Node `node` and an agent Pod on it in `ns`. Nothing runs the pod
/// (no kubelet here): only the objects matter, so a token can be bound to
/// the pod and, through it, to its node.
async fn agent_pod(admin: &Client, ns: &str, rbac: &TestRbac, node: &str) -> Pod {
    kubectl_stdin(
        &["apply", "-f", "-"],
        &json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": node}}).to_string(),
    );
    let pods: Api<Pod> = Api::namespaced(admin.clone(), ns);
    let pod: Pod = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "agent", "namespace": ns},
        "spec": {
            "nodeName": node,
            "serviceAccountName": sa_name(&rbac.agent_sa),
            "automountServiceAccountToken": false,
            "containers": [{"name": "agent", "image": "mignet:dev"}]
        }
    }))
    .unwrap();
    pods.create(&PostParams::default(), &pod)
        .await
        .expect("create pod")
}

#[tokio::test]
async fn manager_signs_only_the_agents_own_node_certificate() {
    let _one_signer = SIGNER.lock().await;
    ensure_crds();
    let ns = TestNamespace::new("mignet-csr");
    let n = ns.name.as_str();
    let rbac = TestRbac::apply(n);
    let admin = common::client().await;
    let node = format!("node-a-{n}");

    let pod = agent_pod(&admin, n, &rbac, &node).await;
    let agent_token = token_for(&admin, n, sa_name(&rbac.agent_sa), Some(&pod)).await;
    let unbound_token = token_for(&admin, n, sa_name(&rbac.agent_sa), None).await;
    let manager_token = token_for(&admin, n, sa_name(&rbac.manager_sa), None).await;
    let agent = client_with_token(&agent_token).await;
    let unbound = client_with_token(&unbound_token).await;
    let manager = client_with_token(&manager_token).await;

    // The manager: CA Secret + bundle ConfigMap under its own Role.
    let s = SignerSettings {
        namespace: n.into(),
        agent_service_account: sa_name(&rbac.agent_sa).into(),
        resync: Duration::from_secs(1),
        ..Default::default()
    };
    let ca = ensure_ca_as(&manager, &s).await;
    // Idempotent: a second start reads the same CA.
    let again = signer::ensure_ca(&manager, &s)
        .await
        .expect("ensure_ca again");
    assert_eq!(again.cert_pem(), ca.cert_pem());
    let cms: Api<ConfigMap> = Api::namespaced(admin.clone(), n);
    let bundle = cms.get("mignet-ca-bundle").await.expect("bundle");
    let bundle_pem = bundle.data.unwrap()["ca.crt"].clone();
    assert_eq!(bundle_pem, ca.cert_pem());
    assert!(!bundle_pem.contains("PRIVATE KEY"));
    // The manager reads its CA Secret only, no other.
    kubectl_ok(&[
        "create",
        "secret",
        "generic",
        "other",
        "-n",
        n,
        "--from-literal=k=v",
    ]);
    let msecrets: Api<Secret> = Api::namespaced(manager.clone(), n);
    match msecrets.get("other").await {
        Err(kube::Error::Api(st)) => assert_eq!(st.code, 403),
        other => panic!("the manager read another Secret: {other:?}"),
    }

    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let _signer = Task(tokio::spawn(signer::run_with_ca(
        manager.clone(),
        ca,
        s.clone(),
        async move {
            let _ = stop_rx.await;
        },
    )));

    let root = tmpdir("agent-csr");
    let _rm = RmDir(root.clone());
    std::fs::write(root.join("bundle.crt"), &bundle_pem).unwrap();
    let cs = |node: &str| CertificateSettings {
        node_name: node.into(),
        cert_dir: root.join(format!("certs-{node}")),
        ca_bundle: root.join("bundle.crt"),
        lifetime: Duration::from_secs(3600),
        poll: Duration::from_millis(200),
        timeout: Duration::from_secs(60),
    };

    // The agent on its own node gets its certificate (retrying while RBAC
    // propagates).
    let mine = cs(&node);
    let validity = wait_for("agent certificate", Duration::from_secs(90), || async {
        match certificate::ensure(&agent, &mine).await {
            Ok(v) => Some(v),
            Err(CertificateError::Create {
                source: kube::Error::Api(st),
                ..
            }) if st.code == 403 => None,
            Err(e) => panic!("agent certificate: {}", mignet::agent::error_chain(&e)),
        }
    })
    .await
    .0;
    let life = validity
        .not_after
        .duration_since(validity.not_before)
        .unwrap();
    assert!(life <= Duration::from_secs(3600 + 60), "lifetime {life:?}");
    let cert_pem = std::fs::read_to_string(mine.cert_dir.join("tls.crt")).unwrap();
    let der = rustls::pki_types::pem::PemObject::from_pem_slice(cert_pem.as_bytes())
        .map(|d: rustls::pki_types::CertificateDer<'static>| d)
        .unwrap();
    assert_eq!(
        certs::identities(&der).unwrap(),
        vec![certs::Identity {
            role: "agent".into(),
            name: node.clone()
        }]
    );
    assert_eq!(
        std::fs::read_to_string(mine.cert_dir.join("ca.crt")).unwrap(),
        bundle_pem
    );
    // Chains to the CA, and the key matches: the agent's own TLS loader
    // (which verifies both) accepts the directory, and two agents with it
    // complete a mutual-TLS handshake.
    mignet_dataplane::tls::load_configs(
        &mignet_dataplane::tls::TlsPaths::in_dir(&mine.cert_dir),
        &Default::default(),
        std::time::SystemTime::now(),
    )
    .expect("the issued certificate loads as the agent's TLS identity");
    assert_chains(&cert_pem, &bundle_pem);

    // A request for another node's identity with this node's token: denied.
    let e = certificate::request(&agent, &cs("node-b"))
        .await
        .unwrap_err();
    match &e {
        CertificateError::Refused {
            state,
            reason,
            message,
            ..
        } => {
            assert_eq!(state, "denied");
            assert_eq!(reason, "NodeMismatch", "{message}");
        }
        other => panic!("expected a denial, got {other:?}"),
    }
    // A token not bound to a pod carries no node: denied too.
    let e = certificate::request(&unbound, &cs(&node))
        .await
        .unwrap_err();
    assert!(
        matches!(&e, CertificateError::Refused { reason, .. } if reason == "NoNodeBinding"),
        "{e:?}"
    );
    // The agent cannot approve its own request.
    let csrs: Api<CertificateSigningRequest> = Api::all(agent.clone());
    let mut csr = CertificateSigningRequest::default();
    csr.metadata.generate_name = Some("self-approve-".into());
    csr.spec.request =
        k8s_openapi::ByteString(certs::request(Role::Agent, &node).unwrap().0.into_bytes());
    csr.spec.signer_name = "example.com/not-ours".into();
    csr.spec.usages = Some(vec!["client auth".into()]);
    let created = csrs
        .create(&PostParams::default(), &csr)
        .await
        .expect("create CSR");
    let mut approve = created.clone();
    approve.status = Some(Default::default());
    approve.status.as_mut().unwrap().conditions = Some(vec![
        k8s_openapi::api::certificates::v1::CertificateSigningRequestCondition {
            type_: "Approved".into(),
            status: "True".into(),
            reason: Some("self".into()),
            ..Default::default()
        },
    ]);
    match csrs
        .replace_subresource(
            "approval",
            &created.name_any(),
            &PostParams::default(),
            &approve,
        )
        .await
    {
        Err(kube::Error::Api(st)) => assert_eq!(st.code, 403),
        other => panic!("the agent approved a CSR: {other:?}"),
    }
    // Nor list them (it polls its own by name).
    match csrs.list(&Default::default()).await {
        Err(kube::Error::Api(st)) => assert_eq!(st.code, 403),
        other => panic!("the agent listed CSRs: {other:?}"),
    }
    let _ = stop_tx.send(());
    delete_csrs_of(&admin, &rbac.agent_sa).await;
    let _ = common::kubectl(&["delete", "node", &node, "--ignore-not-found"]);
}

/// `leaf` is signed by `ca` (checked with x509-parser, independently of
/// the code that issued it).
fn assert_chains(leaf: &str, ca: &str) {
    use x509_parser::pem::parse_x509_pem;
    let (_, leaf) = parse_x509_pem(leaf.as_bytes()).unwrap();
    let (_, ca) = parse_x509_pem(ca.as_bytes()).unwrap();
    let leaf = leaf.parse_x509().unwrap();
    let ca = ca.parse_x509().unwrap();
    assert_eq!(leaf.issuer(), ca.subject());
    leaf.verify_signature(Some(ca.public_key()))
        .expect("leaf signed by the published CA");
}

/// A kubeconfig for the bed that authenticates with `token` only (what a
/// pod's in-cluster config amounts to).
fn kubeconfig_with_token(token: &str, path: &std::path::Path) {
    let text = std::fs::read_to_string(env().kubeconfig).unwrap();
    let mut v: serde_yaml::Value = serde_yaml::from_str(&text).unwrap();
    for u in v["users"].as_sequence_mut().expect("users") {
        u["user"] = serde_yaml::to_value(json!({ "token": token })).unwrap();
    }
    std::fs::write(path, serde_yaml::to_string(&v).unwrap()).unwrap();
}

/// The `mignet agent` binary with `--cert-source=csr` and its own pod-bound
/// token: /readyz is 503 with the reason until the manager's signer runs,
/// then 200 with the certificate in its cert dir; SIGTERM stops it.
#[tokio::test]
async fn agent_binary_is_not_ready_until_the_manager_signs_its_certificate() {
    let _one_signer = SIGNER.lock().await;
    ensure_crds();
    let ns = TestNamespace::new("mignet-agent-bin");
    let n = ns.name.as_str();
    let rbac = TestRbac::apply(n);
    let admin = common::client().await;
    let node = format!("node-bin-{n}");
    let pod = agent_pod(&admin, n, &rbac, &node).await;
    let agent_token = token_for(&admin, n, sa_name(&rbac.agent_sa), Some(&pod)).await;
    let manager =
        client_with_token(&token_for(&admin, n, sa_name(&rbac.manager_sa), None).await).await;
    let root = tmpdir("agent-bin");
    let _rm = RmDir(root.clone());
    let kubeconfig = root.join("kubeconfig");
    kubeconfig_with_token(&agent_token, &kubeconfig);

    // The manager sets up the CA and its bundle (the DaemonSet mounts it)
    // but does not sign yet.
    let s = SignerSettings {
        namespace: n.into(),
        agent_service_account: sa_name(&rbac.agent_sa).into(),
        resync: Duration::from_secs(1),
        ..Default::default()
    };
    let ca = ensure_ca_as(&manager, &s).await;
    std::fs::write(root.join("ca.crt"), ca.cert_pem()).unwrap();

    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = format!("127.0.0.1:{port}");
    let log = root.join("agent.log");
    let mut child = common::ChildGuard(
        std::process::Command::new(env!("CARGO_BIN_EXE_mignet"))
            .arg("agent")
            .args(["--node-name", &node, "--pod-ip", "127.0.0.1"])
            .args(["--cert-source", "csr", "--cert-lifetime-seconds", "3600"])
            .arg("--cert-dir")
            .arg(root.join("certs"))
            .arg("--ca-bundle")
            .arg(root.join("ca.crt"))
            .arg("--state-dir")
            .arg(root.join("state"))
            // The launcher pods' run directories: inside the test's own
            // directory, never the host's /var/run/mignet.
            .arg("--launcher-root")
            .arg(root.join("vms"))
            .args(["--namespace", n, "--http-addr", &addr])
            .args(["--graceful-shutdown-seconds", "0"])
            .env("KUBECONFIG", &kubeconfig)
            .env("RUST_LOG", "info")
            // tracing writes to stdout; panics to stderr.
            .stdout(std::fs::File::create(&log).unwrap())
            .stderr(std::fs::File::create(root.join("agent.err")).unwrap())
            .spawn()
            .expect("spawn mignet agent"),
    );
    let logs = || std::fs::read_to_string(&log).unwrap_or_default();

    let (body, _) = wait_for(
        "503 naming the missing certificate",
        Duration::from_secs(30),
        || {
            let r = common::http_get(&addr, "/readyz");
            async move {
                (r.starts_with("HTTP/1.0 503") && r.contains("no agent certificate yet"))
                    .then_some(r)
            }
        },
    )
    .await;
    assert!(!root.join("certs/tls.crt").exists(), "{body}");
    // Still waiting a while later: nothing signs but the manager.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        common::http_get(&addr, "/readyz").starts_with("HTTP/1.0 503"),
        "{}",
        logs()
    );
    assert!(
        child.0.try_wait().unwrap().is_none(),
        "agent exited: {}",
        logs()
    );

    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let _signer = Task(tokio::spawn(signer::run_with_ca(
        manager.clone(),
        ca,
        s,
        async move {
            let _ = stop_rx.await;
        },
    )));
    // The agent retries every 10 s (also while RBAC propagates).
    let (ready, took) = wait_for("ready once signed", Duration::from_secs(90), || {
        let r = common::http_get(&addr, "/readyz");
        async move { r.starts_with("HTTP/1.0 200").then_some(r) }
    })
    .await;
    assert!(ready.contains("migration IP 127.0.0.1"), "{ready}");
    eprintln!(
        "ready {took:?} after the signer started; agent log:\n{}",
        logs()
    );
    let cert = std::fs::read_to_string(root.join("certs/tls.crt")).unwrap();
    assert_eq!(
        certs::identities_pem(&cert).unwrap(),
        vec![certs::Identity {
            role: "agent".into(),
            name: node.clone()
        }]
    );
    assert!(common::http_get(&addr, "/healthz").starts_with("HTTP/1.0 200"));
    assert!(common::http_get(&addr, "/metrics").starts_with("HTTP/1.0 200"));

    let pid = child.0.id().to_string();
    assert!(std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let (status, _) = wait_for("agent exit after SIGTERM", Duration::from_secs(30), || {
        let s = child.0.try_wait().unwrap();
        async move { s }
    })
    .await;
    assert!(status.success(), "exit {status:?}; log:\n{}", logs());
    let _ = stop_tx.send(());
    delete_csrs_of(&admin, &rbac.agent_sa).await;
    let _ = common::kubectl(&["delete", "node", &node, "--ignore-not-found"]);
}

/// Cluster-scoped leftovers: the CSRs `user` made.
async fn delete_csrs_of(admin: &Client, user: &str) {
    let api: Api<CertificateSigningRequest> = Api::all(admin.clone());
    for c in api.list(&Default::default()).await.unwrap().items {
        if c.spec.username.as_deref() == Some(user) {
            let _ = api.delete(&c.name_any(), &Default::default()).await;
        }
    }
}

/// [`signer::ensure_ca`] as the manager, retried while RBAC propagates.
async fn ensure_ca_as(manager: &Client, s: &SignerSettings) -> ClusterCa {
    wait_for(
        "ensure_ca allowed by RBAC",
        Duration::from_secs(30),
        || async {
            match signer::ensure_ca(manager, s).await {
                Ok(ca) => Some(ca),
                Err(e) if mignet::agent::error_chain(&e).contains("forbidden") => None,
                Err(e) => panic!("ensure_ca: {}", mignet::agent::error_chain(&e)),
            }
        },
    )
    .await
    .0
}

// ---- the config gate (no bed needed) ------------------------------------------

/// The lab backend with a switch that makes HyperConverged reads fail as a
/// 403 would.
#[derive(Clone)]
struct HcoForbidden {
    inner: LocalBackend,
    fail: Arc<AtomicBool>,
}

impl Backend for HcoForbidden {
    async fn get<K: Kind>(&self, ns: &str, name: &str) -> Result<Option<K>, BackendError> {
        self.inner.get(ns, name).await
    }
    async fn list<K: Kind>(&self, ns: Option<&str>) -> Result<Vec<K>, BackendError> {
        if K::kind(&()) == "HyperConverged" && self.fail.load(Ordering::Relaxed) {
            return Err(BackendError::Permanent {
                op: Op::List,
                object: ObjectRef::new::<K>("", "*"),
                source: "hyperconvergeds.hco.kubevirt.io is forbidden".into(),
            });
        }
        self.inner.list(ns).await
    }
    async fn create<K: Kind>(&self, obj: &K) -> Result<K, BackendError> {
        self.inner.create(obj).await
    }
    async fn replace<K: Kind>(&self, obj: &K) -> Result<K, BackendError> {
        self.inner.replace(obj).await
    }
    async fn replace_status<K: Kind>(&self, obj: &K) -> Result<K, BackendError> {
        self.inner.replace_status(obj).await
    }
    async fn delete<K: Kind>(&self, ns: &str, name: &str) -> Result<(), BackendError> {
        self.inner.delete::<K>(ns, name).await
    }
    fn changes(&self) -> Changes {
        self.inner.changes()
    }
}

#[tokio::test]
async fn unreadable_config_blocks_readiness_and_migrations_invalid_config_warns() {
    let root = tmpdir("agent-cfg");
    let _rm = RmDir(root.clone());
    let store = Arc::new(mignet::store::Store::open(root.join("store")).expect("store"));
    let fail = Arc::new(AtomicBool::new(true));
    let b = HcoForbidden {
        inner: LocalBackend::new(store),
        fail: fail.clone(),
    };
    let mut hco = HyperConverged::new(
        "kubevirt-hyperconverged",
        HyperConvergedSpec {
            live_migration_config: Some(LiveMigrationConfig {
                parallel_migrations_per_cluster: Some(0),
                ..Default::default()
            }),
        },
    );
    hco.metadata.namespace = Some("lab".into());
    b.create(&hco).await.unwrap();
    // This node is the target of a Scheduled migration: with a readable
    // config it would move it to PreparingTarget at once.
    migration(
        &b,
        "lab",
        "vm",
        "node-b",
        "node-a",
        MigrationPhase::Scheduled,
        false,
    )
    .await;

    let core = Arc::new(
        AgentCore::start(agent_settings("node-a", &root))
            .await
            .unwrap(),
    );
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let _loop = Task(tokio::spawn(mignet::agent::run_with_core(
        b.clone(),
        core.clone(),
        async move {
            let _ = stop_rx.await;
        },
    )));
    let (why, _) = wait_for(
        "not ready: config unreadable",
        Duration::from_secs(10),
        || async {
            match core.readiness().await {
                Readiness::NotReady(w) => Some(w),
                Readiness::Ready(_) => None,
            }
        },
    )
    .await;
    assert!(
        why.contains("HyperConverged") && why.contains("forbidden"),
        "{why}"
    );
    // Several passes later the migration still waits.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        phase_of(&b, "lab", "vm-mig").await,
        Some(MigrationPhase::Scheduled)
    );

    // Readable again: ready, the migration proceeds, and the invalid value
    // is a warning naming the field (the defaults apply, as in the
    // controller).
    fail.store(false, Ordering::Relaxed);
    wait_for(
        "the migration leaves Scheduled",
        Duration::from_secs(20),
        || async {
            (phase_of(&b, "lab", "vm-mig").await != Some(MigrationPhase::Scheduled)).then_some(())
        },
    )
    .await;
    assert!(
        core.health.blockers().is_empty(),
        "{:?}",
        core.health.blockers()
    );
    assert!(matches!(core.readiness().await, Readiness::Ready(_)));
    let warnings = core.health.warnings();
    assert!(
        warnings
            .iter()
            .any(|w| w.contains("parallelMigrationsPerCluster")),
        "{warnings:?}"
    );
    let _ = stop_tx.send(());
}
