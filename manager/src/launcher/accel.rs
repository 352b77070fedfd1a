//! KVM or TCG: the probe of /dev/kvm (I/O) and the choice (pure).

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

pub use mignet_dataplane::qemu::process::Accel;

/// What the probe found out about KVM on this node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KvmProbe {
    Usable,
    /// Why not, for the error message.
    Unusable(String),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AccelError {
    #[error("KVM is not usable on this node ({why}) and emulation is not allowed (useEmulation)")]
    NoKvmNoEmulation { why: String },
}

/// KVM when it works; TCG only when the VMI allows emulation (KubeVirt's
/// `useEmulation`), since TCG is an order of magnitude slower and a VMI
/// that did not ask for it should fail visibly rather than crawl.
pub fn choose_accel(kvm: KvmProbe, emulation_allowed: bool) -> Result<Accel, AccelError> {
    match kvm {
        KvmProbe::Usable => Ok(Accel::Kvm),
        KvmProbe::Unusable(_) if emulation_allowed => Ok(Accel::Tcg),
        KvmProbe::Unusable(why) => Err(AccelError::NoKvmNoEmulation { why }),
    }
}

const KVM_DEV: &str = "/dev/kvm";
/// `_IO(KVMIO, 0x00)` and `_IO(KVMIO, 0x01)` of <linux/kvm.h>.
const KVM_GET_API_VERSION: libc::c_ulong = 0xAE00;
const KVM_CREATE_VM: libc::c_ulong = 0xAE01;
/// The only KVM API version there has ever been.
const KVM_API_VERSION: libc::c_int = 12;

/// What the probe observed, judged by [`judge`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KvmFacts {
    /// `Err(reason)` when /dev/kvm could not be opened.
    pub open: Result<(), String>,
    pub api_version: Result<i32, String>,
    pub create_vm: Result<(), String>,
    /// The CPU flags line of /proc/cpuinfo.
    pub cpu_flags: String,
    /// Loaded KVM vendor modules (kvm_intel, kvm_amd, kvm_pvm, ...).
    pub modules: Vec<String>,
}

/// Usable only when /dev/kvm opens, speaks API 12, creates a VM, and the
/// CPU shows hardware virtualization (vmx or svm, what `kvm-ok` checks).
/// The last check matters: a /dev/kvm served by kvm_pvm (a KVM that runs on
/// machines without VMX/SVM, for PVM-aware guests only) passes
/// KVM_CREATE_VM, yet an ordinary guest under it hangs (qemu64) or aborts
/// QEMU (`-cpu host`: "failed to set MSR 0x10a").
pub fn judge(f: &KvmFacts) -> KvmProbe {
    if let Err(e) = &f.open {
        return KvmProbe::Unusable(format!("cannot open {KVM_DEV}: {e}"));
    }
    match &f.api_version {
        Err(e) => return KvmProbe::Unusable(format!("KVM_GET_API_VERSION failed: {e}")),
        Ok(v) if *v != KVM_API_VERSION => {
            return KvmProbe::Unusable(format!("KVM API version {v}, expected {KVM_API_VERSION}"))
        }
        Ok(_) => {}
    }
    if let Err(e) = &f.create_vm {
        return KvmProbe::Unusable(format!("KVM_CREATE_VM on {KVM_DEV} failed: {e}"));
    }
    let hw = f
        .cpu_flags
        .split_whitespace()
        .any(|flag| flag == "vmx" || flag == "svm");
    if !hw {
        let modules = if f.modules.is_empty() {
            "none found".to_string()
        } else {
            f.modules.join(", ")
        };
        return KvmProbe::Unusable(format!(
            "{KVM_DEV} creates VMs but the CPU has neither vmx nor svm in /proc/cpuinfo \
             (KVM modules: {modules}), so ordinary guests do not run under it"
        ));
    }
    KvmProbe::Usable
}

/// Really tries KVM on this node.
pub fn probe_kvm() -> KvmProbe {
    judge(&gather())
}

fn errno_string() -> String {
    std::io::Error::last_os_error().to_string()
}

