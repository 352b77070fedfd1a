//! The plugin side of the CNI protocol: read the environment and stdin, check
//! the version gates, dispatch to a `Plugin`, print the result or the error.
//!
//! Both binaries (`mignet-macvlan`, `mignet-ipam`) run through here, and
//! macvlan calls our IPAM's `Plugin` impl in-process through the same trait.
//!
//! Kept deliberately light: no async runtime, no regex, one read of stdin and
//! one write to stdout, so a whole ADD costs about a process start.

use crate::error::{CniError, CniResult, Code};
use crate::types::CniOutput;
use crate::version;
use std::io::{Read, Write};
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

/// Every version we accept in a config and can print a result in.
pub const SUPPORTED_VERSIONS: &[&str] = &[
    "0.1.0", "0.2.0", "0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0",
];

/// The version we speak natively (VERSION's `cniVersion`, error JSON fallback).
pub const CURRENT_VERSION: &str = "1.1.0";

/// The CNI verbs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Add,
    Del,
    Check,
    Status,
    Gc,
    Version,
}

impl Command {
    pub fn parse(s: &str) -> Option<Command> {
        Some(match s {
            "ADD" => Command::Add,
            "DEL" => Command::Del,
            "CHECK" => Command::Check,
            "STATUS" => Command::Status,
            "GC" => Command::Gc,
            "VERSION" => Command::Version,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Command::Add => "ADD",
            Command::Del => "DEL",
            Command::Check => "CHECK",
            Command::Status => "STATUS",
            Command::Gc => "GC",
            Command::Version => "VERSION",
        }
    }
}

/// What one invocation prints and how it exits; `run` does the actual I/O.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub exit_code: i32,
}

/// Run `plugin` as a CNI plugin process: read env + stdin, print, exit.
pub fn run(plugin: &dyn Plugin, about: &str) -> ! {
    let env = |k: &str| std::env::var(k).ok();
    let mut stdin = Vec::new();
    // A failed read leaves an empty config, which the decoder reports as code 6.
    let read = std::io::stdin().read_to_end(&mut stdin);
    let outcome = match read {
        Ok(_) => dispatch(plugin, about, &env, stdin),
        Err(e) => error_outcome(CURRENT_VERSION, &CniError::io("reading stdin", e)),
    };
    let _ = std::io::stdout().write_all(&outcome.stdout);
    let _ = std::io::stdout().flush();
    if !outcome.stderr.is_empty() {
        let _ = std::io::stderr().write_all(&outcome.stderr);
    }
    std::process::exit(outcome.exit_code)
}

/// The whole protocol handling without process I/O, so it is unit-testable.
pub fn dispatch(
    plugin: &dyn Plugin,
    about: &str,
    env: &dyn Fn(&str) -> Option<String>,
    stdin: Vec<u8>,
) -> Outcome {
    // Until the config is decoded we answer in our own version.
    let command = match env("CNI_COMMAND").filter(|s| !s.is_empty()) {
        Some(c) => c,
        None => {
            // skel prints "about" and exits 0 here; a runtime that forgot the
            // verb deserves a CNI error instead, but a human gets the banner too.
            let mut out = error_outcome(
                CURRENT_VERSION,
                &CniError::env("CNI_COMMAND", "required environment variable is not set"),
            );
            out.stderr = format!("{about}\n").into_bytes();
            return out;
        }
    };
    let Some(command) = Command::parse(&command) else {
        return error_outcome(
            CURRENT_VERSION,
            &CniError::env(
                "CNI_COMMAND",
                format!(
                    "unknown command \"{command}\" (expected ADD, DEL, CHECK, STATUS, GC or VERSION)"
                ),
            ),
        );
    };
    if command == Command::Version {
        return Outcome {
            stdout: version_reply().into_bytes(),
            stderr: Vec::new(),
            exit_code: 0,
        };
    }

    let args = match args_from_env(command, env, stdin) {
        Ok(a) => a,
        Err(e) => return error_outcome(CURRENT_VERSION, &e),
    };
    let config_version = match config_version(&args.stdin) {
        Ok(v) => v,
        Err(e) => return error_outcome(CURRENT_VERSION, &e),
    };
    if let Err(e) = check_version_gate(command, &config_version) {
        return error_outcome(CURRENT_VERSION, &e);
    }
    if let Err(e) = check_not_own_netns(command, &args, env) {
        return error_outcome(&config_version, &e);
    }

    let result = match command {
        Command::Add => plugin.add(&args).and_then(|out| {
            let v = version::encode_result(&out, &config_version)?;
            Ok(serde_json::to_vec(&v).expect("a JSON value always serializes"))
        }),
        Command::Del => plugin.del(&args).map(|()| Vec::new()),
        Command::Check => plugin.check(&args).map(|()| Vec::new()),
        Command::Status => plugin.status(&args).map(|()| Vec::new()),
        Command::Gc => plugin.gc(&args).map(|()| Vec::new()),
        Command::Version => unreachable!("answered above"),
    };
    match result {
        Ok(stdout) => Outcome {
            stdout,
            stderr: Vec::new(),
            exit_code: 0,
        },
        Err(e) => error_outcome(&config_version, &e),
    }
}

