//! CLI verbs that mirror the seed's `oc`/`kubectl` commands and virtctl's
//! `migrate` / `migrate-cancel`: `create -f`, `apply -f`, `delete`, `get`,
//! `describe`, `edit-config`, `migrate`, `migrate-cancel`,
//! `start`/`stop`/`restart`, and the `lab` verbs. Against the lab (see [`target`] for how the target is chosen) the
//! store verbs read and write the store files directly (under its lock); the
//! lab daemon notices the writes. Against a cluster `get`, `describe`,
//! `migrate` and `migrate-cancel` run over the API server
//! ([`over_backend`]); the writing verbs stay lab-only (kubectl does them).
//!
//! Namespace: `-n`; in the lab the default is `mignet-system` (the lab's
//! only namespace in practice, where the seed's NAD and HCO live; the seed's
//! VM and VMIM files carry none and land there too); on a cluster it is the
//! kubeconfig context's, as for kubectl.

pub mod describe;
pub mod edit_config;
pub mod jsonpath;
pub mod lab;
pub mod lab_maintenance;
pub mod lab_status;
pub mod migrate;
pub mod over_backend;
pub mod power;
pub mod probe;
pub mod resources;
pub mod table;
pub mod target;

use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::lab::{LabError, LAB_NAMESPACE};
use crate::store::{Deleted, Key, Store, StoreError};
use resources::Resource;

#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Lab(#[from] LabError),
    #[error("the server doesn't have a resource type {0:?} (known: vmi, vmim, vm, nad, hco, nm, nodes, pods, ds)")]
    UnknownResource(String),
    #[error("reading {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: document {doc} is not valid YAML")]
    Yaml {
        path: PathBuf,
        doc: usize,
        #[source]
        source: serde_yaml::Error,
    },
    #[error("{0}")]
    Usage(String),
    #[error(transparent)]
    JsonPath(#[from] jsonpath::JsonPathError),
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error("{0}")]
    Failed(String),
}

/// The verbs, flattened into the `mignet` command line.
#[derive(clap::Subcommand, Debug)]
pub enum Verb {
    /// Lab mode: a cluster's networking in network namespaces on this machine.
    #[command(subcommand)]
    Lab(lab::LabCommand),
    /// Create objects from YAML files (multi-document; `-` reads stdin).
    Create {
        #[arg(short = 'f', long = "filename", required = true)]
        files: Vec<PathBuf>,
        #[arg(short = 'n', long, default_value = LAB_NAMESPACE)]
        namespace: String,
    },
    /// Create objects, or update them if they exist.
    Apply {
        #[arg(short = 'f', long = "filename", required = true)]
        files: Vec<PathBuf>,
        #[arg(short = 'n', long, default_value = LAB_NAMESPACE)]
        namespace: String,
    },
    /// Delete objects (`delete vmim migration-job`). With finalizers, the
    /// object goes once they are removed.
    Delete {
        /// Resource type (vmi, vmim, vm, nad, hco) or TYPE/NAME.
        resource: String,
        names: Vec<String>,
        #[arg(short = 'n', long, default_value = LAB_NAMESPACE)]
        namespace: String,
        /// Wait (up to 60 s) until finalizers let the objects go.
        #[arg(long)]
        wait: bool,
    },
    /// List or show objects: table, `-o json|yaml|name|jsonpath=TEMPLATE`.
    Get {
        /// Resource type (vmi, vmim, vm, nad, hco, nm, nodes, pods, ds) or TYPE/NAME.
        resource: String,
        name: Option<String>,
        #[arg(short = 'o', long)]
        output: Option<String>,
        /// Default: mignet-system in the lab, the context's on a cluster.
        #[arg(short = 'n', long)]
        namespace: Option<String>,
        #[arg(short = 'A', long)]
        all_namespaces: bool,
    },
    /// Show an object in prose (for a VMI: the seed's migration-state block).
    Describe {
        resource: String,
        name: Option<String>,
        /// Default: mignet-system in the lab, the context's on a cluster.
        #[arg(short = 'n', long)]
        namespace: Option<String>,
    },
    /// Live-migrate a running VM (virtctl migrate): creates a
    /// VirtualMachineInstanceMigration for it.
    Migrate {
        vm: String,
        /// Default: mignet-system in the lab, the context's on a cluster.
        #[arg(short = 'n', long)]
        namespace: Option<String>,
    },
    /// Cancel a VM's unfinished migration (virtctl migrate-cancel): deletes
    /// its VirtualMachineInstanceMigration.
    MigrateCancel {
        vm: String,
        /// Default: mignet-system in the lab, the context's on a cluster.
        #[arg(short = 'n', long)]
        namespace: Option<String>,
    },
    /// Start a stopped VM (virtctl start).
    Start(power::VmArgs),
    /// Stop a running VM (virtctl stop).
    Stop(power::VmArgs),
    /// Restart a VM (virtctl restart): its VMI is deleted and a new one is
    /// created from the VM's current template.
    Restart(power::VmArgs),
    /// Set (`KEY=VALUE`) or unset (`KEY-`) keys of the HyperConverged's
    /// liveMigrationConfig; unset restores the default.
    EditConfig {
        #[arg(required = true)]
        changes: Vec<String>,
        #[arg(short = 'n', long, default_value = LAB_NAMESPACE)]
        namespace: String,
        #[arg(long, default_value = crate::lab::HYPERCONVERGED)]
        hyperconverged: String,
    },
}

