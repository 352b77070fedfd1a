//! The seed's YAML (examples/ and deploy/) read through our own types and
//! decisions: no apiserver needed.

use std::path::PathBuf;

use k8s_openapi::api::apps::v1::DaemonSet;
use mignet::api::{
    EvictionStrategy, HyperConverged, NetworkAttachmentDefinition, VirtualMachine,
    VirtualMachineInstanceMigration,
};
use mignet::network::decide::{
    self, AgentDaemonSet, ClusterNetworks, NadLookup, RolloutInput, MIGRATION_NETWORK_ANNOTATION,
};
use mignet::{EffectiveMigrationConfig, NetworkRef};

fn read(rel: &str) -> String {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(rel);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

#[test]
fn deploy_copies_match_examples() {
    for f in ["nad.yaml", "hyperconverged.yaml"] {
        assert_eq!(
            read(&format!("examples/{f}")),
            read(&format!("deploy/examples/{f}")),
            "deploy/examples/{f} must equal examples/{f}"
        );
    }
}

#[test]
fn seed_hco_and_nad_make_the_seed_annotation() {
    let hco: HyperConverged = serde_yaml::from_str(&read("examples/hyperconverged.yaml")).unwrap();
    let cfg = EffectiveMigrationConfig::from_spec(hco.spec.live_migration_config.as_ref()).unwrap();
    assert_eq!(cfg.bandwidth_per_migration, 64 << 20);
    assert_eq!(cfg.parallel_migrations_per_cluster, 5);
    assert_eq!(cfg.parallel_outbound_migrations_per_node, 2);
    assert_eq!(cfg.completion_timeout_per_gib, 800);
    assert_eq!(cfg.progress_timeout, 150);
    assert_eq!(
        cfg.network.as_ref().map(ToString::to_string).as_deref(),
        Some("my-secondary-network")
    );

    let nad: NetworkAttachmentDefinition =
        serde_yaml::from_str(&read("examples/nad.yaml")).unwrap();
    let ns = nad.metadata.namespace.clone().unwrap();
    assert_eq!(hco.metadata.namespace.as_deref(), Some(ns.as_str()));

    // The agent DaemonSet of deploy/ lives in the same namespace, so the
    // annotation takes Multus' short form.
    let ds: DaemonSet = serde_yaml::from_str(&read("deploy/base/agent.yaml")).unwrap();
    assert_eq!(ds.metadata.namespace.as_deref(), Some(ns.as_str()));
    let agents = AgentDaemonSet {
        namespace: ns.clone(),
        name: ds.metadata.name.clone().unwrap(),
        ..Default::default()
    };
    let d = decide::decide(&RolloutInput {
        network: Ok(cfg.network.as_ref()),
        default_namespace: &ns,
        nad: &NadLookup::Found {
            config: nad.spec.config.clone(),
        },
        cluster: &ClusterNetworks {
            pod: vec!["10.244.0.0/16".parse().unwrap()],
            service: vec!["10.96.0.0/12".parse().unwrap()],
        },
        agents: Some(&agents),
    });
    let patch = d.patch.expect("seed must be applied");
    assert_eq!(
        patch.networks.as_deref(),
        Some("my-secondary-network@migration0")
    );

    // The agent's `--migration-network` comes from the annotation the
    // manager writes, through deploy/'s downward API, and parses as the one
    // documented form.
    let agent = ds.spec.unwrap().template.spec.unwrap().containers[0].clone();
    let env = agent
        .env
        .unwrap_or_default()
        .into_iter()
        .find(|e| e.name == "MIGNET_MIGRATION_NETWORK")
        .expect("deploy passes MIGNET_MIGRATION_NETWORK");
    let field = env.value_from.unwrap().field_ref.unwrap().field_path;
    assert_eq!(
        field,
        format!("metadata.annotations['{MIGRATION_NETWORK_ANNOTATION}']")
    );
    let emitted = patch.network.expect("the agent's annotation");
    let r = NetworkRef::parse_qualified("--migration-network", &emitted).unwrap();
    assert_eq!(r.to_string(), format!("{ns}/my-secondary-network"));
}

#[test]
fn seed_vm_and_vmim() {
    let vm: VirtualMachine = serde_yaml::from_str(&read("examples/vm.yaml")).unwrap();
    assert_eq!(
        vm.spec.template.spec.eviction_strategy,
        Some(EvictionStrategy::LiveMigrate)
    );
    let cpu = vm.spec.template.spec.domain.cpu.unwrap();
    assert_eq!(cpu.model.as_deref(), Some("host-model"));
    let vmim: VirtualMachineInstanceMigration =
        serde_yaml::from_str(&read("examples/vmim.yaml")).unwrap();
    assert_eq!(vmim.spec.vmi_name, "vmi-fedora");
}

#[test]
fn node_maintenance_example() {
    let nm: mignet::api::NodeMaintenance =
        serde_yaml::from_str(&read("examples/nodemaintenance.yaml")).unwrap();
    assert_eq!(nm.metadata.name.as_deref(), Some("nm-node2"));
    assert_eq!(nm.spec.node_name, "node2");
    assert_eq!(nm.spec.reason.as_deref(), Some("kernel update"));
}

#[test]
fn agent_daemonset_shape() {
    let ds: DaemonSet = serde_yaml::from_str(&read("deploy/base/agent.yaml")).unwrap();
    let spec = ds.spec.unwrap().template.spec.unwrap();
    assert_ne!(
        spec.host_network,
        Some(true),
        "migration0 comes from Multus"
    );
    assert!(spec.termination_grace_period_seconds.unwrap() >= 330);
    let c = &spec.containers[0];
    assert_eq!(c.security_context.as_ref().unwrap().privileged, Some(true));
}