/// `{"cniVersion":"1.1.0","supportedVersions":[...]}`.
pub fn version_reply() -> String {
    serde_json::json!({
        "cniVersion": CURRENT_VERSION,
        "supportedVersions": SUPPORTED_VERSIONS,
    })
    .to_string()
}

fn error_outcome(cni_version: &str, e: &CniError) -> Outcome {
    // A version we do not support would only confuse the runtime's decoder.
    let v = if SUPPORTED_VERSIONS.contains(&cni_version) {
        cni_version
    } else {
        CURRENT_VERSION
    };
    Outcome {
        stdout: serde_json::to_vec(&e.to_json(v)).expect("a JSON value always serializes"),
        stderr: Vec::new(),
        exit_code: 1,
    }
}

/// Parse the CNI_* variables with skel's rules: which are required per verb,
/// the container-id pattern and the interface-name rules.
pub fn args_from_env(
    command: Command,
    env: &dyn Fn(&str) -> Option<String>,
    stdin: Vec<u8>,
) -> CniResult<CmdArgs> {
    let get = |k: &str| env(k).filter(|s| !s.is_empty());
    let (need_cid, need_netns, need_ifname, need_path) = match command {
        Command::Add | Command::Check => (true, true, true, true),
        Command::Del => (true, false, true, true),
        Command::Gc => (false, false, false, true),
        // The spec makes CNI_PATH optional for STATUS (skel is stricter).
        Command::Status | Command::Version => (false, false, false, false),
    };
    let mut missing = Vec::new();
    for (var, needed) in [
        ("CNI_CONTAINERID", need_cid),
        ("CNI_NETNS", need_netns),
        ("CNI_IFNAME", need_ifname),
        ("CNI_PATH", need_path),
    ] {
        if needed && get(var).is_none() {
            missing.push(var);
        }
    }
    if !missing.is_empty() {
        return Err(CniError::new(
            Code::InvalidEnvironment,
            format!(
                "required environment variable{} not set: {}",
                if missing.len() == 1 { " is" } else { "s are" },
                missing.join(", ")
            ),
        )
        .with_details(format!("CNI_COMMAND={}", command.as_str())));
    }

    let container_id = get("CNI_CONTAINERID").unwrap_or_default();
    if !container_id.is_empty() {
        validate_container_id(&container_id)?;
    }
    let ifname = get("CNI_IFNAME").unwrap_or_default();
    if !ifname.is_empty() {
        validate_ifname(&ifname)?;
    }
    let args = parse_cni_args(&get("CNI_ARGS").unwrap_or_default())?;
    let path = get("CNI_PATH")
        .map(|p| {
            p.split(':')
                .filter(|s| !s.is_empty())
                .map(PathBuf::from)
                .collect()
        })
        .unwrap_or_default();
    Ok(CmdArgs {
        container_id,
        netns: get("CNI_NETNS").map(PathBuf::from),
        ifname,
        args,
        path,
        stdin,
    })
}

