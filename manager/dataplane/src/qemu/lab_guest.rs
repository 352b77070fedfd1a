//! The lab's guest: the kernel and initramfs `tests/guest/build.sh` builds
//! (the guest the lab's VMs boot, and the one tests and benchmarks use), and
//! the `tick N` lines it prints on its serial console, by which the lab and
//! the tests tell that a guest kept running across a migration. Production
//! code (the lab daemon, the demo) uses this; `testbed` re-exports it.

use std::path::{Path, PathBuf};

use super::process::VmSpec;

/// The test guest's kernel and initramfs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestImage {
    pub kernel: PathBuf,
    pub initrd: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum GuestImageError {
    #[error("guest image build script {script:?} failed: {detail}")]
    Build { script: PathBuf, detail: String },
}

impl GuestImage {
    /// The cache directory `tests/guest/build.sh` writes to.
    pub fn cache_dir() -> PathBuf {
        let base = std::env::var_os("MIGNET_CACHE")
            .map(PathBuf::from)
            .unwrap_or_else(|| {
                let home = std::env::var_os("HOME").unwrap_or_else(|| "/root".into());
                PathBuf::from(home).join(".cache/mignet")
            });
        base.join("guest")
    }

    /// Returns the guest image, running `tests/guest/build.sh` first (it is
    /// fast when everything is already built).
    pub fn ensure() -> Result<GuestImage, GuestImageError> {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/guest/build.sh");
        let out = std::process::Command::new("bash")
            .arg(&script)
            .output()
            .map_err(|e| GuestImageError::Build {
                script: script.clone(),
                detail: e.to_string(),
            })?;
        if !out.status.success() {
            return Err(GuestImageError::Build {
                script,
                detail: format!(
                    "{}: {}",
                    out.status,
                    String::from_utf8_lossy(&out.stderr).trim()
                ),
            });
        }
        let dir = GuestImage::cache_dir();
        Ok(GuestImage {
            kernel: dir.join("vmlinuz"),
            initrd: dir.join("initramfs.img"),
        })
    }

    /// A VM spec for this guest. `fill_mib`/`dirty_mib_s` drive the guest's
    /// memory workload (see `tests/guest/build.sh`).
    pub fn vm_spec(
        &self,
        name: &str,
        run_dir: &Path,
        memory_mib: u64,
        fill_mib: u64,
        dirty_mib_s: u64,
    ) -> VmSpec {
        let mut spec = VmSpec::new(name, run_dir, &self.kernel, &self.initrd);
        spec.memory_mib = memory_mib;
        spec.cmdline = format!(
            "console=ttyS0 quiet panic=-1 mignet.fill_mib={fill_mib} mignet.dirty_mib_s={dirty_mib_s}"
        );
        spec
    }
}

/// All `tick N` numbers on a serial console, in order.
pub fn ticks(serial: &str) -> Vec<u64> {
    serial
        .lines()
        .filter_map(|l| l.trim().strip_prefix("tick "))
        .filter_map(|n| n.trim().parse().ok())
        .collect()
}
