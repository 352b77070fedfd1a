//! Shared helpers for the TLS/proxy tests and the proxy benchmark: network
//! namespaces and veth pairs (guards that delete on Drop, also on panic),
//! temporary directories, a lab PKI, deterministic payloads, and test TLS
//! clients that trust any server (so only the server decides who gets in).
#![allow(dead_code)]

use std::fs;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use mignet_dataplane::certs::{self, ClusterCa, IssuedCert, Role, Validity};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, SignatureScheme, SupportedProtocolVersion};

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A name unique to this process and call: `<prefix><pid>-<n>`.
pub fn unique(prefix: &str) -> String {
    format!(
        "{prefix}{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

fn run(cmd: &[&str]) {
    let out = Command::new(cmd[0])
        .args(&cmd[1..])
        .output()
        .unwrap_or_else(|e| panic!("spawning {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A network namespace made for one test; deleted on Drop.
#[derive(Debug)]
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new(prefix: &str) -> Netns {
        let name = unique(prefix);
        run(&["ip", "netns", "add", &name]);
        let ns = Netns { name };
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    /// `ip -n <ns> <args>`.
    pub fn ip(&self, args: &[&str]) {
        let mut cmd = vec!["ip", "-n", &self.name];
        cmd.extend_from_slice(args);
        run(&cmd);
    }

    /// Run `f` on a fresh thread that entered this namespace; the thread exits
    /// afterwards, so no pooled thread is ever left in a foreign namespace.
    pub fn run<R: Send + 'static>(&self, f: impl FnOnce() -> R + Send + 'static) -> R {
        self.spawn(f)
            .join()
            .unwrap_or_else(|p| std::panic::resume_unwind(p))
    }

    /// Like `run`, but returns the handle (long-running work, e.g. a runtime).
    pub fn spawn<R: Send + 'static>(
        &self,
        f: impl FnOnce() -> R + Send + 'static,
    ) -> std::thread::JoinHandle<R> {
        let path = format!("/run/netns/{}", self.name);
        std::thread::spawn(move || {
            let fd = fs::File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}"));
            nix::sched::setns(fd.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)
                .unwrap_or_else(|e| panic!("setns {path}: {e}"));
            f()
        })
    }

    /// Run an async block on a current-thread runtime inside this namespace.
    pub fn block_on<F, Fut, R>(&self, f: F) -> R
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: std::future::Future<Output = R>,
        R: Send + 'static,
    {
        self.run(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime")
                .block_on(f())
        })
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Deleting the namespace also destroys the veth ends inside it.
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// A veth pair `a_if` in `a` <-> `b_if` in `b`, both up, with addresses.
pub fn veth(a: &Netns, a_if: &str, a_cidr: &str, b: &Netns, b_if: &str, b_cidr: &str) {
    a.ip(&[
        "link", "add", a_if, "type", "veth", "peer", "name", b_if, "netns", &b.name,
    ]);
    a.ip(&["addr", "add", a_cidr, "dev", a_if]);
    b.ip(&["addr", "add", b_cidr, "dev", b_if]);
    a.ip(&["link", "set", a_if, "up"]);
    b.ip(&["link", "set", b_if, "up"]);
}

/// A temporary directory, removed on Drop.
#[derive(Debug)]
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(prefix: &str) -> TempDir {
        let p = std::env::temp_dir().join(unique(prefix));
        fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// A cluster CA plus helpers to issue and write certificates.
pub struct Pki {
    pub ca: ClusterCa,
}

impl Pki {
    pub fn new(name: &str) -> Pki {
        Pki {
            ca: ClusterCa::generate(name, Validity::days_from_now(1)).unwrap(),
        }
    }
    pub fn issue(&self, role: Role, name: &str) -> IssuedCert {
        self.ca
            .issue(role, name, Validity::days_from_now(1))
            .unwrap()
    }
    /// Write ca.crt + an agent certificate for `node` into a fresh dir under `root`.
    pub fn agent_dir(&self, root: &Path, node: &str) -> PathBuf {
        let dir = root.join(node);
        certs::write_tls_dir(&dir, self.ca.cert_pem(), &self.issue(Role::Agent, node)).unwrap();
        dir
    }
}

pub fn chain_and_key(c: &IssuedCert) -> (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
    let chain = CertificateDer::pem_slice_iter(c.cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_slice(c.key_pem.as_bytes()).unwrap();
    (chain, key)
}

/// Records the server certificate and accepts anything: lets a test client
/// finish its side of the handshake so the server alone decides.
#[derive(Debug, Default)]
pub struct TrustAnything {
    pub seen: std::sync::Mutex<Vec<CertificateDer<'static>>>,
}

impl ServerCertVerifier for TrustAnything {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.seen
            .lock()
            .unwrap()
            .push(end_entity.clone().into_owned());
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }
    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        rustls::crypto::ring::default_provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// A test client config: optional client certificate, chosen protocol versions,
/// trusting any server.
pub fn test_client(
    cert: Option<&IssuedCert>,
    versions: &[&'static SupportedProtocolVersion],
    verifier: Arc<TrustAnything>,
) -> Arc<ClientConfig> {
    let builder =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_protocol_versions(versions)
            .unwrap()
            .dangerous()
            .with_custom_certificate_verifier(verifier);
    let mut config = match cert {
        Some(c) => {
            let (chain, key) = chain_and_key(c);
            builder.with_client_auth_cert(chain, key).unwrap()
        }
        None => builder.with_no_client_auth(),
    };
    config.resumption = rustls::client::Resumption::disabled();
    Arc::new(config)
}

/// Deterministic pseudo-random bytes (xorshift64*), so a receiver can check a
/// stream by regenerating it instead of holding both copies.
#[derive(Debug, Clone)]
pub struct Payload(u64);

impl Payload {
    pub fn new(seed: u64) -> Payload {
        Payload(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    pub fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            let v = self.0.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }
}

/// Write `len` bytes of `Payload::new(seed)` to `w` (chunks of 64 KiB, a
/// multiple of 8 so the stream does not depend on the chunking).
pub async fn send_payload<W: tokio::io::AsyncWrite + Unpin>(
    w: &mut W,
    seed: u64,
    len: u64,
) -> std::io::Result<()> {
    use tokio::io::AsyncWriteExt;
    let mut p = Payload::new(seed);
    let mut buf = vec![0u8; 64 * 1024];
    let mut left = len;
    while left > 0 {
        let n = left.min(buf.len() as u64) as usize;
        p.fill(&mut buf[..n]);
        w.write_all(&buf[..n]).await?;
        left -= n as u64;
    }
    Ok(())
}

/// Read until EOF and check the bytes equal `Payload::new(seed)`; returns the length.
pub async fn check_payload<R: tokio::io::AsyncRead + Unpin>(
    r: &mut R,
    seed: u64,
) -> std::io::Result<u64> {
    use tokio::io::AsyncReadExt;
    let mut p = Payload::new(seed);
    let mut buf = vec![0u8; 64 * 1024];
    let mut expect = vec![0u8; 64 * 1024];
    // Generated in 64 KiB blocks; keep a window so arbitrary read sizes compare.
    let mut have = 0usize; // bytes of `expect` still unconsumed, at its end
    let mut total = 0u64;
    loop {
        let n = r.read(&mut buf).await?;
        if n == 0 {
            return Ok(total);
        }
        let mut off = 0;
        while off < n {
            if have == 0 {
                p.fill(&mut expect);
                have = expect.len();
            }
            let start = expect.len() - have;
            let take = have.min(n - off);
            if buf[off..off + take] != expect[start..start + take] {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("payload mismatch near byte {}", total + off as u64),
                ));
            }
            have -= take;
            off += take;
        }
        total += n as u64;
    }
}
