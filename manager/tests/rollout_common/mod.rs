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

async fn pass<B: Backend>(b: &B, ns: &str) -> Outcome {
    let cluster = cluster();
    let preflight = mignet::network::preflight::PreflightSettings::default();
    let memory = std::sync::Mutex::new(Default::default());
    let target = Target {
        namespace: ns,
        hyperconverged: HCO,
        agent_daemonset: "mignet-agent",
        cluster: &cluster,
        preflight: &preflight,
        memory: &memory,
    };
    let followed = follow(b, &target)
        .await
        .expect("read the HCO")
        .expect("an HCO to follow");
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