/// `^[a-zA-Z0-9][a-zA-Z0-9_.\-]*$`, checked by hand (no regex crate at startup).
pub fn validate_container_id(id: &str) -> CniResult<()> {
    let mut chars = id.chars();
    let first_ok = chars.next().is_some_and(|c| c.is_ascii_alphanumeric());
    let rest_ok = chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if first_ok && rest_ok {
        Ok(())
    } else {
        Err(CniError::env(
            "CNI_CONTAINERID",
            format!("invalid container id \"{id}\": must match ^[a-zA-Z0-9][a-zA-Z0-9_.\\-]*$"),
        ))
    }
}

/// Linux interface names: 1-15 bytes, not `.`/`..`, no `/`, `:` or whitespace.
pub fn validate_ifname(name: &str) -> CniResult<()> {
    let why = if name.is_empty() {
        Some("is empty")
    } else if name.len() > 15 {
        Some("is longer than 15 bytes")
    } else if name == "." || name == ".." {
        Some("must not be \".\" or \"..\"")
    } else if name
        .chars()
        .any(|c| c == '/' || c == ':' || c.is_whitespace())
    {
        Some("must not contain '/', ':' or whitespace")
    } else {
        None
    };
    match why {
        None => Ok(()),
        Some(why) => Err(CniError::env(
            "CNI_IFNAME",
            format!("invalid interface name \"{name}\": {why}"),
        )),
    }
}

/// `K=V;K2=V2`. Empty items are skipped; an item without `=` is an error, as
/// in Go's `types.LoadArgs`.
pub fn parse_cni_args(s: &str) -> CniResult<Vec<(String, String)>> {
    let mut out = Vec::new();
    for item in s.split(';').filter(|i| !i.is_empty()) {
        let Some((k, v)) = item.split_once('=') else {
            return Err(CniError::env(
                "CNI_ARGS",
                format!("invalid pair \"{item}\": expected KEY=VALUE"),
            ));
        };
        out.push((k.to_string(), v.to_string()));
    }
    Ok(out)
}

/// The config's `cniVersion`; missing means 0.1.0 (libcni's rule).
pub fn config_version(stdin: &[u8]) -> CniResult<String> {
    #[derive(serde::Deserialize)]
    struct V {
        #[serde(rename = "cniVersion", default)]
        cni_version: Option<String>,
    }
    let v: V = serde_json::from_slice(stdin).map_err(|e| CniError::decode("network config", e))?;
    Ok(v.cni_version
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "0.1.0".to_string()))
}

/// skel's gates: the version must be one we support exactly; CHECK needs
/// 0.4.0 or later, GC and STATUS 1.1.0 or later.
pub fn check_version_gate(command: Command, v: &str) -> CniResult<()> {
    if !SUPPORTED_VERSIONS.contains(&v) {
        return Err(
            CniError::new(Code::IncompatibleVersion, "incompatible CNI versions").with_details(
                format!("config is \"{v}\", plugin supports {SUPPORTED_VERSIONS:?}"),
            ),
        );
    }
    let min = match command {
        Command::Check => "0.4.0",
        Command::Gc | Command::Status => "1.1.0",
        _ => return Ok(()),
    };
    if version::cmp(v, min) == std::cmp::Ordering::Less {
        return Err(CniError::new(
            Code::IncompatibleVersion,
            format!("config version does not allow {}", command.as_str()),
        )
        .with_details(format!(
            "config is \"{v}\", {} needs {min} or later",
            command.as_str()
        )));
    }
    Ok(())
}

