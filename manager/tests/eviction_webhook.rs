//! The pods/eviction webhook over real HTTPS, as the API server calls it:
//! a certificate issued by the manager's CA for the webhook Service's DNS
//! name (the client checks it against that CA and name), AdmissionReview v1
//! JSON in, AdmissionReview out; the pod and VMI come from an in-memory
//! cluster (the decision needs no API server; the cluster bed's
//! tests/cluster/e2e-drain.sh runs it behind a real one).
//!
//! Run: `cargo test -p mignet --test eviction_webhook`

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use k8s_openapi::api::core::v1::{Pod, PodSpec, PodStatus};
use mignet::api::{
    EvictionStrategy, VirtualMachineInstance, VirtualMachineInstanceStatus, VmiCondition, VmiPhase,
};
use mignet::kube_adapter::eviction::{self, Cluster};
use mignet_dataplane::certs::{ClusterCa, Validity};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const SERVICE_NAME: &str = "mignet-manager-webhook.mignet-system.svc";

#[derive(Default)]
struct Fake {
    pods: Mutex<HashMap<(String, String), Pod>>,
    vmis: Mutex<HashMap<(String, String), VirtualMachineInstance>>,
    marks: Mutex<Vec<(String, String, String)>>,
    reads: Mutex<u32>,
}

impl Cluster for Fake {
    async fn pod(&self, ns: &str, name: &str) -> Result<Option<Pod>, kube::Error> {
        *self.reads.lock().unwrap() += 1;
        Ok(self
            .pods
            .lock()
            .unwrap()
            .get(&(ns.into(), name.into()))
            .cloned())
    }
    async fn vmi(
        &self,
        ns: &str,
        name: &str,
    ) -> Result<Option<VirtualMachineInstance>, kube::Error> {
        *self.reads.lock().unwrap() += 1;
        Ok(self
            .vmis
            .lock()
            .unwrap()
            .get(&(ns.into(), name.into()))
            .cloned())
    }
    async fn mark_evacuation(&self, ns: &str, name: &str, node: &str) -> Result<(), kube::Error> {
        self.marks
            .lock()
            .unwrap()
            .push((ns.into(), name.into(), node.into()));
        if let Some(v) = self.vmis.lock().unwrap().get_mut(&(ns.into(), name.into())) {
            v.status
                .get_or_insert_with(Default::default)
                .evacuation_node_name = Some(node.into());
        }
        Ok(())
    }
}

impl Fake {
    /// A Running VMI on `node` with its launcher pod.
    fn vm(&self, name: &str, strategy: EvictionStrategy, node: &str) -> String {
        let uid = format!("uid-{name}");
        let mut v = VirtualMachineInstance::new(name, Default::default());
        v.metadata.namespace = Some("default".into());
        v.metadata.uid = Some(uid.clone());
        v.spec.eviction_strategy = Some(strategy);
        v.status = Some(VirtualMachineInstanceStatus {
            node_name: Some(node.into()),
            phase: Some(VmiPhase::Running),
            conditions: vec![VmiCondition {
                type_: "LiveMigratable".into(),
                status: "True".into(),
                ..Default::default()
            }],
            ..Default::default()
        });
        let pod_name = format!("virt-launcher-{name}-abcde");
        let mut p = Pod::default();
        p.metadata.name = Some(pod_name.clone());
        p.metadata.namespace = Some("default".into());
        p.metadata.labels = Some(BTreeMap::from([
            ("mignet.io/launcher".into(), "source".into()),
            ("vm.kubevirt.io/name".into(), name.into()),
            ("kubevirt.io/created-by".into(), uid),
        ]));
        p.spec = Some(PodSpec {
            node_name: Some(node.into()),
            ..Default::default()
        });
        p.status = Some(PodStatus {
            phase: Some("Running".into()),
            ..Default::default()
        });
        self.vmis
            .lock()
            .unwrap()
            .insert(("default".into(), name.into()), v);
        self.pods
            .lock()
            .unwrap()
            .insert(("default".into(), pod_name.clone()), p);
        pod_name
    }
}

