//! What a launcher runs (`LaunchSpec`, from the controller), its validation
//! and its translation into a QEMU command (`VmSpec`). All pure.

use std::path::{Path, PathBuf};

use mignet_dataplane::qemu::process::{Accel, Drive, DriveBus};
use mignet_dataplane::qemu::VmSpec;
use serde::{Deserialize, Serialize};

use super::request::{GuestBoot, VmRequest};

/// The launch spec, passed as JSON in `MIGNET_LAUNCH_SPEC`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LaunchSpec {
    /// The VM (`key` "ns/name", `memory_mib`, `vcpus`, `cpu_model`,
    /// `kernel_args`); written as `vm.json` once QEMU runs.
    pub request: VmRequest,
    pub boot: Boot,
    #[serde(default)]
    pub disks: Vec<DiskSpec>,
    /// KubeVirt's `useEmulation`: TCG is allowed when KVM is not usable.
    #[serde(default)]
    pub emulation_allowed: bool,
    /// Migration target: QEMU waits with `-incoming defer`.
    #[serde(default)]
    pub incoming: bool,
}

/// What the VM boots.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "camelCase")]
pub enum Boot {
    /// A kernel and initramfs (files inside the launcher pod), with the
    /// guest's command line plus `request.kernel_args`.
    Kernel { kernel: PathBuf, initrd: PathBuf },
    /// The first disk, through the firmware.
    Disk,
}

/// One raw disk image inside the pod.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DiskSpec {
    pub name: String,
    /// e.g. `/var/run/mignet/disks/rootdisk/disk.img`.
    pub path: PathBuf,
    /// `virtio`, `sata` or `scsi`.
    pub bus: String,
    #[serde(default)]
    pub read_only: bool,
}

/// A spec field that cannot be run, with the field's path and value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    #[error("launch spec is not valid JSON: {0}")]
    Json(String),
    #[error("no launch spec: set ${env} or pass --spec-json")]
    Missing { env: &'static str },
    #[error("{field}: {value} {reason}")]
    Field {
        field: String,
        /// The offending value as JSON (strings quoted).
        value: String,
        reason: String,
    },
}

const BUSES: [&str; 3] = ["virtio", "sata", "scsi"];

/// The AHCI controller has six ports.
const MAX_SATA: usize = 6;

fn field(field: impl Into<String>, value: impl Serialize, reason: impl Into<String>) -> SpecError {
    SpecError::Field {
        field: field.into(),
        value: serde_json::to_string(&value).unwrap_or_default(),
        reason: reason.into(),
    }
}

/// Parses the JSON of `MIGNET_LAUNCH_SPEC` / `--spec-json` (serde names the
/// field that does not fit).
pub fn parse(json: &str) -> Result<LaunchSpec, SpecError> {
    serde_json::from_str(json).map_err(|e| SpecError::Json(e.to_string()))
}

fn bus(name: &str) -> Option<DriveBus> {
    match name {
        "virtio" => Some(DriveBus::Virtio),
        "sata" => Some(DriveBus::Sata),
        "scsi" => Some(DriveBus::Scsi),
        _ => None,
    }
}

/// A name QEMU accepts inside an id and an option value.
fn is_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