/// Run a verb against the target the flags and environment name
/// ([`target::choose`]); what it prints goes to stdout. The lab's store
/// verbs block (files, locks), as they always did: nothing else runs on
/// the CLI's runtime.
pub async fn run(target_args: &target::TargetArgs, verb: Verb) -> Result<(), CliError> {
    if let Verb::Lab(cmd) = verb {
        if target_args.kubeconfig.is_some() {
            return Err(CliError::Usage(
                "`mignet lab` acts on the lab ($MIGNET_LAB_DIR), never on a cluster: drop --kubeconfig".into(),
            ));
        }
        return lab::run(cmd);
    }
    let out = match target::choose(target_args, &target::TargetEnv::from_env())? {
        target::Target::Lab(dir) => {
            let store = target::open_lab(&dir)?;
            match verb {
                Verb::Migrate { .. }
                | Verb::MigrateCancel { .. }
                | Verb::Start(_)
                | Verb::Stop(_)
                | Verb::Restart(_) => {
                    let b = crate::backend::LocalBackend::new(std::sync::Arc::new(store));
                    over_backend::run(&b, LAB_NAMESPACE, verb).await?
                }
                verb => run_on(&store, verb)?,
            }
        }
        target::Target::Cluster(kubeconfig) => {
            let client = target::connect(kubeconfig.as_deref()).await?;
            let ns = client.default_namespace().to_owned();
            over_backend::run(&crate::backend::KubeBackend::unwatched(client), &ns, verb).await?
        }
    };
    print!("{out}");
    Ok(())
}

/// Run a store verb against `store`, returning its output.
pub fn run_on(store: &Store, verb: Verb) -> Result<String, CliError> {
    match verb {
        Verb::Lab(_) => Err(CliError::Usage(
            "lab verbs do not run against a store".into(),
        )),
        Verb::Create { files, namespace } => write_files(store, &files, &namespace, Mode::Create),
        Verb::Apply { files, namespace } => write_files(store, &files, &namespace, Mode::Apply),
        Verb::Delete {
            resource,
            names,
            namespace,
            wait,
        } => delete(store, &resource, names, &namespace, wait),
        Verb::Get {
            resource,
            name,
            output,
            namespace,
            all_namespaces,
        } => get(
            store,
            &resource,
            name,
            output.as_deref(),
            namespace.as_deref().unwrap_or(LAB_NAMESPACE),
            all_namespaces,
        ),
        Verb::Migrate { .. }
        | Verb::MigrateCancel { .. }
        | Verb::Start(_)
        | Verb::Stop(_)
        | Verb::Restart(_) => Err(CliError::Usage(
            "migrate and start/stop/restart run over a backend (cli::run)".into(),
        )),
        Verb::Describe {
            resource,
            name,
            namespace,
        } => {
            let namespace = namespace.as_deref().unwrap_or(LAB_NAMESPACE);
            let (r, name) = resource_and_name(&resource, name)?;
            let name = name.ok_or_else(|| CliError::Usage("describe needs a NAME".into()))?;
            let key = Key::new(r.kind, ns_for(r, namespace), &name);
            let obj = store.get_value(&key)?.ok_or(StoreError::NotFound { key })?;
            Ok(describe::describe(r, &obj))
        }
        Verb::EditConfig {
            changes,
            namespace,
            hyperconverged,
        } => edit_config::edit(store, &namespace, &hyperconverged, &changes),
    }
}

