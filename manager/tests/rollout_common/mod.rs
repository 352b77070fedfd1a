//! The network rollout's pass ([`mignet::network::reconcile`]) in both
//! modes: the same scenarios over the lab's LocalBackend
//! (`control_local.rs`) and a KubeBackend on the real kube-apiserver
//! (`control_k8s.rs`).

#![allow(dead_code)]

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::ResourceExt;
use mignet::api::{HyperConverged, HyperConvergedSpec, LiveMigrationConfig};
use mignet::backend::{Backend, BackendError, Changes, Kind};
use mignet::network::decide::{
    reason, CONDITION_TYPE, MIGRATION_NETWORK_ANNOTATION, NETWORKS_ANNOTATION,
};
use mignet::network::reconcile::{follow, reconcile, Outcome, Pass, Target};
use mignet::network::ClusterNetworks;

use crate::control_common::{agent_daemonset, nad, now, template_annotations, SEED_NAD_CONFIG};

const HCO: &str = "kubevirt-hyperconverged";

fn cluster() -> ClusterNetworks {
    ClusterNetworks {
        pod: vec!["10.244.0.0/16".parse().unwrap()],
        service: vec!["10.96.0.0/12".parse().unwrap()],
    }
}

fn hco(ns: &str, network: &str) -> HyperConverged {
    let mut h = HyperConverged::new(
        HCO,
        HyperConvergedSpec {
            live_migration_config: Some(LiveMigrationConfig {
                network: Some(network.to_owned()),
                ..Default::default()
            }),
        },
    );
    h.metadata.namespace = Some(ns.to_owned());
    h
}

/// The rollout's memory between passes, as a driver keeps it: one per
/// HyperConverged (by uid: tests in one process share namespace names).
fn memory_of(uid: &str) -> Arc<std::sync::Mutex<mignet::network::switch::RolloutMemory>> {
    static MEMORY: std::sync::LazyLock<
        std::sync::Mutex<
            std::collections::HashMap<
                String,
                Arc<std::sync::Mutex<mignet::network::switch::RolloutMemory>>,
            >,
        >,
    > = std::sync::LazyLock::new(Default::default);
    MEMORY
        .lock()
        .unwrap()
        .entry(uid.to_owned())
        .or_default()
        .clone()
}

async fn pass<B: Backend>(b: &B, ns: &str) -> Outcome {
    let cluster = cluster();
    // The rollout alone: no settle, so a pass that holds may patch.
    let preflight = mignet::network::preflight::PreflightSettings {
        hold_settle: std::time::Duration::ZERO,
        ..Default::default()
    };
    let scratch = std::sync::Mutex::new(Default::default());
    let mut target = Target {
        namespace: ns,
        hyperconverged: HCO,
        agent_daemonset: "mignet-agent",
        cluster: &cluster,
        preflight: &preflight,
        memory: &scratch,
        // Other tests share the API server: only this test's migrations.
        migrations_namespace: Some(ns),
    };
    let followed = follow(b, &target)
        .await
        .expect("read the HCO")
        .expect("an HCO to follow");
    let memory = memory_of(&followed.hco.uid().unwrap_or_default());
    target.memory = &memory;
    reconcile(b, &target, &followed, now())
        .await
        .expect("rollout pass")
}

fn done(o: Outcome) -> Pass {
    match o {
        Outcome::Done(p) => p,
        other => panic!("expected a completed pass, got {other:?}"),
    }
}

async fn daemonset<B: Backend>(b: &B, ns: &str) -> DaemonSet {
    b.get::<DaemonSet>(ns, "mignet-agent")
        .await
        .unwrap()
        .expect("agent DaemonSet")
}

async fn condition<B: Backend>(b: &B, ns: &str, type_: &str) -> Condition {
    let h = b
        .get::<HyperConverged>(ns, HCO)
        .await
        .unwrap()
        .expect("HCO");
    h.status
        .unwrap_or_default()
        .conditions
        .into_iter()
        .find(|c| c.type_ == type_)
        .unwrap_or_else(|| panic!("no {type_} condition"))
}