impl LaunchSpec {
    /// Everything that can be checked without the filesystem; the first
    /// problem wins.
    pub fn validate(&self) -> Result<(), SpecError> {
        let r = &self.request;
        match r.key.split_once('/') {
            Some((ns, name)) if !ns.is_empty() && !name.is_empty() && !name.contains('/') => {}
            _ => return Err(field("request.key", &r.key, "is not \"namespace/name\"")),
        }
        if r.memory_mib == 0 {
            return Err(field("request.memory_mib", r.memory_mib, "must be > 0"));
        }
        if let Some(m) = r.cpu_model.as_deref() {
            // One model name: a comma would smuggle CPU flags into -cpu.
            if !m.is_empty()
                && !m
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
            {
                return Err(field(
                    "request.cpu_model",
                    m,
                    "is not a CPU model name ([A-Za-z0-9._-])",
                ));
            }
        }
        match &self.boot {
            Boot::Kernel { kernel, initrd } => {
                for (name, p) in [("boot.kernel", kernel), ("boot.initrd", initrd)] {
                    if !p.is_absolute() {
                        return Err(field(name, p, "is not an absolute path"));
                    }
                }
            }
            Boot::Disk => {
                if self.disks.is_empty() {
                    return Err(field(
                        "boot.type",
                        "disk",
                        "needs at least one disk (disks is empty)",
                    ));
                }
                if !r.kernel_args.is_empty() {
                    return Err(field(
                        "request.kernel_args",
                        &r.kernel_args,
                        "needs boot.type kernel (a disk boots its own kernel)",
                    ));
                }
            }
        }
        let mut sata = 0;
        for (i, d) in self.disks.iter().enumerate() {
            if !is_id(&d.name) {
                return Err(field(
                    format!("disks[{i}].name"),
                    &d.name,
                    "is not a disk name (1-63 of [A-Za-z0-9_-])",
                ));
            }
            if self.disks[..i].iter().any(|o| o.name == d.name) {
                return Err(field(format!("disks[{i}].name"), &d.name, "is used twice"));
            }
            if !d.path.is_absolute() {
                return Err(field(
                    format!("disks[{i}].path"),
                    &d.path,
                    "is not an absolute path",
                ));
            }
            let Some(b) = bus(&d.bus) else {
                return Err(field(
                    format!("disks[{i}].bus"),
                    &d.bus,
                    format!("is not supported ({})", BUSES.join(", ")),
                ));
            };
            if b == DriveBus::Sata {
                sata += 1;
                if d.read_only {
                    // QEMU's ide-hd refuses read-only images.
                    return Err(field(
                        format!("disks[{i}].readOnly"),
                        true,
                        "is not supported on bus sata (use virtio or scsi)",
                    ));
                }
                if sata > MAX_SATA {
                    return Err(field(
                        format!("disks[{i}].bus"),
                        &d.bus,
                        format!("exceeds the {MAX_SATA} SATA ports"),
                    ));
                }
            }
        }
        Ok(())
    }

    /// The files the spec names must exist in the pod (checked before QEMU
    /// runs, so the error names the field rather than QEMU's option).
    pub fn check_files(&self) -> Result<(), SpecError> {
        let mut files: Vec<(String, &Path)> = Vec::new();
        if let Boot::Kernel { kernel, initrd } = &self.boot {
            files.push(("boot.kernel".into(), kernel));
            files.push(("boot.initrd".into(), initrd));
        }
        for (i, d) in self.disks.iter().enumerate() {
            files.push((format!("disks[{i}].path"), &d.path));
        }
        for (name, p) in files {
            if let Err(e) = std::fs::metadata(p) {
                return Err(field(name, p, format!("cannot be used: {e}")));
            }
        }
        Ok(())
    }