fn ns_for<'a>(r: &Resource, namespace: &'a str) -> &'a str {
    if r.namespaced {
        namespace
    } else {
        ""
    }
}

/// `vmi NAME` or `vmi/NAME`.
fn resource_and_name(
    resource: &str,
    name: Option<String>,
) -> Result<(&'static Resource, Option<String>), CliError> {
    let (kind, inline) = match resource.split_once('/') {
        Some((k, n)) => (k, Some(n.to_owned())),
        None => (resource, None),
    };
    let r = resources::lookup(kind).ok_or_else(|| CliError::UnknownResource(kind.to_owned()))?;
    if inline.is_some() && name.is_some() {
        return Err(CliError::Usage(
            "there is no need to specify a resource type as a separate argument when passing arguments in resource/name form".into(),
        ));
    }
    Ok((r, inline.or(name)))
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Create,
    Apply,
}

/// Parse every document of every file (`-` = stdin) into JSON objects.
pub fn read_documents(files: &[PathBuf]) -> Result<Vec<(PathBuf, Value)>, CliError> {
    use serde::Deserialize;
    let mut out = Vec::new();
    for path in files {
        let text = if path == Path::new("-") {
            std::io::read_to_string(std::io::stdin())
        } else {
            std::fs::read_to_string(path)
        }
        .map_err(|source| CliError::Read {
            path: path.clone(),
            source,
        })?;
        for (i, doc) in serde_yaml::Deserializer::from_str(&text).enumerate() {
            let v = Value::deserialize(doc).map_err(|source| CliError::Yaml {
                path: path.clone(),
                doc: i + 1,
                source,
            })?;
            match v {
                Value::Null => continue, // empty document (`---` at the end)
                Value::Object(_) => match v.get("kind").and_then(Value::as_str) {
                    // A kubectl-style List: its items.
                    Some("List") => out.extend(
                        v.get("items")
                            .and_then(Value::as_array)
                            .into_iter()
                            .flatten()
                            .map(|item| (path.clone(), item.clone())),
                    ),
                    _ => out.push((path.clone(), v)),
                },
                _ => {
                    return Err(CliError::Usage(format!(
                        "{}: document {} is not an object",
                        path.display(),
                        i + 1
                    )))
                }
            }
        }
    }
    Ok(out)
}

