//! `mignet lab maintenance start|stop NODE`: a NodeMaintenance in the lab
//! store, which the lab daemon's controller honours
//! (`crate::control::maintenance`). Start refuses what the
//! node-maintenance-operator's webhook refuses (a node that does not exist,
//! a second NodeMaintenance of a node), with its messages.

use k8s_openapi::api::core::v1::Node;
use kube::ResourceExt;

use super::CliError;
use crate::api::{NodeMaintenance, NodeMaintenanceSpec};
use crate::control::maintenance::already_exists;
use crate::store::Store;

#[derive(clap::Subcommand, Debug)]
pub enum MaintenanceCommand {
    /// Put NODE into maintenance: cordon it and move its VMs off
    /// (creates the NodeMaintenance `nm-NODE`).
    Start {
        node: String,
        #[arg(long)]
        reason: Option<String>,
    },
    /// End NODE's maintenance: delete its NodeMaintenance; the node is
    /// uncordoned and pending evacuations are cancelled.
    Stop { node: String },
}

/// The name `start` gives the NodeMaintenance of `node`.
pub fn name_for(node: &str) -> String {
    format!("nm-{node}")
}

/// Run `cmd` on `store`; returns what to print (kubectl's words).
pub fn run_on(store: &Store, cmd: MaintenanceCommand) -> Result<String, CliError> {
    const WHAT: &str = "nodemaintenance.nodemaintenance.medik8s.io";
    match cmd {
        MaintenanceCommand::Start { node, reason } => {
            if store.get::<Node>("", &node)?.is_none() {
                return Err(CliError::Failed(format!(
                    "invalid nodeName, no node with name {node} found"
                )));
            }
            if store
                .list::<NodeMaintenance>(None)?
                .iter()
                .any(|m| m.spec.node_name == node)
            {
                return Err(CliError::Failed(already_exists(&node)));
            }
            let nm = NodeMaintenance::new(
                &name_for(&node),
                NodeMaintenanceSpec {
                    node_name: node.clone(),
                    reason,
                },
            );
            let nm = store.create(&nm)?;
            Ok(format!("{WHAT}/{} created\n", nm.name_any()))
        }
        MaintenanceCommand::Stop { node } => {
            let mine: Vec<NodeMaintenance> = store
                .list::<NodeMaintenance>(None)?
                .into_iter()
                .filter(|m| m.spec.node_name == node)
                .collect();
            if mine.is_empty() {
                return Err(CliError::Failed(format!(
                    "node {node} is not in maintenance (no NodeMaintenance names it)"
                )));
            }
            let mut out = String::new();
            for m in mine {
                store.delete_typed::<NodeMaintenance>("", &m.name_any())?;
                out.push_str(&format!("{WHAT}/{} deleted\n", m.name_any()));
            }
            Ok(out)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store_with_node(tag: &str) -> (tempdir::Dir, Store) {
        let dir = tempdir::Dir::new(tag);
        let store = Store::open(&dir.0).unwrap();
        let n = Node {
            metadata: kube::api::ObjectMeta {
                name: Some("lab-node1".into()),
                ..Default::default()
            },
            ..Default::default()
        };
        store.create(&n).unwrap();
        (dir, store)
    }

    mod tempdir {
        pub struct Dir(pub std::path::PathBuf);
        impl Dir {
            pub fn new(tag: &str) -> Self {
                let p = std::env::temp_dir()
                    .join(format!("mignet-lab-maint-{tag}-{}", std::process::id()));
                let _ = std::fs::remove_dir_all(&p);
                Self(p)
            }
        }
        impl Drop for Dir {
            fn drop(&mut self) {
                let _ = std::fs::remove_dir_all(&self.0);
            }
        }
    }

    #[test]
    fn start_creates_one_per_node_and_stop_deletes_it() {
        let (_d, store) = store_with_node("startstop");
        let start = |node: &str| {
            run_on(
                &store,
                MaintenanceCommand::Start {
                    node: node.into(),
                    reason: Some("kernel".into()),
                },
            )
        };
        let out = start("lab-node1").unwrap();
        assert_eq!(
            out,
            "nodemaintenance.nodemaintenance.medik8s.io/nm-lab-node1 created\n"
        );
        let nm: NodeMaintenance = store.get("", "nm-lab-node1").unwrap().unwrap();
        assert_eq!(nm.spec.reason.as_deref(), Some("kernel"));
        let e = start("lab-node1").unwrap_err().to_string();
        assert!(
            e.contains("a NodeMaintenance for node lab-node1 already exists"),
            "{e}"
        );
        let e = start("nope").unwrap_err().to_string();
        assert!(e.contains("no node with name nope found"), "{e}");

        let stop = |node: &str| run_on(&store, MaintenanceCommand::Stop { node: node.into() });
        assert!(stop("lab-node1").unwrap().contains("nm-lab-node1 deleted"));
        assert!(store
            .get::<NodeMaintenance>("", "nm-lab-node1")
            .unwrap()
            .is_none());
        assert!(stop("lab-node1").is_err());
    }

    /// `mignet create -f` of the operator's sample shape (a namespace in
    /// the file is dropped: the kind is cluster-scoped), then `get nm` as a
    /// table and with a jsonpath.
    #[test]
    fn create_file_and_get_nodemaintenance() {
        use crate::cli::{run_on as cli, Verb};
        use crate::lab::LAB_NAMESPACE;
        let (d, store) = store_with_node("createget");
        std::fs::create_dir_all(&d.0).unwrap();
        let file = d.0.join("nm.yaml");
        std::fs::write(
            &file,
            "apiVersion: nodemaintenance.medik8s.io/v1beta1\nkind: NodeMaintenance\n\
             metadata:\n  name: nodemaintenance-sample\n  namespace: default\n\
             spec:\n  nodeName: lab-node1\n  reason: \"Test node maintenance\"\n",
        )
        .unwrap();
        let out = cli(
            &store,
            Verb::Create {
                files: vec![file],
                namespace: LAB_NAMESPACE.into(),
            },
        )
        .unwrap();
        assert_eq!(
            out,
            "nodemaintenance.nodemaintenance.medik8s.io/nodemaintenance-sample created\n"
        );
        let get = |output: Option<&str>| {
            cli(
                &store,
                Verb::Get {
                    resource: "nm".into(),
                    name: None,
                    output: output.map(str::to_owned),
                    namespace: Some(LAB_NAMESPACE.into()),
                    all_namespaces: false,
                },
            )
            .unwrap()
        };
        let table = get(None);
        assert!(table.starts_with("NAME"), "{table}");
        assert!(
            table.contains("nodemaintenance-sample") && table.contains("lab-node1"),
            "{table}"
        );
        assert_eq!(
            get(Some("jsonpath={.items[0].spec.reason}")),
            "Test node maintenance"
        );
    }
}