struct Server {
    addr: SocketAddr,
    ca: ClusterCa,
    fake: Arc<Fake>,
}

async fn start() -> Server {
    let now = SystemTime::now();
    let ca = ClusterCa::generate(
        "test CA",
        Validity {
            not_before: now - Duration::from_secs(60),
            not_after: now + Duration::from_secs(3600),
        },
    )
    .unwrap();
    let names = eviction::service_dns_names("mignet-manager-webhook", "mignet-system");
    let cert = eviction::issue_serving_cert(&ca, &names, Duration::from_secs(600)).unwrap();
    let tls = eviction::server_config(eviction::ServingCert::new(&cert).unwrap()).unwrap();
    let fake = Arc::new(Fake::default());
    let (addr, _task) = eviction::serve("127.0.0.1:0".parse().unwrap(), tls, fake.clone(), None)
        .await
        .unwrap();
    Server { addr, ca, fake }
}

fn client_config(ca: &ClusterCa) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(ca.cert_pem().as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    Arc::new(
        rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth(),
    )
}

/// POST `body` to /eviction as the API server does (TLS server name = the
/// Service's DNS name, verified against the CA); the HTTP status and JSON.
async fn post(s: &Server, server_name: &str, body: &Value) -> std::io::Result<(u16, Value)> {
    let tcp = tokio::net::TcpStream::connect(s.addr).await?;
    let connector = tokio_rustls::TlsConnector::from(client_config(&s.ca));
    let name = ServerName::try_from(server_name.to_owned()).unwrap();
    let mut tls = connector.connect(name, tcp).await?;
    let body = serde_json::to_vec(body).unwrap();
    let head = format!(
        "POST {} HTTP/1.1\r\nHost: {server_name}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        eviction::PATH,
        body.len()
    );
    tls.write_all(head.as_bytes()).await?;
    tls.write_all(&body).await?;
    let mut out = Vec::new();
    // A peer closing without close_notify is fine for this check.
    let _ = tls.read_to_end(&mut out).await;
    let text = String::from_utf8_lossy(&out);
    let (head, body) = text.split_once("\r\n\r\n").expect("an HTTP response");
    let code: u16 = head.split(' ').nth(1).unwrap().parse().unwrap();
    Ok((code, serde_json::from_str(body).expect(body)))
}

/// The AdmissionReview the API server sends for `kubectl drain`'s eviction.
fn eviction_review(pod: &str, dry_run: bool) -> Value {
    json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "0b7a-1",
            "kind": {"group": "policy", "version": "v1", "kind": "Eviction"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "subResource": "eviction",
            "requestKind": {"group": "policy", "version": "v1", "kind": "Eviction"},
            "requestResource": {"group": "", "version": "v1", "resource": "pods"},
            "requestSubResource": "eviction",
            "name": pod,
            "namespace": "default",
            "operation": "CREATE",
            "userInfo": {"username": "mignet-bed-admin", "groups": ["system:masters", "system:authenticated"]},
            "object": {
                "apiVersion": "policy/v1",
                "kind": "Eviction",
                "metadata": {"name": pod, "namespace": "default", "creationTimestamp": null}
            },
            "oldObject": null,
            "dryRun": dry_run,
            "options": {"apiVersion": "meta.k8s.io/v1", "kind": "CreateOptions"}
        }
    })
}

fn response(v: &Value) -> &Value {
    assert_eq!(v["apiVersion"], "admission.k8s.io/v1", "{v}");
    assert_eq!(v["kind"], "AdmissionReview", "{v}");
    assert_eq!(v["response"]["uid"], "0b7a-1", "{v}");
    &v["response"]
}

