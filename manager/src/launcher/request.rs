//! What a launcher runs: the [`VmRequest`] derived from a VMI spec (the
//! controller puts it in the launch spec, the agent compares it), the boot
//! image every VM starts from ([`GuestBoot`]), and the request's record in
//! the run directory (`vm.json`), which the launcher writes and the agent
//! reads. Here, not in the agent, because the launcher, the controller and
//! the agent all use it and the agent already depends on the launcher.

use std::path::{Path, PathBuf};

use kube::ResourceExt;
use serde::{Deserialize, Serialize};

use crate::api::VirtualMachineInstance;

/// VMI annotation with extra kernel arguments for the lab's test guest
/// (its memory workload); ignored by anything but the lab image.
pub const GUEST_ARGS_ANNOTATION: &str = "mignet.io/guest-kernel-args";

/// Name of the file that records what a run directory holds.
pub const RECORD_FILE: &str = "vm.json";

/// The CPU model `host-model` becomes under TCG (which has no host model):
/// what the launcher runs and what the agent labels its node with.
///
/// Not `qemu64`, QEMU's own default: its vendor is AuthenticAMD, and under
/// Debian's QEMU 7.2 TCG a guest with that vendor loses memory writes made
/// during a multi-pass precopy. After the switch-over the guest on the
/// target dies, usually in an hrtimer callback that jumps into a stale
/// page, or it hangs. Only the CPU model and vendor changed between these
/// runs. The guest was 128 MiB with 24 MiB filled, re-dirtying 1 MiB/s,
/// bandwidth capped at 32 MiB/s, plain QEMU with no mignet in the path:
/// - qemu64 crashed the target guest 11 times in 11;
/// - `qemu64,vendor=GenuineIntel` was fine 3 times in 3;
/// - kvm64, Nehalem and max were fine 9, 2 and 4 times;
/// - kvm64 with multifd, 4 MiB/s dirtying or an 8 MiB/s cap: 6 times in 6.
///
/// kvm64 is the same generic 64-bit model with an Intel vendor.
pub const TCG_HOST_MODEL: &str = "kvm64";

/// Kernel and initramfs every VM boots (the lab's guest image).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestBoot {
    pub qemu_binary: PathBuf,
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    /// Kernel command line before the VM's own arguments.
    pub base_cmdline: String,
    /// CPU model used for `host-model` / unset (TCG has no host model).
    pub default_cpu_model: String,
}

impl GuestBoot {
    pub fn new(kernel: impl Into<PathBuf>, initrd: impl Into<PathBuf>) -> Self {
        GuestBoot {
            qemu_binary: PathBuf::from("qemu-system-x86_64"),
            kernel: kernel.into(),
            initrd: initrd.into(),
            base_cmdline: "console=ttyS0 quiet panic=-1".into(),
            default_cpu_model: TCG_HOST_MODEL.into(),
        }
    }
}

/// What to run, derived from a VMI spec (no Kubernetes types here).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmRequest {
    /// `namespace/name` of the VMI.
    pub key: String,
    pub memory_mib: u64,
    pub vcpus: u32,
    /// `None`, `host-model` or `host-passthrough` take the boot default.
    pub cpu_model: Option<String>,
    /// Appended to the kernel command line (the test guest's workload knobs).
    #[serde(default)]
    pub kernel_args: String,
}

impl VmRequest {
    pub fn memory_bytes(&self) -> u64 {
        self.memory_mib << 20
    }
}

/// Write `vm.json` atomically (a temp file renamed over it): a reader sees
/// the old record or the new one, never half of one.
pub fn write_record(dir: &Path, req: &VmRequest) -> std::io::Result<()> {
    let path = dir.join(RECORD_FILE);
    let bytes = serde_json::to_vec_pretty(req).unwrap_or_default();
    let tmp = dir.join(format!("{RECORD_FILE}.tmp"));
    std::fs::write(&tmp, bytes).and_then(|()| std::fs::rename(&tmp, &path))
}

pub fn read_record(dir: &Path) -> Option<VmRequest> {
    let bytes = std::fs::read(dir.join(RECORD_FILE)).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// The VM to run for a VMI spec.
pub fn vm_request(vmi: &VirtualMachineInstance) -> VmRequest {
    let d = &vmi.spec.domain;
    let memory = d
        .memory
        .as_ref()
        .and_then(|m| m.guest.as_ref())
        .or_else(|| d.resources.as_ref().and_then(|r| r.requests.get("memory")))
        .and_then(|q| crate::config::parse_quantity("memory", q).ok())
        .unwrap_or(256 << 20);
    let cpu = d.cpu.as_ref();
    let vcpus = cpu.map_or(1, |c| {
        c.cores.unwrap_or(1) * c.sockets.unwrap_or(1) * c.threads.unwrap_or(1)
    });
    VmRequest {
        key: format!("{}/{}", vmi.namespace().unwrap_or_default(), vmi.name_any()),
        memory_mib: (memory >> 20).max(16),
        vcpus: vcpus.max(1),
        cpu_model: cpu.and_then(|c| c.model.clone()),
        kernel_args: vmi
            .annotations()
            .get(GUEST_ARGS_ANNOTATION)
            .cloned()
            .unwrap_or_default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{Cpu, DomainSpec, Memory, VirtualMachineInstanceSpec};

    #[test]
    fn vm_request_from_vmi_spec() {
        let mut vmi = VirtualMachineInstance::new(
            "vm1",
            VirtualMachineInstanceSpec {
                domain: DomainSpec {
                    cpu: Some(Cpu {
                        model: Some("host-model".into()),
                        cores: Some(2),
                        ..Default::default()
                    }),
                    memory: Some(Memory {
                        guest: Some("1Gi".into()),
                    }),
                    resources: None,
                    ..Default::default()
                },
                ..Default::default()
            },
        );
        vmi.metadata.namespace = Some("default".into());
        vmi.annotations_mut()
            .insert(GUEST_ARGS_ANNOTATION.into(), "mignet.fill_mib=8".into());
        let r = vm_request(&vmi);
        assert_eq!(r.key, "default/vm1");
        assert_eq!((r.memory_mib, r.vcpus), (1024, 2));
        assert_eq!(r.cpu_model.as_deref(), Some("host-model"));
        assert_eq!(r.kernel_args, "mignet.fill_mib=8");
    }
}
