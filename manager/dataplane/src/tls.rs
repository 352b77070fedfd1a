//! Mutual TLS between agents (rustls with ring).
//!
//! rustls runs the handshake; the proxy then protects records itself
//! (`session.rs`, `record.rs`) with the traffic secrets rustls hands over,
//! which is why both configs enable secret extraction. PERFORMANCE.md has
//! the measurements behind that and behind the suite order below.
//!
//! Modelled on cloud-hypervisor's `vm-migration/src/tls.rs`: the certificate
//! directory is validated at start-up with a specific error per problem, the
//! server and client configs are built once and shared by `Arc`, and handshakes
//! are bounded by a timeout (in `proxy.rs`).
//!
//! Who may connect: a peer whose certificate chains to the cluster CA (`ca.crt`)
//! *and* carries the expected role URI SAN (`spiffe://mignet/agent/<node>`, see
//! `certs.rs`). Host names are not checked: migration IPs are handed out by IPAM
//! after certificates are issued, so the certificate cannot name them; the role
//! and the CA are the identity.
//!
//! Rotation: [`ReloadingTls`] polls the three files' metadata and rebuilds both
//! configs when any of them changes; new handshakes take the new configs, live
//! connections keep theirs. Session resumption is disabled on both sides so a
//! ticket issued under an old CA cannot skip the certificate check after rotation.

use std::fmt;
use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::Resumption;
use rustls::crypto::{self, CryptoProvider};
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{NoServerSessionStorage, ParsedCertificate, WebPkiClientVerifier};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, DistinguishedName, OtherError,
    RootCertStore, ServerConfig, SignatureScheme, SupportedProtocolVersion,
};
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::certs::{self, Identity, Role};

/// Where the three PEM files live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsPaths {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl TlsPaths {
    /// `ca.crt`, `tls.crt`, `tls.key` in `dir` (a mounted `kubernetes.io/tls` Secret).
    pub fn in_dir(dir: &Path) -> Self {
        TlsPaths {
            ca: dir.join(certs::CA_FILE),
            cert: dir.join(certs::CERT_FILE),
            key: dir.join(certs::KEY_FILE),
        }
    }
}

/// Policy knobs.
#[derive(Debug, Clone)]
pub struct TlsSettings {
    /// The role both our certificate and the peer's must carry.
    pub role: Role,
    /// Accept TLS 1.2 as well as 1.3 (off by default).
    pub allow_tls12: bool,
}

impl Default for TlsSettings {
    fn default() -> Self {
        TlsSettings {
            role: Role::Agent,
            allow_tls12: false,
        }
    }
}

/// Which file a problem is about, for error messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileKind {
    Ca,
    Cert,
    Key,
}

impl fmt::Display for FileKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FileKind::Ca => "CA bundle",
            FileKind::Cert => "certificate",
            FileKind::Key => "private key",
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{kind} file {path} does not exist")]
    MissingFile { kind: FileKind, path: PathBuf },
    #[error("reading {kind} file {path}")]
    ReadFile {
        kind: FileKind,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{kind} file {path} is not valid PEM: {reason}")]
    BadPem {
        kind: FileKind,
        path: PathBuf,
        reason: String,
    },
    #[error("{kind} file {path} holds no {kind}")]
    Empty { kind: FileKind, path: PathBuf },
    #[error("{kind} file {path}: certificate is not valid X.509: {reason}")]
    BadCertificate {
        kind: FileKind,
        path: PathBuf,
        reason: String,
    },
    #[error("CA bundle {path}: certificate {subject} is not a CA")]
    NotACa { path: PathBuf, subject: String },
    #[error("{kind} file {path}: certificate {subject} expired at {not_after} (unix seconds)")]
    Expired {
        kind: FileKind,
        path: PathBuf,
        subject: String,
        not_after: i64,
    },
    #[error(
        "{kind} file {path}: certificate {subject} is not valid before {not_before} (unix seconds)"
    )]
    NotYetValid {
        kind: FileKind,
        path: PathBuf,
        subject: String,
        not_before: i64,
    },
    #[error("private key {path} is not usable: {reason}")]
    UnsupportedKey { path: PathBuf, reason: String },
    #[error("private key {key} does not belong to certificate {cert}")]
    KeyMismatch { cert: PathBuf, key: PathBuf },
    #[error("certificate {path} carries no {expected} role (found {found:?})")]
    WrongRole {
        path: PathBuf,
        expected: Role,
        found: Vec<Identity>,
    },
    #[error("certificate {cert} is not accepted by CA bundle {ca}: {reason}")]
    NotIssuedByCa {
        cert: PathBuf,
        ca: PathBuf,
        reason: String,
    },
    #[error("building the TLS configuration: {reason}")]
    Config { reason: String },
}

