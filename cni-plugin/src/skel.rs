//! The plugin side of the CNI protocol: read the environment and stdin, check
//! the version gates, dispatch to a `Plugin`, print the result or the error.
//!
//! Both binaries (`mignet-macvlan`, `mignet-ipam`) run through here, and
//! macvlan calls our IPAM's `Plugin` impl in-process through the same trait.

use crate::error::CniResult;
use crate::types::CniOutput;
use std::path::PathBuf;

/// Everything a verb gets from the runtime, parsed once.
#[derive(Debug, Clone, Default)]
pub struct CmdArgs {
    pub container_id: String,
    /// `None` when CNI_NETNS is unset or empty (allowed for DEL, GC, STATUS).
    pub netns: Option<PathBuf>,
    pub ifname: String,
    /// CNI_ARGS as ordered `K=V` pairs (keys kept case-sensitive, like Go's LoadArgs).
    pub args: Vec<(String, String)>,
    /// CNI_PATH split on ':'.
    pub path: Vec<PathBuf>,
    /// The network config exactly as received on stdin.
    pub stdin: Vec<u8>,
}

impl CmdArgs {
    /// The value of a CNI_ARGS key, if present.
    pub fn arg(&self, key: &str) -> Option<&str> {
        self.args
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// One CNI plugin. Results are returned in the canonical 1.x shape; `skel`
/// converts them to the config's `cniVersion` before printing.
pub trait Plugin {
    fn add(&self, args: &CmdArgs) -> CniResult<CniOutput>;
    fn del(&self, args: &CmdArgs) -> CniResult<()>;
    fn check(&self, args: &CmdArgs) -> CniResult<()>;
    fn status(&self, args: &CmdArgs) -> CniResult<()>;
    fn gc(&self, args: &CmdArgs) -> CniResult<()>;
}