fn gather() -> KvmFacts {
    let mut facts = KvmFacts {
        open: Ok(()),
        api_version: Err("not tried".into()),
        create_vm: Err("not tried".into()),
        cpu_flags: std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|c| {
                c.lines()
                    .find(|l| l.starts_with("flags"))
                    .map(|l| l.split_once(':').map_or("", |(_, v)| v).to_string())
            })
            .unwrap_or_default(),
        modules: ["kvm_intel", "kvm_amd", "kvm_pvm"]
            .into_iter()
            .filter(|m| std::path::Path::new("/sys/module").join(m).exists())
            .map(String::from)
            .collect(),
    };
    let kvm = match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(KVM_DEV)
    {
        Ok(f) => f,
        Err(e) => {
            facts.open = Err(e.to_string());
            return facts;
        }
    };
    // SAFETY: KVM_GET_API_VERSION takes no argument and only returns an
    // int; the fd is a valid open /dev/kvm for the whole call.
    let v = unsafe { libc::ioctl(kvm.as_raw_fd(), KVM_GET_API_VERSION, 0) };
    facts.api_version = if v < 0 { Err(errno_string()) } else { Ok(v) };
    // SAFETY: KVM_CREATE_VM takes the machine type (0 = default) by value
    // and returns a new fd, which we own and close at once.
    let vm = unsafe { libc::ioctl(kvm.as_raw_fd(), KVM_CREATE_VM, 0) };
    facts.create_vm = if vm < 0 {
        Err(errno_string())
    } else {
        // SAFETY: `vm` is a fresh fd returned by the kernel, owned by no one else.
        drop(unsafe { OwnedFd::from_raw_fd(vm) });
        Ok(())
    };
    facts
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts() -> KvmFacts {
        KvmFacts {
            open: Ok(()),
            api_version: Ok(12),
            create_vm: Ok(()),
            cpu_flags: "fpu vme de pse vmx sse".into(),
            modules: vec!["kvm_intel".into()],
        }
    }

    #[test]
    fn choice() {
        assert_eq!(choose_accel(KvmProbe::Usable, false), Ok(Accel::Kvm));
        assert_eq!(choose_accel(KvmProbe::Usable, true), Ok(Accel::Kvm));
        assert_eq!(
            choose_accel(KvmProbe::Unusable("x".into()), true),
            Ok(Accel::Tcg)
        );
        let e = choose_accel(
            KvmProbe::Unusable("cannot open /dev/kvm: gone".into()),
            false,
        )
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "KVM is not usable on this node (cannot open /dev/kvm: gone) and emulation is not allowed (useEmulation)"
        );
    }

    #[test]
    fn judge_each_failure() {
        assert_eq!(judge(&facts()), KvmProbe::Usable);
        let svm = KvmFacts {
            cpu_flags: "svm".into(),
            ..facts()
        };
        assert_eq!(judge(&svm), KvmProbe::Usable);
        let why = |f: KvmFacts| match judge(&f) {
            KvmProbe::Unusable(w) => w,
            KvmProbe::Usable => panic!("usable: {f:?}"),
        };
        assert!(why(KvmFacts {
            open: Err("No such file or directory (os error 2)".into()),
            ..facts()
        })
        .starts_with("cannot open /dev/kvm: No such file"));
        assert_eq!(
            why(KvmFacts {
                api_version: Ok(11),
                ..facts()
            }),
            "KVM API version 11, expected 12"
        );
        assert!(why(KvmFacts {
            create_vm: Err("Permission denied".into()),
            ..facts()
        })
        .contains("KVM_CREATE_VM on /dev/kvm failed: Permission denied"));
        // This lab machine: kvm_pvm, no vmx/svm ("vmxnet" is no vmx).
        let w = why(KvmFacts {
            cpu_flags: "fpu hypervisor vmxnet".into(),
            modules: vec!["kvm_pvm".into()],
            ..facts()
        });
        assert!(
            w.contains("neither vmx nor svm") && w.contains("kvm_pvm"),
            "{w}"
        );
    }
}