/// Server and client configs built from one consistent read of the files.
#[derive(Debug)]
pub struct TlsConfigs {
    pub server: Arc<ServerConfig>,
    pub client: Arc<ClientConfig>,
    /// Our own identity (from our certificate's role URI).
    pub identity: Identity,
    /// Our certificate's expiry, unix seconds.
    pub not_after: i64,
}

/// ring's suites with AES-128-GCM ahead of AES-256-GCM: migration streams are
/// bulk data on shared cores, and AES-128 costs fewer rounds per byte while
/// remaining a TLS 1.3 mandatory-strength suite. Both ends use this order, and
/// rustls servers follow the client's order, so AES-128 is what gets negotiated.
fn provider() -> Arc<CryptoProvider> {
    let mut p = crypto::ring::default_provider();
    p.cipher_suites.sort_by_key(|s| {
        use rustls::CipherSuite::*;
        match s.suite() {
            TLS13_AES_128_GCM_SHA256 => 0,
            TLS13_AES_256_GCM_SHA384 => 1,
            TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256 | TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256 => 2,
            _ => 3,
        }
    });
    Arc::new(p)
}

fn versions(settings: &TlsSettings) -> &'static [&'static SupportedProtocolVersion] {
    static TLS13_ONLY: [&SupportedProtocolVersion; 1] = [&rustls::version::TLS13];
    static TLS13_AND_12: [&SupportedProtocolVersion; 2] =
        [&rustls::version::TLS13, &rustls::version::TLS12];
    if settings.allow_tls12 {
        &TLS13_AND_12
    } else {
        &TLS13_ONLY
    }
}

fn read_file(kind: FileKind, path: &Path) -> Result<Vec<u8>, TlsError> {
    fs::read(path).map_err(|source| {
        if source.kind() == io::ErrorKind::NotFound {
            TlsError::MissingFile {
                kind,
                path: path.to_path_buf(),
            }
        } else {
            TlsError::ReadFile {
                kind,
                path: path.to_path_buf(),
                source,
            }
        }
    })
}

fn parse_certs(
    kind: FileKind,
    path: &Path,
    pem: &[u8],
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, pem::Error>>()
        .map_err(|e| TlsError::BadPem {
            kind,
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::Empty {
            kind,
            path: path.to_path_buf(),
        });
    }
    Ok(certs)
}