fn write_files(
    store: &Store,
    files: &[PathBuf],
    namespace: &str,
    mode: Mode,
) -> Result<String, CliError> {
    let docs = read_documents(files)?;
    // Validate all first, so a bad last document does not leave half a file
    // applied.
    let mut objs = Vec::new();
    for (path, mut v) in docs {
        let kind = v
            .get("kind")
            .and_then(Value::as_str)
            .ok_or_else(|| CliError::Usage(format!("{}: object has no kind", path.display())))?
            .to_owned();
        let r = resources::by_kind(&kind)
            .filter(|r| r.user_writable)
            .ok_or_else(|| {
                CliError::Usage(format!(
                    "{}: kind {kind} is not supported (VirtualMachine, VirtualMachineInstance, VirtualMachineInstanceMigration, NetworkAttachmentDefinition, HyperConverged, NodeMaintenance)",
                    path.display()
                ))
            })?;
        let meta = v
            .as_object_mut()
            .expect("checked object")
            .entry("metadata")
            .or_insert_with(|| Value::Object(Default::default()));
        let meta = meta
            .as_object_mut()
            .ok_or_else(|| CliError::Usage(format!("{}: metadata is not a map", path.display())))?;
        match meta.get("namespace").and_then(Value::as_str) {
            // A cluster-scoped object (NodeMaintenance) has no namespace;
            // the API server drops one given, so do we.
            _ if !r.namespaced => {
                meta.remove("namespace");
            }
            // kubectl refuses a file whose namespace contradicts -n.
            Some(ns) if ns != namespace && namespace != LAB_NAMESPACE => {
                return Err(CliError::Usage(format!(
                    "the namespace from the provided object {ns:?} does not match the namespace {namespace:?}"
                )))
            }
            Some(_) => {}
            None => {
                meta.insert("namespace".into(), Value::String(namespace.to_owned()));
            }
        }
        resources::validate(&kind, &v)?;
        objs.push((r, v));
    }
    let mut out = String::new();
    for (r, v) in objs {
        let key = Key::of(&v)?;
        let verb = match mode {
            Mode::Create => {
                store.create_value(v)?;
                "created"
            }
            Mode::Apply => apply_one(store, &key, v)?,
        };
        out.push_str(&format!("{}/{} {verb}\n", r.qualified(), key.name));
    }
    Ok(out)
}

/// `apply` of one object: create it, or replace what the file says (the
/// server-owned metadata and the status stay). A controller writing the
/// object's status between our read and our write is no reason to fail
/// (kubectl's patch would not): read again and apply again, a few times.
fn apply_one(store: &Store, key: &Key, v: Value) -> Result<&'static str, CliError> {
    const ATTEMPTS: u32 = 10;
    let mut attempt = 0;
    loop {
        attempt += 1;
        let result = match store.get_value(key)? {
            None => store.create_value(v.clone()).map(|_| "created"),
            Some(old) => {
                let mut new = v.clone();
                new["metadata"]["resourceVersion"] = old["metadata"]["resourceVersion"].clone();
                if strip_server_fields(&new) == strip_server_fields(&old) {
                    Ok("unchanged")
                } else {
                    store.update_value(new).map(|_| "configured")
                }
            }
        };
        match result {
            Err(e) if e.is_conflict() && attempt < ATTEMPTS => {}
            Err(StoreError::AlreadyExists { .. }) if attempt < ATTEMPTS => {}
            other => return Ok(other?),
        }
        // A short pause lets a busy writer's burst pass.
        std::thread::sleep(std::time::Duration::from_millis(2 * u64::from(attempt)));
    }
}

fn strip_server_fields(v: &Value) -> Value {
    let mut v = v.clone();
    if let Some(m) = v.as_object_mut() {
        m.remove("status");
        if let Some(meta) = m.get_mut("metadata").and_then(Value::as_object_mut) {
            for f in [
                "uid",
                "resourceVersion",
                "generation",
                "creationTimestamp",
                "deletionTimestamp",
                "managedFields",
            ] {
                meta.remove(f);
            }
        }
    }
    v
}