/// A NAD named `mig.net` (a DNS-1123 subdomain, as Kubernetes names NADs):
/// the config is valid and the network is rolled out, both at once. Before
/// the one network type, the config refused the dot (defaults applied,
/// `MigrationConfigValid=False`) while the rollout wrote it on the
/// DaemonSet.
pub async fn scenario_dotted_nad_name_is_valid_and_rolled_out<B: Backend>(b: &B, ns: &str) {
    b.create(&agent_daemonset(ns)).await.expect("DaemonSet");
    b.create(&nad(ns, "mig.net", SEED_NAD_CONFIG))
        .await
        .expect("NAD");
    b.create(&hco(ns, "mig.net")).await.expect("HCO");

    let p = done(pass(b, ns).await);
    assert!(p.daemonset_patched && p.status_written, "{p:?}");
    let a = template_annotations(&daemonset(b, ns).await);
    assert_eq!(
        a.get(NETWORKS_ANNOTATION).map(String::as_str),
        Some("mig.net@migration0")
    );
    let agent_form = format!("{ns}/mig.net");
    assert_eq!(
        a.get(MIGRATION_NETWORK_ANNOTATION),
        Some(&agent_form),
        "the agent is told namespace/name"
    );
    let config = condition(b, ns, "MigrationConfigValid").await;
    assert_eq!(config.status, "True", "{config:?}");
    let network = condition(b, ns, CONDITION_TYPE).await;
    assert_eq!(network.reason, reason::ROLLING_OUT, "{network:?}");

    // Applied: the next pass leaves the DaemonSet alone (it only updates
    // the condition's agent counts), and the one after writes nothing.
    let p = done(pass(b, ns).await);
    assert!(!p.daemonset_patched, "{p:?}");
    let p = done(pass(b, ns).await);
    assert!(!p.daemonset_patched && !p.status_written, "{p:?}");
}

/// A network that is not a NAD reference (`-mig`: not a DNS-1123 name):
/// the config is invalid, the condition says why, and the DaemonSet is not
/// written, even where an object of that name exists (the lab store holds
/// one; the API server refuses it).
pub async fn scenario_invalid_network_is_refused_without_a_daemonset_write<B: Backend>(
    b: &B,
    ns: &str,
) {
    let ds = b.create(&agent_daemonset(ns)).await.expect("DaemonSet");
    let _ = b.create(&nad(ns, "-mig", SEED_NAD_CONFIG)).await;
    b.create(&hco(ns, "-mig")).await.expect("HCO");

    let p = done(pass(b, ns).await);
    assert!(!p.daemonset_patched, "{p:?}");
    let now = daemonset(b, ns).await;
    assert_eq!(
        now.metadata.resource_version, ds.metadata.resource_version,
        "the DaemonSet must not be written"
    );
    assert!(!template_annotations(&now).contains_key(NETWORKS_ANNOTATION));
    let config = condition(b, ns, "MigrationConfigValid").await;
    assert_eq!(config.status, "False");
    assert!(
        config.message.contains("liveMigrationConfig.network")
            && config.message.contains("\"-mig\""),
        "{}",
        config.message
    );
    let network = condition(b, ns, CONDITION_TYPE).await;
    assert_eq!(
        (network.status.as_str(), network.reason.as_str()),
        ("False", reason::INVALID_REFERENCE)
    );
    assert!(network.message.contains("\"-mig\""), "{}", network.message);
}

/// Someone writes the DaemonSet between the pass's read and its write: the
/// conditional write is refused (a conflict), nothing of ours lands, and
/// the pass says "retry soon"; the next pass applies the network on fresh
/// state. The same outcome in both modes (the lab used to drop it, the
/// cluster to count it as an error).
pub async fn scenario_conflict_retries_soon<B: Backend>(b: &B, ns: &str) {
    b.create(&agent_daemonset(ns)).await.expect("DaemonSet");
    b.create(&nad(ns, "good", SEED_NAD_CONFIG))
        .await
        .expect("NAD");
    b.create(&hco(ns, "good")).await.expect("HCO");

    let interloper = Interloper {
        inner: b.clone(),
        fired: Arc::new(AtomicBool::new(false)),
    };
    assert_eq!(
        pass(&interloper, ns).await,
        Outcome::RetrySoon {
            daemonset_patched: false
        }
    );
    let ds = daemonset(b, ns).await;
    assert_eq!(
        ds.labels().get("interloper").map(String::as_str),
        Some("yes")
    );
    assert!(!template_annotations(&ds).contains_key(NETWORKS_ANNOTATION));

    let p = done(pass(b, ns).await);
    assert!(p.daemonset_patched, "{p:?}");
    let ds = daemonset(b, ns).await;
    assert_eq!(
        template_annotations(&ds)
            .get(NETWORKS_ANNOTATION)
            .map(String::as_str),
        Some("good@migration0")
    );
    assert_eq!(
        ds.labels().get("interloper").map(String::as_str),
        Some("yes")
    );
}

