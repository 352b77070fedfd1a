//! Which system the verbs talk to: a Kubernetes cluster (kubectl's rules)
//! or the lab's store.
//!
//! The rules, first match wins:
//! 1. `--kubeconfig` and `--lab` together: an error (say one).
//! 2. `--kubeconfig PATH`: that cluster.
//! 3. `--lab`: the lab at `$MIGNET_LAB_DIR` (default `/var/lib/mignet/lab`).
//! 4. `$MIGNET_LAB_DIR` set: the lab. A mignet-only variable is a more
//!    deliberate choice than `$KUBECONFIG`, which many shells export for
//!    everything.
//! 5. `$KUBECONFIG` set, or in a pod (`$KUBERNETES_SERVICE_HOST`): the
//!    cluster (kube's `Config::infer`), unless a lab is up at the default
//!    directory: then both are plausible and the verb refuses, naming both
//!    flags, instead of guessing.
//! 6. Neither: the lab at the default directory, as before the cluster
//!    existed (the README's lab walk-through relies on it); if no lab is up
//!    the error says how to choose.

use std::path::PathBuf;

use super::CliError;
use crate::lab::DEFAULT_DIR;

/// The target flags, global to every verb.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct TargetArgs {
    /// Talk to the cluster of this kubeconfig (else $KUBECONFIG, else
    /// in-cluster).
    #[arg(long, global = true, value_name = "PATH")]
    pub kubeconfig: Option<PathBuf>,
    /// Talk to the lab (at $MIGNET_LAB_DIR, default /var/lib/mignet/lab).
    #[arg(long, global = true)]
    pub lab: bool,
}

/// What the environment says, read once so [`choose`] stays pure.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TargetEnv {
    /// `$MIGNET_LAB_DIR`, if set and not empty.
    pub lab_dir: Option<PathBuf>,
    /// `$KUBECONFIG` is set and not empty.
    pub kubeconfig: bool,
    /// `$KUBERNETES_SERVICE_HOST` is set (running in a pod).
    pub in_cluster: bool,
    /// A lab is up at the default directory.
    pub default_lab_up: bool,
}

impl TargetEnv {
    pub fn from_env() -> Self {
        let set = |v: &str| std::env::var_os(v).is_some_and(|x| !x.is_empty());
        Self {
            lab_dir: std::env::var_os("MIGNET_LAB_DIR")
                .filter(|v| !v.is_empty())
                .map(PathBuf::from),
            kubeconfig: set("KUBECONFIG"),
            in_cluster: set("KUBERNETES_SERVICE_HOST"),
            default_lab_up: crate::lab::state_file(std::path::Path::new(DEFAULT_DIR)).exists(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// The lab whose directory this is.
    Lab(PathBuf),
    /// A cluster: this kubeconfig, or `None` for kube's inference
    /// (`$KUBECONFIG`, then in-cluster).
    Cluster(Option<PathBuf>),
}

/// The target by the rules in the module doc.
pub fn choose(args: &TargetArgs, env: &TargetEnv) -> Result<Target, CliError> {
    let lab_dir = || env.lab_dir.clone().unwrap_or_else(|| DEFAULT_DIR.into());
    match (&args.kubeconfig, args.lab) {
        (Some(_), true) => {
            return Err(CliError::Usage(
                "--kubeconfig and --lab name different targets: give one".into(),
            ))
        }
        (Some(path), false) => return Ok(Target::Cluster(Some(path.clone()))),
        (None, true) => return Ok(Target::Lab(lab_dir())),
        (None, false) => {}
    }
    if let Some(dir) = &env.lab_dir {
        return Ok(Target::Lab(dir.clone()));
    }
    if env.kubeconfig || env.in_cluster {
        if env.default_lab_up {
            let source = if env.kubeconfig {
                "$KUBECONFIG is set"
            } else {
                "this runs in a pod"
            };
            return Err(CliError::Usage(format!(
                "{source} and a lab is up at {DEFAULT_DIR}: say which with --kubeconfig PATH or --lab"
            )));
        }
        return Ok(Target::Cluster(None));
    }
    Ok(Target::Lab(DEFAULT_DIR.into()))
}

/// The lab's store, with the error saying how to pick a cluster instead.
pub fn open_lab(dir: &std::path::Path) -> Result<crate::store::Store, CliError> {
    crate::lab::open_store(dir).map_err(|e| match e {
        crate::lab::LabError::NotUp { dir } => CliError::Usage(format!(
            "no lab is up at {} (start one with `mignet lab up`); for a cluster pass --kubeconfig PATH or set $KUBECONFIG",
            dir.display()
        )),
        e => e.into(),
    })
}

/// A client for the cluster target.
pub async fn connect(kubeconfig: Option<&std::path::Path>) -> Result<kube::Client, CliError> {
    let failed = |what: String, e: &dyn std::fmt::Display| CliError::Failed(format!("{what}: {e}"));
    let config = match kubeconfig {
        Some(path) => {
            let kc = kube::config::Kubeconfig::read_from(path)
                .map_err(|e| failed(format!("reading kubeconfig {}", path.display()), &e))?;
            kube::Config::from_custom_kubeconfig(kc, &Default::default())
                .await
                .map_err(|e| failed(format!("kubeconfig {}", path.display()), &e))?
        }
        None => kube::Config::infer()
            .await
            .map_err(|e| failed("finding the cluster ($KUBECONFIG, in-cluster)".into(), &e))?,
    };
    kube::Client::try_from(config).map_err(|e| failed("connecting to the cluster".into(), &e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(kubeconfig: Option<&str>, lab: bool) -> TargetArgs {
        TargetArgs {
            kubeconfig: kubeconfig.map(PathBuf::from),
            lab,
        }
    }

    #[test]
    fn flags_beat_the_environment_and_conflict_with_each_other() {
        let env = TargetEnv {
            lab_dir: Some("/tmp/lab".into()),
            kubeconfig: true,
            ..Default::default()
        };
        assert_eq!(
            choose(&args(Some("/k"), false), &env).unwrap(),
            Target::Cluster(Some("/k".into()))
        );
        assert_eq!(
            choose(&args(None, true), &env).unwrap(),
            Target::Lab("/tmp/lab".into())
        );
        assert!(choose(&args(Some("/k"), true), &env).is_err());
    }

    #[test]
    fn lab_dir_beats_kubeconfig_env() {
        let env = TargetEnv {
            lab_dir: Some("/tmp/lab".into()),
            kubeconfig: true,
            ..Default::default()
        };
        assert_eq!(
            choose(&args(None, false), &env).unwrap(),
            Target::Lab("/tmp/lab".into())
        );
    }

    #[test]
    fn kubeconfig_env_or_pod_means_the_cluster_unless_a_default_lab_is_up() {
        for env in [
            TargetEnv {
                kubeconfig: true,
                ..Default::default()
            },
            TargetEnv {
                in_cluster: true,
                ..Default::default()
            },
        ] {
            assert_eq!(
                choose(&args(None, false), &env).unwrap(),
                Target::Cluster(None)
            );
            let both = TargetEnv {
                default_lab_up: true,
                ..env
            };
            let e = choose(&args(None, false), &both).unwrap_err().to_string();
            assert!(e.contains("--kubeconfig") && e.contains("--lab"), "{e}");
        }
    }

    #[test]
    fn nothing_set_is_the_default_lab_as_before() {
        assert_eq!(
            choose(&args(None, false), &TargetEnv::default()).unwrap(),
            Target::Lab(DEFAULT_DIR.into())
        );
    }
}
