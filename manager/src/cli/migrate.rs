//! `mignet migrate VM` and `mignet migrate-cancel VM`, virtctl's verbs with
//! virtctl's outputs, over any [`Backend`] (the lab store or a cluster).

use crate::api::{
    MigrationPhase, VirtualMachine, VirtualMachineInstance, VirtualMachineInstanceMigration,
    VirtualMachineInstanceMigrationSpec, VmiPhase,
};
use crate::backend::{Backend, BackendError};

use super::CliError;

/// The `generateName` `virtctl migrate` gives its VMIMs.
pub const VMIM_PREFIX: &str = "kubevirt-migrate-vm-";

/// Why `name` in `ns` cannot be migrated, from what was read; `None` = it can.
pub fn refuse_migrate(
    ns: &str,
    name: &str,
    vmi: Option<&VirtualMachineInstance>,
    vm_exists: bool,
) -> Option<String> {
    match vmi {
        None if vm_exists => Some(format!(
            "VirtualMachine {name} in namespace {ns} is not running (no VirtualMachineInstance)"
        )),
        None => Some(format!("VirtualMachine {name} not found in namespace {ns}")),
        Some(vmi) => {
            let phase = vmi.status.as_ref().and_then(|s| s.phase);
            (phase != Some(VmiPhase::Running)).then(|| {
                format!(
                    "VirtualMachineInstance {name} in namespace {ns} is not running (phase {})",
                    phase.map_or("unset".to_owned(), |p| format!("{p:?}"))
                )
            })
        }
    }
}

/// The VMIM `migrate-cancel` deletes: virtctl's choice, the first of `name`'s
/// migrations that is not final (there is at most one in practice).
pub fn to_cancel<'a>(
    vmims: &'a [VirtualMachineInstanceMigration],
    name: &str,
) -> Option<&'a VirtualMachineInstanceMigration> {
    vmims.iter().find(|m| {
        m.spec.vmi_name == name
            && !matches!(
                m.status.as_ref().and_then(|s| s.phase),
                Some(MigrationPhase::Succeeded | MigrationPhase::Failed)
            )
    })
}

/// Five characters of the Kubernetes name-suffix alphabet. The API server
/// would make them from `generateName`; the lab store does not, so the CLI
/// names the object itself (and still records `generateName`).
fn name_suffix() -> Result<String, CliError> {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let hex = crate::console::auth::random_hex().map_err(|e| CliError::Failed(e.to_string()))?;
    Ok(hex
        .as_bytes()
        .chunks(2)
        .take(5)
        .map(|c| {
            let v = std::str::from_utf8(c)
                .ok()
                .and_then(|s| u8::from_str_radix(s, 16).ok())
                .unwrap_or(0);
            ALPHABET[v as usize % ALPHABET.len()] as char
        })
        .collect())
}

fn backend_error(e: BackendError) -> CliError {
    CliError::Failed(e.to_string())
}

/// Create the migration of `name`: `VM <name> was scheduled to migrate`.
pub async fn migrate<B: Backend>(b: &B, ns: &str, name: &str) -> Result<String, CliError> {
    let vmi: Option<VirtualMachineInstance> = b.get(ns, name).await.map_err(backend_error)?;
    let vm_exists = match vmi {
        Some(_) => true,
        None => b
            .get::<VirtualMachine>(ns, name)
            .await
            .map_err(backend_error)?
            .is_some(),
    };
    if let Some(why) = refuse_migrate(ns, name, vmi.as_ref(), vm_exists) {
        return Err(CliError::Failed(why));
    }
    for _ in 0..5 {
        let mut m = VirtualMachineInstanceMigration::new(
            &format!("{VMIM_PREFIX}{}", name_suffix()?),
            VirtualMachineInstanceMigrationSpec {
                vmi_name: name.to_owned(),
            },
        );
        m.metadata.namespace = Some(ns.to_owned());
        m.metadata.generate_name = Some(VMIM_PREFIX.to_owned());
        match b.create(&m).await {
            Ok(_) => return Ok(format!("VM {name} was scheduled to migrate\n")),
            Err(BackendError::AlreadyExists { .. }) => continue,
            Err(e) => {
                return Err(CliError::Failed(format!(
                    "Error migrating VirtualMachine {name} in namespace {ns}: {e}"
                )))
            }
        }
    }
    Err(CliError::Failed(format!(
        "Error migrating VirtualMachine {name} in namespace {ns}: no free migration name, try again"
    )))
}