/// skel refuses to ADD/DEL/CHECK in the plugin's own netns (code 8) unless
/// CNI_NETNS_OVERRIDE=1: configuring the host's namespace by mistake is the
/// kind of error that takes a node off the network.
fn check_not_own_netns(
    command: Command,
    args: &CmdArgs,
    env: &dyn Fn(&str) -> Option<String>,
) -> CniResult<()> {
    use std::os::unix::fs::MetadataExt;
    if !matches!(command, Command::Add | Command::Del | Command::Check) {
        return Ok(());
    }
    if env("CNI_NETNS_OVERRIDE").as_deref() == Some("1") {
        return Ok(());
    }
    let Some(netns) = &args.netns else {
        return Ok(());
    };
    let (Ok(theirs), Ok(ours)) = (
        std::fs::metadata(netns),
        std::fs::metadata("/proc/thread-self/ns/net"),
    ) else {
        // A missing netns is the plugin's business (DEL tolerates it).
        return Ok(());
    };
    if theirs.dev() == ours.dev() && theirs.ino() == ours.ino() {
        return Err(CniError::new(
            Code::InvalidNetns,
            format!(
                "CNI_NETNS {} is the plugin's own network namespace",
                netns.display()
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    struct Fake;
    impl Plugin for Fake {
        fn add(&self, _: &CmdArgs) -> CniResult<CniOutput> {
            Ok(serde_json::from_str(
                r#"{"cniVersion":"1.1.0","ips":[{"address":"10.0.0.2/24","gateway":"10.0.0.1"}]}"#,
            )
            .unwrap())
        }
        fn del(&self, _: &CmdArgs) -> CniResult<()> {
            Ok(())
        }
        fn check(&self, _: &CmdArgs) -> CniResult<()> {
            Ok(())
        }
        fn status(&self, _: &CmdArgs) -> CniResult<()> {
            Err(CniError::new(Code::Unavailable, "down"))
        }
        fn gc(&self, _: &CmdArgs) -> CniResult<()> {
            Ok(())
        }
    }

    fn run_with(vars: &[(&str, &str)], stdin: &str) -> (serde_json::Value, i32, String) {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let env = move |k: &str| map.get(k).cloned();
        let o = dispatch(&Fake, "about text", &env, stdin.as_bytes().to_vec());
        let v = if o.stdout.is_empty() {
            serde_json::Value::Null
        } else {
            serde_json::from_slice(&o.stdout).unwrap()
        };
        (v, o.exit_code, String::from_utf8(o.stderr).unwrap())
    }

    const ADD_ENV: &[(&str, &str)] = &[
        ("CNI_COMMAND", "ADD"),
        ("CNI_CONTAINERID", "abc"),
        ("CNI_NETNS", "/var/run/netns/nonexistent-test"),
        ("CNI_IFNAME", "net1"),
        ("CNI_PATH", "/opt/cni/bin"),
    ];

    fn with(over: &[(&'static str, &'static str)]) -> Vec<(&'static str, &'static str)> {
        let mut v: Vec<_> = ADD_ENV
            .iter()
            .filter(|(k, _)| !over.iter().any(|(o, _)| o == k))
            .copied()
            .collect();
        v.extend(over.iter().filter(|(_, val)| !val.is_empty()).copied());
        v
    }

    #[test]
    fn missing_command_is_code_4_and_prints_about() {
        let (v, code, err) = run_with(&[], "{}");
        assert_eq!(code, 1);
        assert_eq!(v["code"], 4);
        assert!(v["msg"].as_str().unwrap().contains("CNI_COMMAND"));
        assert_eq!(err, "about text\n");
    }

    #[test]
    fn unknown_command_is_code_4() {
        let (v, code, _) = run_with(&[("CNI_COMMAND", "FROB")], "{}");
        assert_eq!((code, v["code"].as_u64()), (1, Some(4)));
    }

    #[test]
    fn version_reply_lists_all() {
        let (v, code, _) = run_with(&[("CNI_COMMAND", "VERSION")], "");
        assert_eq!(code, 0);
        assert_eq!(v["cniVersion"], "1.1.0");
        assert_eq!(v["supportedVersions"].as_array().unwrap().len(), 7);
    }

    #[test]
    fn missing_ifname_names_it() {
        let (v, code, _) = run_with(&with(&[("CNI_IFNAME", "")]), r#"{"cniVersion":"1.0.0"}"#);
        assert_eq!((code, v["code"].as_u64()), (1, Some(4)));
        assert!(v["msg"].as_str().unwrap().contains("CNI_IFNAME"), "{v}");
        assert_eq!(v["cniVersion"], "1.1.0");
    }

    #[test]
    fn del_does_not_need_netns() {
        let (_, code, _) = run_with(
            &with(&[("CNI_COMMAND", "DEL"), ("CNI_NETNS", "")]),
            r#"{"cniVersion":"1.0.0"}"#,
        );
        assert_eq!(code, 0);
    }

    #[test]
    fn bad_container_id_and_ifname() {
        for (k, val) in [
            ("CNI_CONTAINERID", "-abc"),
            ("CNI_CONTAINERID", "a b"),
            ("CNI_IFNAME", "a/b"),
            ("CNI_IFNAME", "toolonginterface"),
            ("CNI_IFNAME", ".."),
            ("CNI_IFNAME", "a:b"),
        ] {
            let (v, code, _) = run_with(&with(&[(k, val)]), r#"{"cniVersion":"1.0.0"}"#);
            assert_eq!((code, v["code"].as_u64()), (1, Some(4)), "{k}={val}");
            assert!(v["msg"].as_str().unwrap().contains(k));
        }
        assert!(validate_container_id("a-b_c.d9").is_ok());
        assert!(validate_ifname("net1").is_ok());
    }

    #[test]
    fn malformed_json_is_code_6() {
        let (v, code, _) = run_with(ADD_ENV, "{not json");
        assert_eq!((code, v["code"].as_u64()), (1, Some(6)));
    }

    #[test]
    fn version_gates() {
        let (v, _, _) = run_with(ADD_ENV, r#"{"cniVersion":"0.9.9"}"#);
        assert_eq!(v["code"], 1);
        assert!(v["details"].as_str().unwrap().contains("0.9.9"));
        let (v, _, _) = run_with(
            &with(&[("CNI_COMMAND", "CHECK")]),
            r#"{"cniVersion":"0.3.1"}"#,
        );
        assert_eq!(v["code"], 1);
        assert!(v["msg"].as_str().unwrap().contains("CHECK"));
        let (v, _, _) = run_with(&with(&[("CNI_COMMAND", "GC")]), r#"{"cniVersion":"1.0.0"}"#);
        assert_eq!(v["code"], 1);
        let (v, _, _) = run_with(
            &with(&[("CNI_COMMAND", "STATUS")]),
            r#"{"cniVersion":"1.1.0"}"#,
        );
        assert_eq!(v["code"], 50);
        assert_eq!(v["cniVersion"], "1.1.0");
    }

    #[test]
    fn missing_cni_version_is_0_1_0() {
        let (v, code, _) = run_with(ADD_ENV, r#"{"name":"x"}"#);
        assert_eq!(code, 0);
        assert_eq!(v["cniVersion"], "0.1.0");
        assert_eq!(v["ip4"]["ip"], "10.0.0.2/24");
    }

    #[test]
    fn add_result_converted() {
        let (v, code, _) = run_with(ADD_ENV, r#"{"cniVersion":"0.3.1"}"#);
        assert_eq!(code, 0);
        assert_eq!(v["ips"][0]["version"], "4");
    }

    #[test]
    fn own_netns_refused_unless_override() {
        let own = with(&[("CNI_NETNS", "/proc/self/ns/net")]);
        let (v, code, _) = run_with(&own, r#"{"cniVersion":"1.0.0"}"#);
        assert_eq!((code, v["code"].as_u64()), (1, Some(8)));
        let mut ok = own.clone();
        ok.push(("CNI_NETNS_OVERRIDE", "1"));
        let (_, code, _) = run_with(&ok, r#"{"cniVersion":"1.0.0"}"#);
        assert_eq!(code, 0);
    }

    #[test]
    fn cni_args_pairs() {
        assert_eq!(
            parse_cni_args("IgnoreUnknown=1;MAC=aa:bb;;K=").unwrap(),
            vec![
                ("IgnoreUnknown".into(), "1".into()),
                ("MAC".into(), "aa:bb".into()),
                ("K".into(), "".into())
            ]
        );
        assert_eq!(
            parse_cni_args("NOPE").unwrap_err().code,
            Code::InvalidEnvironment
        );
    }
}