/// The HyperConverged names a NAD in a namespace the caller may not read
/// (403): the pass decides "not found" (the agents, with less access, could
/// not use it either) instead of failing. Cluster only: the lab store has no
/// access control. `limited` may read and write the rollout's objects in
/// `ns` and nothing elsewhere.
pub async fn scenario_forbidden_nad_reads_as_not_found<B: Backend, L: Backend>(
    admin: &B,
    limited: &L,
    ns: &str,
) {
    admin.create(&agent_daemonset(ns)).await.expect("DaemonSet");
    admin
        .create(&hco(ns, "kube-system/mig"))
        .await
        .expect("HCO");
    let p = done(pass(limited, ns).await);
    assert_eq!(p.decision.condition.reason, reason::NAD_NOT_FOUND, "{p:?}");
    assert!(!p.daemonset_patched);
    let network = condition(admin, ns, CONDITION_TYPE).await;
    assert_eq!(network.reason, reason::NAD_NOT_FOUND);
    assert!(
        network.message.contains("kube-system/mig"),
        "{}",
        network.message
    );
}

/// A backend that, on the first object write, first writes the same object
/// itself (a label), so the write it passes on is stale: a real conflict
/// from the real store or API server.
#[derive(Clone)]
struct Interloper<B> {
    inner: B,
    fired: Arc<AtomicBool>,
}

impl<B: Backend> Interloper<B> {
    async fn interfere<K: Kind>(&self, obj: &K) {
        if self.fired.swap(true, Ordering::SeqCst) {
            return;
        }
        let ns = obj.meta().namespace.clone().unwrap_or_default();
        let name = obj.meta().name.clone().unwrap_or_default();
        let mut fresh = self.inner.get::<K>(&ns, &name).await.unwrap().unwrap();
        fresh
            .meta_mut()
            .labels
            .get_or_insert_with(Default::default)
            .insert("interloper".into(), "yes".into());
        self.inner
            .replace(&fresh)
            .await
            .expect("interloper's write");
    }
}

impl<B: Backend> Backend for Interloper<B> {
    async fn get<K: Kind>(&self, namespace: &str, name: &str) -> Result<Option<K>, BackendError> {
        self.inner.get(namespace, name).await
    }
    async fn list<K: Kind>(&self, namespace: Option<&str>) -> Result<Vec<K>, BackendError> {
        self.inner.list(namespace).await
    }
    async fn create<K: Kind>(&self, obj: &K) -> Result<K, BackendError> {
        self.inner.create(obj).await
    }
    async fn replace<K: Kind>(&self, obj: &K) -> Result<K, BackendError> {
        self.interfere(obj).await;
        self.inner.replace(obj).await
    }
    async fn replace_status<K: Kind>(&self, obj: &K) -> Result<K, BackendError> {
        self.inner.replace_status(obj).await
    }
    async fn patch_object<K: Kind>(&self, before: &K, after: &K) -> Result<K, BackendError> {
        self.interfere(before).await;
        self.inner.patch_object(before, after).await
    }
    async fn patch_status<K: Kind>(&self, before: &K, after: &K) -> Result<K, BackendError> {
        self.inner.patch_status(before, after).await
    }
    async fn delete<K: Kind>(&self, namespace: &str, name: &str) -> Result<(), BackendError> {
        self.inner.delete::<K>(namespace, name).await
    }
    fn changes(&self) -> Changes {
        self.inner.changes()
    }
}

// ------------------------------------------------------------ pre-flight

/// An agent pod of the test DaemonSet on `node`, Ready, on the network of
/// `hash` (`None`: the pod network), as a kubelet reports it.
async fn agent_pod<B: Backend>(b: &B, ns: &str, node: &str, hash: Option<&str>) {
    use k8s_openapi::api::core::v1::Pod;
    use mignet::network::decide::NETWORK_HASH_ANNOTATION;
    let mut annotations = serde_json::Map::new();
    if let Some(h) = hash {
        annotations.insert(NETWORK_HASH_ANNOTATION.into(), h.into());
    }
    let pod: Pod = serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": format!("mignet-agent-{node}"), "namespace": ns,
                     "labels": {"app.kubernetes.io/name": "mignet-agent"},
                     "annotations": annotations},
        "spec": {"nodeName": node, "containers": [{"name": "agent", "image": "mignet:dev"}]}
    }))
    .unwrap();
    let mut p = b.create(&pod).await.expect("agent pod");
    p.status = Some(
        serde_json::from_value(serde_json::json!({
            "phase": "Running",
            "conditions": [{"type": "Ready", "status": "True"}]
        }))
        .unwrap(),
    );
    b.replace_status(&p).await.expect("agent pod status");
}