    /// The QEMU command for this spec in `run_dir`, with `accel` chosen.
    /// Maps the CPU model like the agent's `VmRunner::spec` for TCG (the
    /// guest boot's default, `kvm64`, for unset / host-model /
    /// host-passthrough); with KVM those become `host`.
    pub fn vm_spec(&self, run_dir: &Path, accel: Accel, second_qmp: &Path) -> VmSpec {
        let req = &self.request;
        let (kernel, initrd) = match &self.boot {
            Boot::Kernel { kernel, initrd } => (kernel.clone(), initrd.clone()),
            Boot::Disk => (PathBuf::new(), PathBuf::new()),
        };
        let boot = GuestBoot::new(&kernel, &initrd);
        let mut spec = VmSpec::new(&req.key, run_dir, kernel, initrd);
        spec.qemu_binary = boot.qemu_binary.clone();
        spec.memory_mib = req.memory_mib;
        spec.vcpus = req.vcpus.max(1);
        let host_default = match accel {
            Accel::Kvm => "host".to_string(),
            Accel::Tcg => boot.default_cpu_model.clone(),
        };
        spec.cpu_model = match req.cpu_model.as_deref() {
            None | Some("") | Some("host-model") | Some("host-passthrough") => host_default,
            Some(m) => m.to_string(),
        };
        spec.cmdline = if req.kernel_args.is_empty() {
            boot.base_cmdline.clone()
        } else {
            format!("{} {}", boot.base_cmdline, req.kernel_args)
        };
        spec.kernel_boot = matches!(self.boot, Boot::Kernel { .. });
        spec.incoming_defer = self.incoming;
        spec.accel = accel;
        spec.daemonize = false;
        spec.second_qmp_socket = Some(second_qmp.to_path_buf());
        spec.drives = self
            .disks
            .iter()
            .enumerate()
            .map(|(i, d)| Drive {
                id: d.name.clone(),
                path: d.path.clone(),
                // validate() ran first; virtio is never reached for a bad bus.
                bus: bus(&d.bus).unwrap_or(DriveBus::Virtio),
                read_only: d.read_only,
                boot: i == 0 && self.boot == Boot::Disk,
            })
            .collect();
        spec
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn kernel_spec() -> LaunchSpec {
        LaunchSpec {
            request: VmRequest {
                key: "default/vm1".into(),
                memory_mib: 256,
                vcpus: 1,
                cpu_model: None,
                kernel_args: String::new(),
            },
            boot: Boot::Kernel {
                kernel: "/g/vmlinuz".into(),
                initrd: "/g/initramfs.img".into(),
            },
            disks: vec![],
            emulation_allowed: true,
            incoming: false,
        }
    }

    fn disk(name: &str, bus: &str) -> DiskSpec {
        DiskSpec {
            name: name.into(),
            path: format!("/var/run/mignet/disks/{name}/disk.img").into(),
            bus: bus.into(),
            read_only: false,
        }
    }

    fn err(s: &LaunchSpec) -> String {
        s.validate().unwrap_err().to_string()
    }

    #[test]
    fn json_shape_matches_the_contract() {
        let s = parse(
            r#"{"request":{"key":"ns/vm","memory_mib":128,"vcpus":2,"cpu_model":null,"kernel_args":"x=1"},
                "boot":{"type":"kernel","kernel":"/k","initrd":"/i"},
                "disks":[{"name":"d","path":"/d.img","bus":"scsi","readOnly":true}],
                "emulationAllowed":true,"incoming":true}"#,
        )
        .unwrap();
        assert!(s.emulation_allowed && s.incoming && s.disks[0].read_only);
        let d = parse(r#"{"request":{"key":"ns/vm","memory_mib":128,"vcpus":1,"cpu_model":null},"boot":{"type":"disk"}}"#).unwrap();
        assert_eq!(d.boot, Boot::Disk);
        assert!(!d.emulation_allowed && !d.incoming && d.disks.is_empty());
        let back: serde_json::Value = serde_json::to_value(&s).unwrap();
        assert_eq!(back["boot"]["type"], "kernel");
        assert_eq!(back["emulationAllowed"], true);
        assert!(parse("{}").unwrap_err().to_string().contains("request"));
    }

    #[test]
    fn valid_specs_pass() {
        kernel_spec().validate().unwrap();
        let mut s = kernel_spec();
        s.boot = Boot::Disk;
        s.disks = vec![
            disk("root", "virtio"),
            disk("data", "sata"),
            disk("x", "scsi"),
        ];
        s.validate().unwrap();
    }

    #[test]
    fn errors_name_field_and_value() {
        let mut s = kernel_spec();
        s.disks = vec![disk("root", "virtio"), disk("d", "ide")];
        assert_eq!(
            err(&s),
            r#"disks[1].bus: "ide" is not supported (virtio, sata, scsi)"#
        );
        s.disks = vec![disk("root", "virtio"), disk("root", "virtio")];
        assert_eq!(err(&s), r#"disks[1].name: "root" is used twice"#);
        s.disks = vec![disk("a b", "virtio")];
        assert!(err(&s).starts_with(r#"disks[0].name: "a b" is not"#));
        s.disks = vec![DiskSpec {
            path: "rel.img".into(),
            ..disk("a", "virtio")
        }];
        assert_eq!(
            err(&s),
            r#"disks[0].path: "rel.img" is not an absolute path"#
        );
        s.disks = vec![DiskSpec {
            read_only: true,
            ..disk("a", "sata")
        }];
        assert!(err(&s).starts_with("disks[0].readOnly: true is not supported on bus sata"));
        s.disks = (0..7).map(|i| disk(&format!("s{i}"), "sata")).collect();
        assert!(err(&s).starts_with(r#"disks[6].bus: "sata" exceeds"#));

        let mut s = kernel_spec();
        s.request.key = "novm".into();
        assert_eq!(err(&s), r#"request.key: "novm" is not "namespace/name""#);
        let mut s = kernel_spec();
        s.request.memory_mib = 0;
        assert_eq!(err(&s), "request.memory_mib: 0 must be > 0");
        let mut s = kernel_spec();
        s.request.cpu_model = Some("qemu64,+vmx".into());
        assert!(err(&s).starts_with(r#"request.cpu_model: "qemu64,+vmx""#));
        let mut s = kernel_spec();
        s.boot = Boot::Kernel {
            kernel: "vmlinuz".into(),
            initrd: "/i".into(),
        };
        assert_eq!(err(&s), r#"boot.kernel: "vmlinuz" is not an absolute path"#);
        let mut s = kernel_spec();
        s.boot = Boot::Disk;
        assert!(err(&s).starts_with(r#"boot.type: "disk" needs at least one disk"#));
        s.disks = vec![disk("root", "virtio")];
        s.request.kernel_args = "a=1".into();
        assert!(err(&s).starts_with(r#"request.kernel_args: "a=1" needs boot.type kernel"#));
    }

    #[test]
    fn missing_files_name_the_field() {
        let mut s = kernel_spec();
        s.boot = Boot::Kernel {
            kernel: "/proc/self/stat".into(),
            initrd: "/nonexistent/initrd".into(),
        };
        let e = s.check_files().unwrap_err().to_string();
        assert!(
            e.starts_with(r#"boot.initrd: "/nonexistent/initrd" cannot be used"#),
            "{e}"
        );
    }

    #[test]
    fn vm_spec_maps_cpu_accel_boot_and_disks() {
        let dir = Path::new("/var/run/mignet/vms/default_p");
        let sock = dir.join("launcher-qmp.sock");
        let mut s = kernel_spec();
        s.request.kernel_args = "mignet.fill_mib=8".into();
        s.request.vcpus = 0;
        s.incoming = true;
        let v = s.vm_spec(dir, Accel::Tcg, &sock);
        assert_eq!(
            (v.cpu_model.as_str(), v.vcpus, v.accel, v.daemonize),
            ("kvm64", 1, Accel::Tcg, false)
        );
        assert!(v.kernel_boot && v.incoming_defer);
        assert_eq!(v.cmdline, "console=ttyS0 quiet panic=-1 mignet.fill_mib=8");
        assert_eq!(v.second_qmp_socket.as_deref(), Some(sock.as_path()));
        assert_eq!(v.qmp_socket(), dir.join("qmp.sock"));
        assert_eq!(v.name, "default/vm1");
        s.request.cpu_model = Some("host-passthrough".into());
        assert_eq!(s.vm_spec(dir, Accel::Kvm, &sock).cpu_model, "host");
        s.request.cpu_model = Some("Haswell".into());
        assert_eq!(s.vm_spec(dir, Accel::Kvm, &sock).cpu_model, "Haswell");

        let mut s = kernel_spec();
        s.boot = Boot::Disk;
        s.disks = vec![disk("root", "scsi"), disk("data", "virtio")];
        let v = s.vm_spec(dir, Accel::Tcg, &sock);
        assert!(!v.kernel_boot);
        assert_eq!(v.drives.len(), 2);
        assert!(v.drives[0].boot && !v.drives[1].boot);
        assert_eq!(v.drives[0].bus, DriveBus::Scsi);
        let argv: Vec<String> = v
            .command_line()
            .into_iter()
            .map(|a| a.into_string().unwrap())
            .collect();
        assert!(!argv.contains(&"-kernel".to_string()));
        assert!(!argv.contains(&"-daemonize".to_string()));
        assert!(argv.contains(
            &"scsi-hd,drive=drive-root,id=disk-root,bus=scsi0.0,bootindex=0".to_string()
        ));
        // Kernel boot with a disk: the disk is not the boot device.
        let mut s = kernel_spec();
        s.disks = vec![disk("data", "virtio")];
        assert!(!s.vm_spec(dir, Accel::Tcg, &sock).drives[0].boot);
    }
}