fn delete(
    store: &Store,
    resource: &str,
    names: Vec<String>,
    namespace: &str,
    wait: bool,
) -> Result<String, CliError> {
    let (r, inline) = match resource.split_once('/') {
        Some(_) => {
            let (r, n) = resource_and_name(resource, None)?;
            (r, n)
        }
        None => (
            resources::lookup(resource)
                .ok_or_else(|| CliError::UnknownResource(resource.to_owned()))?,
            None,
        ),
    };
    let names: Vec<String> = inline.into_iter().chain(names).collect();
    if names.is_empty() {
        return Err(CliError::Usage(
            "resource(s) were provided, but no name was specified".into(),
        ));
    }
    // Pods are the lab's to create, but deleting one is what an operator
    // does to restart an agent or stop a launcher, and the lab kubelet
    // handles both as a kubelet does (lab/agent_pods.rs, lab/launcher_pods.rs).
    if !r.user_writable && r.kind != "Pod" {
        return Err(CliError::Usage(format!(
            "{} objects belong to the lab",
            r.kind
        )));
    }
    let mut out = String::new();
    for name in names {
        let key = Key::new(r.kind, ns_for(r, namespace), &name);
        match store.delete(&key)? {
            Deleted::Gone(_) => {}
            Deleted::Pending(_) if wait => {
                let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
                while store.get_value(&key)?.is_some() {
                    if std::time::Instant::now() > deadline {
                        return Err(CliError::Failed(format!(
                            "timed out waiting for the finalizers of {key}"
                        )));
                    }
                    let rev = store.revision()?;
                    store.wait_for_change(rev, std::time::Duration::from_millis(500))?;
                }
            }
            Deleted::Pending(_) => {}
        }
        out.push_str(&format!("{} \"{name}\" deleted\n", r.qualified()));
    }
    Ok(out)
}

fn get(
    store: &Store,
    resource: &str,
    name: Option<String>,
    output: Option<&str>,
    namespace: &str,
    all_namespaces: bool,
) -> Result<String, CliError> {
    let (r, name) = resource_and_name(resource, name)?;
    let ns = if all_namespaces || !r.namespaced {
        None
    } else {
        Some(namespace)
    };
    let (single, items): (bool, Vec<Value>) = match &name {
        Some(n) => {
            let key = Key::new(r.kind, ns_for(r, namespace), n);
            let v = store.get_value(&key)?.ok_or(StoreError::NotFound { key })?;
            (true, vec![v])
        }
        None => (
            false,
            store.list_values(r.kind, ns.map(|n| if r.namespaced { n } else { "" }))?,
        ),
    };
    render_get(r, single, items, output, ns, all_namespaces)
}

/// What `get` prints for the objects read (`single`: one asked by name).
fn render_get(
    r: &Resource,
    single: bool,
    items: Vec<Value>,
    output: Option<&str>,
    ns: Option<&str>,
    all_namespaces: bool,
) -> Result<String, CliError> {
    let as_doc = || {
        if single {
            items[0].clone()
        } else {
            serde_json::json!({
                "apiVersion": "v1",
                "kind": "List",
                "items": items,
                "metadata": {"resourceVersion": ""},
            })
        }
    };
    match output {
        None | Some("wide") => {
            if items.is_empty() {
                return Ok(match ns {
                    Some(ns) if r.namespaced => format!("No resources found in {ns} namespace.\n"),
                    _ => "No resources found\n".to_owned(),
                });
            }
            Ok(describe::table(r, &items, all_namespaces && r.namespaced))
        }
        Some("json") => Ok(format!(
            "{}\n",
            serde_json::to_string_pretty(&as_doc()).expect("JSON serialises")
        )),
        Some("yaml") => Ok(serde_yaml::to_string(&as_doc()).expect("YAML serialises")),
        Some("name") => Ok(items
            .iter()
            .map(|v| {
                format!(
                    "{}/{}\n",
                    r.qualified(),
                    v["metadata"]["name"].as_str().unwrap_or_default()
                )
            })
            .collect()),
        Some(o) => {
            let Some(t) = o.strip_prefix("jsonpath=") else {
                return Err(CliError::Usage(format!(
                    "unable to match a printer suitable for the output format {o:?}, allowed formats are: json, jsonpath, name, wide, yaml"
                )));
            };
            // Shell quoting usually strips them; a literal pair is tolerated.
            let t = t
                .strip_prefix('\'')
                .and_then(|x| x.strip_suffix('\''))
                .unwrap_or(t);
            let template = jsonpath::Template::parse(t)?;
            Ok(template.render(&as_doc()))
        }
    }
}

#[cfg(test)]
mod tests;