#[tokio::test]
async fn live_migrate_launcher_eviction_marks_the_vmi_and_answers_429() {
    let s = start().await;
    let pod = s
        .fake
        .vm("vm-drain", EvictionStrategy::LiveMigrate, "node2");
    let (code, v) = post(&s, SERVICE_NAME, &eviction_review(&pod, false))
        .await
        .unwrap();
    assert_eq!(code, 200);
    let r = response(&v);
    assert_eq!(r["allowed"], false, "{v}");
    assert_eq!(r["status"]["code"], 429, "{v}");
    assert_eq!(
        r["status"]["message"],
        "Eviction triggered evacuation of VMI default/vm-drain from node2"
    );
    assert_eq!(
        *s.fake.marks.lock().unwrap(),
        vec![("default".into(), "vm-drain".into(), "node2".into())]
    );
    // kubectl drain retries every 5 s: the same answer, no second write.
    let (_, v) = post(&s, SERVICE_NAME, &eviction_review(&pod, false))
        .await
        .unwrap();
    assert_eq!(response(&v)["status"]["code"], 429, "{v}");
    assert_eq!(s.fake.marks.lock().unwrap().len(), 1);
}

#[tokio::test]
async fn dry_run_denies_without_the_side_effect() {
    let s = start().await;
    let pod = s.fake.vm("vm-a", EvictionStrategy::LiveMigrate, "node1");
    let (_, v) = post(&s, SERVICE_NAME, &eviction_review(&pod, true))
        .await
        .unwrap();
    assert_eq!(response(&v)["allowed"], false, "{v}");
    assert!(s.fake.marks.lock().unwrap().is_empty());
}

#[tokio::test]
async fn none_strategy_and_other_pods_are_allowed() {
    let s = start().await;
    let pod = s.fake.vm("vm-stop", EvictionStrategy::None, "node2");
    let (_, v) = post(&s, SERVICE_NAME, &eviction_review(&pod, false))
        .await
        .unwrap();
    assert_eq!(response(&v)["allowed"], true, "{v}");
    assert!(s.fake.marks.lock().unwrap().is_empty());

    // Not launcher-named: answered without reading anything.
    let reads = *s.fake.reads.lock().unwrap();
    let (_, v) = post(&s, SERVICE_NAME, &eviction_review("coredns-7d9f-x2", false))
        .await
        .unwrap();
    assert_eq!(response(&v)["allowed"], true, "{v}");
    assert_eq!(*s.fake.reads.lock().unwrap(), reads);

    // Launcher-named but gone: allowed (the eviction finds no pod anyway).
    let (_, v) = post(
        &s,
        SERVICE_NAME,
        &eviction_review("virt-launcher-x-11111", false),
    )
    .await
    .unwrap();
    assert_eq!(response(&v)["allowed"], true, "{v}");
}

#[tokio::test]
async fn external_strategy_is_denied_naming_it() {
    let s = start().await;
    let pod = s.fake.vm("vm-ext", EvictionStrategy::External, "node3");
    let (_, v) = post(&s, SERVICE_NAME, &eviction_review(&pod, false))
        .await
        .unwrap();
    let r = response(&v);
    assert_eq!(r["allowed"], false, "{v}");
    assert_eq!(r["status"]["code"], 429, "{v}");
    assert!(
        r["status"]["message"]
            .as_str()
            .unwrap()
            .contains("evictionStrategy External"),
        "{v}"
    );
}

#[tokio::test]
async fn the_certificate_is_for_the_service_name_only() {
    let s = start().await;
    let long = "mignet-manager-webhook.mignet-system.svc.cluster.local";
    let (code, _) = post(&s, long, &eviction_review("x", false)).await.unwrap();
    assert_eq!(code, 200);
    let err = post(
        &s,
        "mignet-console.mignet-system.svc",
        &eviction_review("x", false),
    )
    .await
    .expect_err("a name the certificate does not carry");
    assert!(err.to_string().contains("certificate"), "{err}");
}
