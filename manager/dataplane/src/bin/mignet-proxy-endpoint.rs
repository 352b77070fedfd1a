//! `mignet-proxy-endpoint source|target ...`: one side of our migration
//! proxy as a process of its own, with the agent's runtime shape (2 worker
//! threads) and the same `SourceEndpoints` / `TargetEndpoints` the agent
//! runs. The side-by-side benchmark (`benches/migration_cpu.rs`) runs it
//! exactly as it runs KubeVirt's proxy (`tests/tools/kubevirt-proxy`), so
//! both are measured the same way: CPU and peak RSS of their own processes.
//!
//! ```text
//! mignet-proxy-endpoint source --unix DIR/UID-49152-source.sock --target IP:PORT --tls-dir DIR [--rate BYTES_PER_SEC]
//! mignet-proxy-endpoint target --bind IP --unix PATH --tls-dir DIR
//! ```
//! `--tls-dir` holds ca.crt, tls.crt and tls.key (the agent's Secret
//! layout). `source` prints `ready` once its socket listens; `target` binds
//! a port of its own choosing, as the agent does, and prints `ready PORT`.
//! Both run until SIGTERM or SIGINT, then let open connections drain (up to
//! 10 s) and exit 0. Errors go to stderr with exit status 1 (2 for usage).

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use mignet_dataplane::proxy::{
    ProxyOptions, RateLimit, SourceEndpoints, TargetEndpoints, STREAM_MEMORY,
};
use mignet_dataplane::tls::{ReloadingTls, TlsPaths, TlsSettings};

const USAGE: &str = "usage:
  mignet-proxy-endpoint source --unix DIR/UID-49152-source.sock --target IP:PORT --tls-dir DIR [--rate BYTES_PER_SEC]
  mignet-proxy-endpoint target --bind IP --unix PATH --tls-dir DIR";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some((mode, rest)) = args.split_first() else {
        eprintln!("{USAGE}");
        return ExitCode::from(2);
    };
    let mut flags = BTreeMap::new();
    let mut it = rest.iter();
    while let Some(k) = it.next() {
        let Some(v) = it.next() else {
            eprintln!("{k}: a value is missing\n{USAGE}");
            return ExitCode::from(2);
        };
        flags.insert(k.trim_start_matches("--").to_string(), v.clone());
    }
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("tokio runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match rt.block_on(run(mode, &flags)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mignet-proxy-endpoint {mode}: {e}");
            ExitCode::from(if e.starts_with("usage") { 2 } else { 1 })
        }
    }
}

fn flag<'a>(flags: &'a BTreeMap<String, String>, name: &str) -> Result<&'a str, String> {
    flags
        .get(name)
        .map(String::as_str)
        .ok_or_else(|| format!("usage: --{name} is required\n{USAGE}"))
}

async fn run(mode: &str, flags: &BTreeMap<String, String>) -> Result<(), String> {
    let tls = ReloadingTls::load(
        TlsPaths::in_dir(Path::new(flag(flags, "tls-dir")?)),
        TlsSettings::default(),
    )
    .map_err(|e| format!("TLS: {e}"))?;
    let unix = PathBuf::from(flag(flags, "unix")?);
    let stop = async {
        use tokio::signal::unix::{signal, SignalKind};
        let (mut term, mut int) = (
            signal(SignalKind::terminate()).expect("SIGTERM handler"),
            signal(SignalKind::interrupt()).expect("SIGINT handler"),
        );
        tokio::select! { _ = term.recv() => {}, _ = int.recv() => {} }
    };
    match mode {
        "source" => {
            let target: SocketAddr = flag(flags, "target")?
                .parse()
                .map_err(|e| format!("--target: {e}"))?;
            // The agent names the socket UID-KEY-source.sock in its
            // directory; take DIR and UID from the path given.
            let name = unix.file_name().and_then(|n| n.to_str()).unwrap_or("");
            let suffix = format!("-{STREAM_MEMORY}-source.sock");
            let uid = name
                .strip_suffix(&suffix)
                .ok_or_else(|| format!("usage: --unix must end in {suffix}: {}", unix.display()))?;
            let dir = unix.parent().unwrap_or(Path::new("."));
            let rate_limit = match flags.get("rate") {
                Some(r) => Some(RateLimit::new(
                    r.parse().map_err(|e| format!("--rate {r}: {e}"))?,
                )),
                None => None,
            };
            let port_map = BTreeMap::from([(target.port().to_string(), STREAM_MEMORY)]);
            let endpoints = SourceEndpoints::start(
                dir,
                uid,
                target.ip(),
                &port_map,
                &[STREAM_MEMORY],
                tls,
                ProxyOptions {
                    rate_limit,
                    ..Default::default()
                },
            )
            .map_err(|e| format!("{e}"))?;
            println!("ready");
            stop.await;
            endpoints.finish(Duration::from_secs(10)).await;
        }
        "target" => {
            let bind: IpAddr = flag(flags, "bind")?
                .parse()
                .map_err(|e| format!("--bind: {e}"))?;
            let endpoints = TargetEndpoints::start(
                bind,
                &[(STREAM_MEMORY, unix)],
                tls,
                ProxyOptions::default(),
            )
            .map_err(|e| format!("{e}"))?;
            let port = endpoints.port_of(STREAM_MEMORY).unwrap_or(0);
            println!("ready {port}");
            stop.await;
            endpoints.finish(Duration::from_secs(10)).await;
        }
        other => return Err(format!("usage: unknown mode {other}\n{USAGE}")),
    }
    Ok(())
}
