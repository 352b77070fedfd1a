//! The verbs that run over a [`Backend`]: `get`, `describe`, `migrate`,
//! `migrate-cancel`, `start`/`stop`/`restart` against a cluster (and the
//! migrate and power verbs against the lab). Objects are read typed and
//! printed by the same code as the lab's (`render_get`,
//! [`super::describe`]), so both targets print alike.

use serde_json::Value;

use super::resources::Resource;
use super::{describe, migrate, power, render_get, resource_and_name, CliError, Verb};
use crate::api::{
    HyperConverged, NetworkAttachmentDefinition, NodeMaintenance, VirtualMachine,
    VirtualMachineInstance, VirtualMachineInstanceMigration,
};
use crate::backend::{Backend, BackendError};
use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{Node, Pod};

/// Run `verb` over `b`; `default_ns` is the namespace when `-n` is not given.
pub async fn run<B: Backend>(b: &B, default_ns: &str, verb: Verb) -> Result<String, CliError> {
    let or_default = |ns: Option<String>| ns.unwrap_or_else(|| default_ns.to_owned());
    match verb {
        Verb::Migrate { vm, namespace } => migrate::migrate(b, &or_default(namespace), &vm).await,
        Verb::MigrateCancel { vm, namespace } => {
            migrate::migrate_cancel(b, &or_default(namespace), &vm).await
        }
        Verb::Start(a) => power_verb(b, &a, power::Power::Start, or_default).await,
        Verb::Stop(a) => power_verb(b, &a, power::Power::Stop, or_default).await,
        Verb::Restart(a) => power_verb(b, &a, power::Power::Restart, or_default).await,
        Verb::Get {
            resource,
            name,
            output,
            namespace,
            all_namespaces,
        } => {
            let namespace = or_default(namespace);
            let (r, name) = resource_and_name(&resource, name)?;
            let ns = (!all_namespaces && r.namespaced).then_some(namespace.as_str());
            let (single, items) = match name {
                Some(n) => (true, vec![get_one(b, r, &namespace, &n).await?]),
                None => (false, list(b, r, ns).await?),
            };
            render_get(r, single, items, output.as_deref(), ns, all_namespaces)
        }
        Verb::Describe {
            resource,
            name,
            namespace,
        } => {
            let (r, name) = resource_and_name(&resource, name)?;
            let name = name.ok_or_else(|| CliError::Usage("describe needs a NAME".into()))?;
            let obj = get_one(b, r, &or_default(namespace), &name).await?;
            Ok(describe::describe(r, &obj))
        }
        Verb::Lab(_)
        | Verb::Create { .. }
        | Verb::Apply { .. }
        | Verb::Delete { .. }
        | Verb::EditConfig { .. } => Err(CliError::Usage(
            "this verb works on the lab only (--lab); on a cluster use kubectl".into(),
        )),
    }
}

async fn power_verb<B: Backend>(
    b: &B,
    a: &power::VmArgs,
    verb: power::Power,
    or_default: impl Fn(Option<String>) -> String,
) -> Result<String, CliError> {
    let name = a.vm_name(verb)?;
    power::power(b, &or_default(a.namespace.clone()), &name, verb).await
}

fn failed(e: BackendError) -> CliError {
    CliError::Failed(e.to_string())
}

fn to_value<K: serde::Serialize>(obj: &K) -> Value {
    serde_json::to_value(obj).expect("typed objects serialise")
}

/// Call `$f::<Kind>` for the kind `r` names.
macro_rules! by_kind {
    ($r:expr, $f:ident ( $($arg:expr),* )) => {
        match $r.kind {
            "VirtualMachineInstance" => $f::<_, VirtualMachineInstance>($($arg),*).await,
            "VirtualMachineInstanceMigration" => $f::<_, VirtualMachineInstanceMigration>($($arg),*).await,
            "VirtualMachine" => $f::<_, VirtualMachine>($($arg),*).await,
            "NetworkAttachmentDefinition" => $f::<_, NetworkAttachmentDefinition>($($arg),*).await,
            "HyperConverged" => $f::<_, HyperConverged>($($arg),*).await,
            "Node" => $f::<_, Node>($($arg),*).await,
            "Pod" => $f::<_, Pod>($($arg),*).await,
            "DaemonSet" => $f::<_, DaemonSet>($($arg),*).await,
            "NodeMaintenance" => $f::<_, NodeMaintenance>($($arg),*).await,
            other => Err(CliError::UnknownResource(other.to_owned())),
        }
    };
}

async fn get_one<B: Backend>(b: &B, r: &Resource, ns: &str, name: &str) -> Result<Value, CliError> {
    async fn typed<B: Backend, K: crate::backend::Kind>(
        b: &B,
        ns: &str,
        name: &str,
    ) -> Result<Value, CliError> {
        match b.get::<K>(ns, name).await.map_err(failed)? {
            Some(o) => Ok(to_value(&o)),
            None => Err(failed(BackendError::NotFound {
                object: crate::backend::ObjectRef::new::<K>(
                    if K::NAMESPACED { ns } else { "" },
                    name,
                ),
            })),
        }
    }
    by_kind!(r, typed(b, ns, name))
}

async fn list<B: Backend>(b: &B, r: &Resource, ns: Option<&str>) -> Result<Vec<Value>, CliError> {
    async fn typed<B: Backend, K: crate::backend::Kind>(
        b: &B,
        ns: Option<&str>,
    ) -> Result<Vec<Value>, CliError> {
        Ok(b.list::<K>(ns)
            .await
            .map_err(failed)?
            .iter()
            .map(to_value)
            .collect())
    }
    by_kind!(r, typed(b, ns))
}
