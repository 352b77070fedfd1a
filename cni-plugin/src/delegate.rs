//! IPAM delegation (SPEC §4): run the plugin named by `ipam.type` with the
//! same environment and the same stdin, found in CNI_PATH; or, when the IPAM
//! is ours, call it in-process through the `Plugin` trait (no exec, no second
//! process start).

use crate::error::{CniError, CniResult, Code};
use crate::skel::{CmdArgs, Command, Plugin};
use crate::types::CniOutput;
use crate::version;
use std::io::Write;
use std::path::PathBuf;
use std::process::Stdio;

/// How one IPAM is reached.
pub enum Ipam {
    /// Our own IPAM, linked into this binary.
    InProcess(&'static dyn Plugin),
    /// Any other IPAM: exec `name` from CNI_PATH.
    Exec { name: String },
}

impl Ipam {
    /// `ipam.type` → how to call it. Names of our IPAM (and the whereabouts
    /// name it is installed under) run in-process.
    pub fn for_type(name: &str) -> CniResult<Ipam> {
        if name.is_empty() || name.contains('/') || name == "." || name == ".." {
            return Err(CniError::invalid_field(
                "ipam.type",
                name,
                "must be a plugin file name (no '/')",
            ));
        }
        Ok(match name {
            "whereabouts" | "mignet-ipam" => Ipam::InProcess(&crate::ipam::Whereabouts),
            _ => Ipam::Exec {
                name: name.to_string(),
            },
        })
    }

    pub fn name(&self) -> &str {
        match self {
            Ipam::InProcess(_) => "whereabouts",
            Ipam::Exec { name } => name,
        }
    }

    pub fn add(&self, args: &CmdArgs) -> CniResult<CniOutput> {
        match self {
            Ipam::InProcess(p) => p.add(args),
            Ipam::Exec { name } => {
                let out = exec(name, Command::Add, args)?;
                version::decode_result_bytes(&out).map_err(|e| CniError {
                    msg: format!(
                        "ipam plugin \"{name}\" returned an invalid result: {}",
                        e.msg
                    ),
                    ..e
                })
            }
        }
    }

    pub fn del(&self, args: &CmdArgs) -> CniResult<()> {
        self.simple(Command::Del, args)
    }
    pub fn check(&self, args: &CmdArgs) -> CniResult<()> {
        self.simple(Command::Check, args)
    }
    pub fn status(&self, args: &CmdArgs) -> CniResult<()> {
        self.simple(Command::Status, args)
    }
    pub fn gc(&self, args: &CmdArgs) -> CniResult<()> {
        self.simple(Command::Gc, args)
    }

    fn simple(&self, cmd: Command, args: &CmdArgs) -> CniResult<()> {
        match self {
            Ipam::InProcess(p) => match cmd {
                Command::Del => p.del(args),
                Command::Check => p.check(args),
                Command::Status => p.status(args),
                Command::Gc => p.gc(args),
                Command::Add | Command::Version => unreachable!("not a simple verb"),
            },
            Ipam::Exec { name } => exec(name, cmd, args).map(drop),
        }
    }
}

/// The first `name` in CNI_PATH that is a file.
pub fn find_in_path(name: &str, path: &[PathBuf]) -> CniResult<PathBuf> {
    path.iter()
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            CniError::new(
                Code::InvalidConfig,
                format!("invalid ipam.type \"{name}\": no such plugin in CNI_PATH"),
            )
            .with_details(format!("searched {path:?}"))
        })
}

/// Exec a delegate with the CNI environment rebuilt from `args` (so an
/// in-process caller without CNI_* in its environment works the same), feed
/// it our stdin, return its stdout or its CNI error.
pub fn exec(name: &str, cmd: Command, args: &CmdArgs) -> CniResult<Vec<u8>> {
    let bin = find_in_path(name, &args.path)?;
    let cni_args = args
        .args
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(";");
    let cni_path = std::env::join_paths(&args.path)
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut child = std::process::Command::new(&bin)
        .env("CNI_COMMAND", cmd.as_str())
        .env("CNI_CONTAINERID", &args.container_id)
        .env(
            "CNI_NETNS",
            args.netns
                .as_ref()
                .map(|p| p.as_os_str().to_owned())
                .unwrap_or_default(),
        )
        .env("CNI_IFNAME", &args.ifname)
        .env("CNI_ARGS", cni_args)
        .env("CNI_PATH", cni_path)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| CniError::io(format!("failed to start ipam plugin {}", bin.display()), e))?;
    // The config is small (well under a pipe buffer), so writing before
    // reading cannot deadlock; a delegate that exits early gives EPIPE, which
    // its exit status explains better.
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(&args.stdin);
    }
    let out = child
        .wait_with_output()
        .map_err(|e| CniError::io(format!("failed to wait for ipam plugin {name}"), e))?;
    if out.status.success() {
        // Its log lines are ours to pass on; the runtime shows plugin stderr.
        if !out.stderr.is_empty() {
            let _ = std::io::stderr().write_all(&out.stderr);
        }
        return Ok(out.stdout);
    }
    Err(delegate_error(
        name,
        cmd,
        &out.stdout,
        &out.stderr,
        out.status,
    ))
}

/// A failed delegate's CNI error JSON (stdout), else its stderr text.
fn delegate_error(
    name: &str,
    cmd: Command,
    stdout: &[u8],
    stderr: &[u8],
    status: std::process::ExitStatus,
) -> CniError {
    #[derive(serde::Deserialize)]
    struct ErrJson {
        code: u32,
        #[serde(default)]
        msg: String,
        #[serde(default)]
        details: String,
    }
    if let Ok(e) = serde_json::from_slice::<ErrJson>(stdout) {
        return CniError::new(
            Code::from_u32(e.code),
            format!("ipam plugin \"{name}\" {}: {}", cmd.as_str(), e.msg),
        )
        .with_details(e.details);
    }
    let text = String::from_utf8_lossy(if stderr.is_empty() { stdout } else { stderr });
    CniError::new(
        Code::Plugin(crate::error::plugin_codes::DELEGATE),
        format!("ipam plugin \"{name}\" {} failed ({status})", cmd.as_str()),
    )
    .with_details(text.trim().to_string())
}