async fn probe_pods<B: Backend>(b: &B, ns: &str) -> Vec<k8s_openapi::api::core::v1::Pod> {
    use mignet::network::preflight::ROUND_LABEL;
    let mut pods: Vec<k8s_openapi::api::core::v1::Pod> = b.list(Some(ns)).await.unwrap();
    pods.retain(|p| {
        p.labels().contains_key(ROUND_LABEL) && p.metadata.deletion_timestamp.is_none()
    });
    pods.sort_by_key(|p| p.name_any());
    pods
}

/// What the kubelet writes when a probe ends: its report as the
/// container's termination message.
async fn probe_ends<B: Backend>(
    b: &B,
    pod: &k8s_openapi::api::core::v1::Pod,
    report: &mignet::network::preflight::ProbeReport,
) {
    let mut p = pod.clone();
    p.status = Some(
        serde_json::from_value(serde_json::json!({
            "phase": "Succeeded",
            "containerStatuses": [{
                "name": "probe", "image": "mignet:dev", "imageID": "", "ready": false,
                "restartCount": 0,
                "state": {"terminated": {"exitCode": 0, "message": report.to_message()}}
            }]
        }))
        .unwrap(),
    );
    b.replace_status(&p).await.expect("probe pod status");
}

fn report(
    node: &str,
    peer: &str,
    failure: Option<mignet::network::preflight::Failure>,
) -> mignet::network::preflight::ProbeReport {
    use mignet::network::preflight::{PeerResult, ProbeReport};
    ProbeReport {
        node: node.into(),
        address: Some("10.200.5.1".into()),
        mtu: Some(9000),
        own_failure: None,
        peers: vec![PeerResult {
            node: peer.into(),
            failure,
        }],
    }
}

/// A network change waits for a pre-flight round over the nodes the
/// agents run on: probe pods from the agent template, one per node; a
/// failing pair refuses the network with the pair and the reason, the
/// DaemonSet keeps the old network, the pods go, and the refusal holds
/// (no new round at once). A passing round lets the change through, and
/// while the Ready agents are on the old network the hold on new
/// migrations stands (SwitchingAgents).
pub async fn scenario_preflight_gates_the_network_change<B: Backend>(b: &B, ns: &str) {
    use mignet::network::preflight::{Failure, FailureReason, ROUND_LABEL};
    b.create(&agent_daemonset(ns)).await.expect("DaemonSet");
    agent_pod(b, ns, "node1", None).await;
    agent_pod(b, ns, "node2", None).await;
    b.create(&nad(
        ns,
        "jumbo",
        &SEED_NAD_CONFIG.replace("\"mode\"", "\"mtu\":9000,\"mode\""),
    ))
    .await
    .expect("NAD");
    b.create(&hco(ns, "jumbo")).await.expect("HCO");

    let p = done(pass(b, ns).await);
    assert!(!p.daemonset_patched, "{p:?}");
    let c = condition(b, ns, CONDITION_TYPE).await;
    assert_eq!(
        (c.status.as_str(), c.reason.as_str()),
        ("False", reason::PREFLIGHT_RUNNING),
        "{c:?}"
    );
    assert!(c.message.contains("probing 2 nodes"), "{c:?}");
    let probes = probe_pods(b, ns).await;
    let nodes: Vec<_> = probes
        .iter()
        .map(|p| p.spec.as_ref().unwrap().node_name.clone().unwrap())
        .collect();
    assert_eq!(nodes, ["node1", "node2"]);
    let round = probes[0].labels()[ROUND_LABEL].clone();
    assert_eq!(
        probes[0]
            .annotations()
            .get(NETWORKS_ANNOTATION)
            .map(String::as_str),
        Some("jumbo@migration0")
    );
    assert!(!template_annotations(&daemonset(b, ns).await).contains_key(NETWORKS_ANNOTATION));

    // One probe reported: still running.
    probe_ends(b, &probes[0], &report("node1", "node2", None)).await;
    let p = done(pass(b, ns).await);
    assert!(!p.daemonset_patched);
    assert!(condition(b, ns, CONDITION_TYPE)
        .await
        .message
        .contains("1 of 2 probes reported"));

    // node2 cannot get full-size frames to node1.
    let mtu = Failure {
        reason: FailureReason::Mtu,
        detail: "a 8972-byte UDP payload (MTU 9000) got no echo in 3 tries; 64-byte ones did"
            .into(),
    };
    probe_ends(b, &probes[1], &report("node2", "node1", Some(mtu))).await;
    let p = done(pass(b, ns).await);
    assert!(!p.daemonset_patched, "{p:?}");
    let c = condition(b, ns, CONDITION_TYPE).await;
    assert_eq!(
        (c.status.as_str(), c.reason.as_str()),
        ("False", reason::PREFLIGHT_FAILED),
        "{c:?}"
    );
    assert_eq!(
        c.message,
        format!("pre-flight of migration network {ns}/jumbo failed; the agents keep the current network: node2 -> node1: MTU (a 8972-byte UDP payload (MTU 9000) got no echo in 3 tries; 64-byte ones did)")
    );
    assert!(
        probe_pods(b, ns).await.is_empty(),
        "probe pods are cleaned up after a failure"
    );
    assert!(!template_annotations(&daemonset(b, ns).await).contains_key(NETWORKS_ANNOTATION));
    // Held: no new round at once, the refusal stands.
    let p = done(pass(b, ns).await);
    assert!(!p.daemonset_patched && p.recheck_after.is_some(), "{p:?}");
    assert!(probe_pods(b, ns).await.is_empty());
    assert_eq!(
        condition(b, ns, CONDITION_TYPE).await.reason,
        reason::PREFLIGHT_FAILED
    );

    // The admin fixes the segment and edits the NAD (a new config, a new
    // round): this one passes, and the agents are switched.
    let mut n: mignet::api::NetworkAttachmentDefinition =
        b.get(ns, "jumbo").await.unwrap().unwrap();
    n.spec.config = Some(SEED_NAD_CONFIG.into());
    b.replace(&n).await.expect("NAD edit");
    let _ = done(pass(b, ns).await);
    let probes = probe_pods(b, ns).await;
    assert_eq!(probes.len(), 2, "a new round for the new config");
    assert_ne!(probes[0].labels()[ROUND_LABEL], round);
    probe_ends(b, &probes[0], &report("node1", "node2", None)).await;
    probe_ends(b, &probes[1], &report("node2", "node1", None)).await;
    let p = done(pass(b, ns).await);
    assert!(p.daemonset_patched, "{p:?}");
    assert!(
        probe_pods(b, ns).await.is_empty(),
        "probe pods are cleaned up after a pass"
    );
    assert_eq!(
        template_annotations(&daemonset(b, ns).await)
            .get(NETWORKS_ANNOTATION)
            .map(String::as_str),
        Some("jumbo@migration0")
    );
    let c = condition(b, ns, CONDITION_TYPE).await;
    assert_eq!(
        c.reason,
        reason::SWITCHING_AGENTS,
        "Ready agents are still on the pod network: {c:?}"
    );
    assert!(
        mignet::network::switch::migrations_held(&c.reason, &c.message).is_some(),
        "the migration controller reads a hold: {c:?}"
    );
}