/// Validity and CA checks on one certificate; `now` is passed in, not read.
fn check_certificate(
    kind: FileKind,
    path: &Path,
    der: &[u8],
    must_be_ca: bool,
    now: i64,
) -> Result<(), TlsError> {
    let (_, cert) = X509Certificate::from_der(der).map_err(|e| TlsError::BadCertificate {
        kind,
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    let subject = cert.subject().to_string();
    if must_be_ca && !cert.is_ca() {
        return Err(TlsError::NotACa {
            path: path.to_path_buf(),
            subject,
        });
    }
    let validity = cert.validity();
    if now > validity.not_after.timestamp() {
        return Err(TlsError::Expired {
            kind,
            path: path.to_path_buf(),
            subject,
            not_after: validity.not_after.timestamp(),
        });
    }
    if now < validity.not_before.timestamp() {
        return Err(TlsError::NotYetValid {
            kind,
            path: path.to_path_buf(),
            subject,
            not_before: validity.not_before.timestamp(),
        });
    }
    Ok(())
}

fn unix_secs(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_secs() as i64,
        Err(e) => -(e.duration().as_secs() as i64),
    }
}

/// Read and validate the three files, then build both configs.
///
/// Every check runs here, at start-up (and at each reload), so a broken directory
/// is reported with the file and the problem instead of as a handshake failure later.
pub fn load_configs(
    paths: &TlsPaths,
    settings: &TlsSettings,
    now: SystemTime,
) -> Result<TlsConfigs, TlsError> {
    let now_secs = unix_secs(now);
    let ca_pem = read_file(FileKind::Ca, &paths.ca)?;
    let cert_pem = read_file(FileKind::Cert, &paths.cert)?;
    let key_pem = read_file(FileKind::Key, &paths.key)?;

    // CA bundle: every entry must be a currently valid CA certificate.
    let cas = parse_certs(FileKind::Ca, &paths.ca, &ca_pem)?;
    let mut roots = RootCertStore::empty();
    for ca in &cas {
        check_certificate(FileKind::Ca, &paths.ca, ca, true, now_secs)?;
        roots
            .add(ca.clone())
            .map_err(|e| TlsError::BadCertificate {
                kind: FileKind::Ca,
                path: paths.ca.clone(),
                reason: e.to_string(),
            })?;
    }
    let roots = Arc::new(roots);

    // Our chain: leaf first, valid now, carrying our role.
    let chain = parse_certs(FileKind::Cert, &paths.cert, &cert_pem)?;
    for der in &chain {
        check_certificate(FileKind::Cert, &paths.cert, der, false, now_secs)?;
    }
    let found = certs::identities(&chain[0]).map_err(|reason| TlsError::BadCertificate {
        kind: FileKind::Cert,
        path: paths.cert.clone(),
        reason,
    })?;
    let identity = found
        .iter()
        .find(|id| id.role == settings.role.as_str())
        .cloned()
        .ok_or_else(|| TlsError::WrongRole {
            path: paths.cert.clone(),
            expected: settings.role,
            found: found.clone(),
        })?;
    let not_after = {
        let (_, leaf) =
            X509Certificate::from_der(&chain[0]).map_err(|e| TlsError::BadCertificate {
                kind: FileKind::Cert,
                path: paths.cert.clone(),
                reason: e.to_string(),
            })?;
        leaf.validity().not_after.timestamp()
    };

    // Key: parseable, supported, and the public half of our certificate.
    let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| match e {
        pem::Error::NoItemsFound => TlsError::Empty {
            kind: FileKind::Key,
            path: paths.key.clone(),
        },
        e => TlsError::BadPem {
            kind: FileKind::Key,
            path: paths.key.clone(),
            reason: e.to_string(),
        },
    })?;
    let provider = provider();
    let signing_key = provider
        .key_provider
        .load_private_key(key.clone_key())
        .map_err(|e| TlsError::UnsupportedKey {
            path: paths.key.clone(),
            reason: e.to_string(),
        })?;
    let certified = rustls::sign::CertifiedKey::new(chain.clone(), signing_key);
    match certified.keys_match() {
        Ok(()) => {}
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch)) => {
            return Err(TlsError::KeyMismatch {
                cert: paths.cert.clone(),
                key: paths.key.clone(),
            })
        }
        // `Unknown`: the key type cannot report its public key; the self-check
        // handshake of the peer will catch a mismatch instead.
        Err(_) => {}
    }

    // Verifiers: cluster CA + role, for both directions.
    let webpki_client =
        WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
            .build()
            .map_err(|e| TlsError::Config {
                reason: e.to_string(),
            })?;
    let client_verifier = Arc::new(RoleClientVerifier {
        inner: webpki_client,
        role: settings.role,
    });
    let server_verifier = Arc::new(RoleServerVerifier {
        roots: roots.clone(),
        provider: provider.clone(),
        role: settings.role,
    });

    // Our own certificate must pass the check our peers will apply to it; this
    // turns "signed by another CA" into a start-up error instead of refused peers.
    client_verifier
        .verify_client_cert(
            &chain[0],
            &chain[1..],
            UnixTime::since_unix_epoch(Duration::from_secs(now_secs.max(0) as u64)),
        )
        .map_err(|e| TlsError::NotIssuedByCa {
            cert: paths.cert.clone(),
            ca: paths.ca.clone(),
            reason: e.to_string(),
        })?;

    let config_err = |e: rustls::Error| TlsError::Config {
        reason: e.to_string(),
    };
    let mut server = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(versions(settings))
        .map_err(config_err)?
        .with_client_cert_verifier(client_verifier)
        .with_single_cert(chain.clone(), key.clone_key())
        .map_err(config_err)?;
    server.session_storage = Arc::new(NoServerSessionStorage {});
    server.send_tls13_tickets = 0;
    // The proxy protects records itself once rustls has finished the
    // handshake (session.rs); rustls hands the traffic keys over only when
    // asked to here. They never leave the process.
    server.enable_secret_extraction = true;

    let mut client = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(versions(settings))
        .map_err(config_err)?
        .dangerous()
        .with_custom_certificate_verifier(server_verifier)
        .with_client_auth_cert(chain, key)
        .map_err(config_err)?;
    client.resumption = Resumption::disabled();
    client.enable_secret_extraction = true;

    Ok(TlsConfigs {
        server: Arc::new(server),
        client: Arc::new(client),
        identity,
        not_after,
    })
}

/// Why a peer's certificate was refused after its chain checked out.
#[derive(Debug, thiserror::Error)]
#[error("peer certificate carries no {expected} role (found {found:?})")]
pub struct RoleRefused {
    pub expected: Role,
    pub found: Vec<Identity>,
}

fn check_peer_role(end_entity: &CertificateDer<'_>, role: Role) -> Result<(), rustls::Error> {
    let found = certs::identities(end_entity)
        .map_err(|_| rustls::Error::InvalidCertificate(CertificateError::BadEncoding))?;
    if found.iter().any(|id| id.role == role.as_str()) {
        Ok(())
    } else {
        Err(rustls::Error::InvalidCertificate(CertificateError::Other(
            OtherError(Arc::new(RoleRefused {
                expected: role,
                found,
            })),
        )))
    }
}