/// Delete `name`'s unfinished migration: `VM <name> was scheduled to
/// migrate-cancel`, or virtctl's `Found no migration to cancel for <name>`.
pub async fn migrate_cancel<B: Backend>(b: &B, ns: &str, name: &str) -> Result<String, CliError> {
    let vmims: Vec<VirtualMachineInstanceMigration> =
        b.list(Some(ns)).await.map_err(backend_error)?;
    let Some(m) = to_cancel(&vmims, name) else {
        return Err(CliError::Failed(format!(
            "Found no migration to cancel for {name}"
        )));
    };
    let vmim = m.metadata.name.clone().unwrap_or_default();
    match b.delete::<VirtualMachineInstanceMigration>(ns, &vmim).await {
        // Gone meanwhile: it finished or someone else cancelled it; either
        // way nothing is left to cancel, as virtctl would find on a re-list.
        Err(BackendError::NotFound { .. }) => Err(CliError::Failed(format!(
            "Found no migration to cancel for {name}"
        ))),
        Err(e) => Err(CliError::Failed(format!(
            "Error canceling migration {vmim} of a VirtualMachine {name}: {e}"
        ))),
        Ok(()) => Ok(format!("VM {name} was scheduled to migrate-cancel\n")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{VirtualMachineInstanceMigrationStatus, VirtualMachineInstanceStatus};

    fn vmim(
        name: &str,
        vmi: &str,
        phase: Option<MigrationPhase>,
    ) -> VirtualMachineInstanceMigration {
        let mut m = VirtualMachineInstanceMigration::new(
            name,
            VirtualMachineInstanceMigrationSpec {
                vmi_name: vmi.into(),
            },
        );
        m.status = Some(VirtualMachineInstanceMigrationStatus {
            phase,
            ..Default::default()
        });
        m
    }

    #[test]
    fn cancel_picks_the_unfinished_migration_of_that_vm() {
        let all = [
            vmim("old", "fedora", Some(MigrationPhase::Succeeded)),
            vmim("other", "rhel", Some(MigrationPhase::Running)),
            vmim("failed", "fedora", Some(MigrationPhase::Failed)),
            vmim("now", "fedora", Some(MigrationPhase::Running)),
        ];
        assert_eq!(
            to_cancel(&all, "fedora").and_then(|m| m.metadata.name.as_deref()),
            Some("now")
        );
        assert!(to_cancel(&all[..3], "fedora").is_none());
        // Not yet admitted (no phase) is unfinished too.
        let new = [vmim("new", "fedora", None)];
        assert!(to_cancel(&new, "fedora").is_some());
    }

    #[test]
    fn migrate_refusals_name_the_vm_and_namespace() {
        let e = refuse_migrate("prod", "fedora", None, false).unwrap();
        assert_eq!(e, "VirtualMachine fedora not found in namespace prod");
        let e = refuse_migrate("prod", "fedora", None, true).unwrap();
        assert!(e.contains("fedora") && e.contains("prod") && e.contains("not running"));
        let mut vmi = VirtualMachineInstance::new("fedora", Default::default());
        vmi.status = Some(VirtualMachineInstanceStatus {
            phase: Some(VmiPhase::Scheduling),
            ..Default::default()
        });
        let e = refuse_migrate("prod", "fedora", Some(&vmi), true).unwrap();
        assert!(e.contains("Scheduling") && e.contains("prod"), "{e}");
        vmi.status.as_mut().unwrap().phase = Some(VmiPhase::Running);
        assert_eq!(refuse_migrate("prod", "fedora", Some(&vmi), true), None);
    }
}