/// A migration in flight holds the change until it ends: the condition
/// names it and says new migrations wait; the DaemonSet is patched once it
/// is over.
pub async fn scenario_a_network_change_waits_for_the_migration_in_flight<B: Backend>(
    b: &B,
    ns: &str,
) {
    use crate::control_common::{create_running_vmi, create_vmim};
    use mignet::api::MigrationPhase;
    use mignet::backend::protocol::enter_phase;
    b.create(&agent_daemonset(ns)).await.expect("DaemonSet");
    b.create(&nad(ns, "seed", SEED_NAD_CONFIG))
        .await
        .expect("NAD");
    create_running_vmi(b, ns, "vm-a", "node1", Default::default()).await;
    let m = create_vmim(b, ns, "vm-a-mig", "vm-a").await;
    let mut running = m.clone();
    enter_phase(&mut running, MigrationPhase::Running, now());
    running
        .status
        .get_or_insert_with(Default::default)
        .migration_state
        .get_or_insert_with(Default::default)
        .start_timestamp = Some(now());
    let running = b.replace_status(&running).await.expect("Running");
    b.create(&hco(ns, "seed")).await.expect("HCO");

    let p = done(pass(b, ns).await);
    assert!(!p.daemonset_patched, "{p:?}");
    let c = condition(b, ns, CONDITION_TYPE).await;
    assert_eq!(c.reason, reason::WAITING_FOR_MIGRATIONS, "{c:?}");
    assert!(c.message.contains(&format!("{ns}/vm-a-mig")), "{c:?}");
    assert!(c.message.contains("new migrations wait"), "{c:?}");
    assert!(mignet::network::switch::migrations_held(&c.reason, &c.message).is_some());

    let mut over = running.clone();
    enter_phase(&mut over, MigrationPhase::Succeeded, now());
    b.replace_status(&over).await.expect("Succeeded");
    let p = done(pass(b, ns).await);
    assert!(
        p.daemonset_patched,
        "patched once the migration is over: {p:?}"
    );
}