/// Server side: webpki client-certificate verification against the cluster CA,
/// then the role check. Client certificates are mandatory.
#[derive(Debug)]
struct RoleClientVerifier {
    inner: Arc<dyn ClientCertVerifier>,
    role: Role,
}

impl ClientCertVerifier for RoleClientVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.inner
            .verify_client_cert(end_entity, intermediates, now)?;
        check_peer_role(end_entity, self.role)?;
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// Client side: chain to the cluster CA with serverAuth usage, then the role
/// check; the server name is not matched (see the module doc).
#[derive(Debug)]
struct RoleServerVerifier {
    roots: Arc<RootCertStore>,
    provider: Arc<CryptoProvider>,
    role: Role,
}

impl ServerCertVerifier for RoleServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let parsed = ParsedCertificate::try_from(end_entity)?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &parsed,
            &self.roots,
            intermediates,
            now,
            self.provider.signature_verification_algorithms.all,
        )?;
        check_peer_role(end_entity, self.role)?;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// Identity of the three files' current contents as seen by `stat` (following
/// symlinks, so a Secret volume's `..data` swap counts as a change).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Stamp(Vec<Option<FileStamp>>);

/// mtime seconds, mtime nanoseconds, length, inode, device.
type FileStamp = (i64, i64, u64, u64, u64);

fn stamp(paths: &TlsPaths) -> Stamp {
    Stamp(
        [&paths.ca, &paths.cert, &paths.key]
            .iter()
            .map(|p| {
                fs::metadata(p)
                    .ok()
                    .map(|m| (m.mtime(), m.mtime_nsec(), m.len(), m.ino(), m.dev()))
            })
            .collect(),
    )
}

/// The current configs plus what is needed to rebuild them when the files change.
#[derive(Debug)]
pub struct ReloadingTls {
    paths: TlsPaths,
    settings: TlsSettings,
    current: RwLock<Arc<TlsConfigs>>,
    seen: Mutex<Stamp>,
    last_error: Mutex<Option<String>>,
}

impl ReloadingTls {
    /// Load at start-up: any problem is returned, nothing falls back.
    pub fn load(paths: TlsPaths, settings: TlsSettings) -> Result<Arc<Self>, TlsError> {
        let seen = stamp(&paths);
        let configs = load_configs(&paths, &settings, SystemTime::now())?;
        Ok(Arc::new(ReloadingTls {
            paths,
            settings,
            current: RwLock::new(Arc::new(configs)),
            seen: Mutex::new(seen),
            last_error: Mutex::new(None),
        }))
    }

    /// The configs new handshakes should use.
    pub fn current(&self) -> Arc<TlsConfigs> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn paths(&self) -> &TlsPaths {
        &self.paths
    }

    /// The last reload failure, if the files are currently broken (old configs stay in use).
    pub fn last_error(&self) -> Option<String> {
        self.last_error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Rebuild the configs if the files changed since the last successful load.
    /// `Ok(true)` when new configs were installed. On error the old configs stay and
    /// the change is retried on the next call (e.g. cert and key renamed one at a time).
    pub fn reload_if_changed(&self) -> Result<bool, TlsError> {
        let now_stamp = stamp(&self.paths);
        if *self.seen.lock().unwrap_or_else(|p| p.into_inner()) == now_stamp {
            return Ok(false);
        }
        match load_configs(&self.paths, &self.settings, SystemTime::now()) {
            Ok(configs) => {
                *self.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(configs);
                *self.seen.lock().unwrap_or_else(|p| p.into_inner()) = now_stamp;
                *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = None;
                tracing::info!(dir = ?self.paths.cert.parent(), "TLS certificates reloaded");
                Ok(true)
            }
            Err(e) => {
                *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = Some(e.to_string());
                Err(e)
            }
        }
    }

    /// Poll the files every `every` on the current tokio runtime; the task stops
    /// when the returned guard is dropped.
    pub fn spawn_watcher(self: &Arc<Self>, every: Duration) -> WatcherGuard {
        let me = self.clone();
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                if let Err(e) = me.reload_if_changed() {
                    tracing::warn!(error = %e, "TLS reload failed; keeping the previous certificates");
                }
            }
        });
        WatcherGuard(task)
    }
}

/// Stops the reload task on drop.
#[derive(Debug)]
pub struct WatcherGuard(tokio::task::JoinHandle<()>);

impl Drop for WatcherGuard {
    fn drop(&mut self) {
        self.0.abort();
    }
}
