//! The cluster CA and agent certificates (lab mode generates them with rcgen;
//! cluster mode mounts the same three files from a Secret).
//!
//! Identity convention (what the TLS verifiers in `tls.rs` check):
//! - every leaf carries exactly one URI SAN `spiffe://mignet/<role>/<name>`,
//!   e.g. `spiffe://mignet/agent/node-a`; the role is the first path segment;
//! - the subject is `O=mignet, OU=<role>, CN=<name>` for humans reading `openssl x509`,
//!   but only the URI SAN is trusted (subject fields are free text in many CAs);
//! - extended key usage is both serverAuth and clientAuth, because an agent is the
//!   TLS server on the target side and the TLS client on the source side.
//!
//! Files follow the Kubernetes TLS Secret layout so a mounted Secret works as is:
//! `ca.crt`, `tls.crt`, `tls.key`.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

/// File names inside a TLS directory (the Kubernetes `kubernetes.io/tls` Secret keys).
pub const CA_FILE: &str = "ca.crt";
pub const CERT_FILE: &str = "tls.crt";
pub const KEY_FILE: &str = "tls.key";

/// Scheme + trust domain of the role URI SAN.
const ROLE_URI_PREFIX: &str = "spiffe://mignet/";

/// Who a certificate speaks for. Only `Agent` may carry migration traffic; the others
/// exist so that a certificate from the right CA but for another job is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    Agent,
    Manager,
    Console,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Agent => "agent",
            Role::Manager => "manager",
            Role::Console => "console",
        }
    }

    /// The URI SAN for `name` in this role.
    pub fn uri(self, name: &str) -> String {
        format!("{ROLE_URI_PREFIX}{}/{name}", self.as_str())
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One identity found in a certificate: `spiffe://mignet/<role>/<name>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub role: String,
    pub name: String,
}

/// Pure parse of one URI SAN; `None` when it is not ours.
pub fn parse_role_uri(uri: &str) -> Option<Identity> {
    let rest = uri.strip_prefix(ROLE_URI_PREFIX)?;
    let (role, name) = rest.split_once('/')?;
    if role.is_empty() || name.is_empty() || name.contains('/') {
        return None;
    }
    Some(Identity {
        role: role.to_string(),
        name: name.to_string(),
    })
}

/// All mignet identities in a DER certificate (usually exactly one).
pub fn identities(cert_der: &[u8]) -> Result<Vec<Identity>, String> {
    let (_, cert) = X509Certificate::from_der(cert_der).map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    if let Some(san) = cert.subject_alternative_name().map_err(|e| e.to_string())? {
        for name in &san.value.general_names {
            if let GeneralName::URI(uri) = name {
                out.extend(parse_role_uri(uri));
            }
        }
    }
    Ok(out)
}

#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("generating a key pair")]
    GenerateKey(#[source] rcgen::Error),
    #[error("building the certificate for {subject}")]
    Sign {
        subject: String,
        #[source]
        source: rcgen::Error,
    },
    #[error("parsing the CA certificate or key")]
    ParseCa(#[source] rcgen::Error),
    #[error("parsing the certificate signing request")]
    ParseCsr(#[source] rcgen::Error),
    #[error(
        "the certificate signing request names {found:?}, expected exactly one {role} identity"
    )]
    CsrIdentity { role: Role, found: Vec<String> },
    #[error("parsing certificate {what}: {detail}")]
    ParseCert { what: String, detail: String },
    #[error("writing {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Validity window of a certificate.
#[derive(Debug, Clone, Copy)]
pub struct Validity {
    pub not_before: SystemTime,
    pub not_after: SystemTime,
}

impl Validity {
    /// From a minute ago (clock skew between nodes) for `days`.
    pub fn days_from_now(days: u64) -> Self {
        let now = SystemTime::now();
        Validity {
            not_before: now - Duration::from_secs(60),
            not_after: now + Duration::from_secs(days * 86_400),
        }
    }
}

/// A PEM certificate with its PEM PKCS#8 key.
#[derive(Debug, Clone)]
pub struct IssuedCert {
    pub cert_pem: String,
    pub key_pem: String,
}

/// The cluster CA: signs agent (and other role) certificates.
pub struct ClusterCa {
    issuer: Issuer<'static, KeyPair>,
    cert_pem: String,
}

impl std::fmt::Debug for ClusterCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterCa").finish_non_exhaustive()
    }
}

impl ClusterCa {
    /// A new self-signed CA (ECDSA P-256) named `common_name`.
    pub fn generate(common_name: &str, validity: Validity) -> Result<Self, CertError> {
        let key = KeyPair::generate().map_err(CertError::GenerateKey)?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "mignet");
        dn.push(DnType::CommonName, common_name);
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params.not_before = validity.not_before.into();
        params.not_after = validity.not_after.into();
        let cert = params.self_signed(&key).map_err(|source| CertError::Sign {
            subject: common_name.to_string(),
            source,
        })?;
        Ok(ClusterCa {
            issuer: Issuer::new(params, key),
            cert_pem: cert.pem(),
        })
    }

    /// Load an existing CA (lab state kept across runs).
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Self, CertError> {
        let key = KeyPair::from_pem(key_pem).map_err(CertError::ParseCa)?;
        let issuer = Issuer::from_ca_cert_pem(cert_pem, key).map_err(CertError::ParseCa)?;
        Ok(ClusterCa {
            issuer,
            cert_pem: cert_pem.to_string(),
        })
    }

    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    pub fn key_pem(&self) -> String {
        self.issuer.key().serialize_pem()
    }

    /// Sign a PEM PKCS#10 request as a leaf for `role`. The request's own
    /// signature is verified (the requester holds the key); its SAN must be
    /// exactly one identity of `role`. Everything else it asks for
    /// (subject, usages, extensions, CA bit) is ignored: the certificate
    /// carries what [`leaf_params`] puts in every leaf, for the name the
    /// SAN gives, so a request cannot widen what it gets. Returns the PEM
    /// certificate and the identity it was issued for.
    pub fn sign_request(
        &self,
        role: Role,
        csr_pem: &str,
        validity: Validity,
    ) -> Result<(String, Identity), CertError> {
        let csr =
            CertificateSigningRequestParams::from_pem(csr_pem).map_err(CertError::ParseCsr)?;
        let identity = single_identity(role, &csr.params.subject_alt_names)?;
        let params = leaf_params(role, &identity.name, validity)?;
        let cert = params
            .signed_by(&csr.public_key, &self.issuer)
            .map_err(|source| CertError::Sign {
                subject: role.uri(&identity.name),
                source,
            })?;
        Ok((cert.pem(), identity))
    }

    /// Issue a leaf for `name` in `role` (see the module doc for what it carries).
    pub fn issue(
        &self,
        role: Role,
        name: &str,
        validity: Validity,
    ) -> Result<IssuedCert, CertError> {
        let subject = role.uri(name);
        let sign_err = |source| CertError::Sign {
            subject: subject.clone(),
            source,
        };
        let key = KeyPair::generate().map_err(CertError::GenerateKey)?;
        let params = leaf_params(role, name, validity)?;
        let cert = params.signed_by(&key, &self.issuer).map_err(sign_err)?;
        Ok(IssuedCert {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }
}

/// What every leaf carries (module doc): subject, the one role URI SAN,
/// serverAuth + clientAuth, digitalSignature + keyEncipherment, the
/// validity, an authority key identifier.
fn leaf_params(role: Role, name: &str, validity: Validity) -> Result<CertificateParams, CertError> {
    let subject = role.uri(name);
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "mignet");
    dn.push(DnType::OrganizationalUnitName, role.as_str());
    dn.push(DnType::CommonName, name);
    params.distinguished_name = dn;
    params.subject_alt_names = vec![SanType::URI(subject.as_str().try_into().map_err(
        |source| CertError::Sign {
            subject: subject.clone(),
            source,
        },
    )?)];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.not_before = validity.not_before.into();
    params.not_after = validity.not_after.into();
    params.use_authority_key_identifier_extension = true;
    Ok(params)
}

/// The one identity of `role` among `sans`; anything else (no SAN, two
/// identities, a DNS name, another role) is an error naming what was found.
fn single_identity(role: Role, sans: &[SanType]) -> Result<Identity, CertError> {
    let found: Vec<String> = sans
        .iter()
        .map(|s| match s {
            SanType::URI(u) => u.as_str().to_string(),
            other => format!("{other:?}"),
        })
        .collect();
    match (sans, found.first().and_then(|u| parse_role_uri(u))) {
        ([SanType::URI(_)], Some(id)) if id.role == role.as_str() => Ok(id),
        _ => Err(CertError::CsrIdentity { role, found }),
    }
}

/// A new key pair and a PEM PKCS#10 request for `name` in `role`, asking
/// for what [`ClusterCa::sign_request`] issues (the role URI SAN,
/// serverAuth + clientAuth). The key never leaves the caller. Returns
/// `(csr_pem, key_pem)`.
pub fn request(role: Role, name: &str) -> Result<(String, String), CertError> {
    let key = KeyPair::generate().map_err(CertError::GenerateKey)?;
    let mut params = leaf_params(role, name, Validity::days_from_now(1))?;
    // A request carries no validity or key identifier; the signer decides.
    params.use_authority_key_identifier_extension = false;
    let csr = params
        .serialize_request(&key)
        .and_then(|c| c.pem())
        .map_err(|source| CertError::Sign {
            subject: role.uri(name),
            source,
        })?;
    Ok((csr, key.serialize_pem()))
}

/// The identities a PEM request asks for (its signature verified), for a
/// signer deciding whether to approve it before signing.
pub fn request_identities(csr_pem: &str) -> Result<Vec<String>, CertError> {
    let csr = CertificateSigningRequestParams::from_pem(csr_pem).map_err(CertError::ParseCsr)?;
    Ok(csr
        .params
        .subject_alt_names
        .iter()
        .map(|s| match s {
            SanType::URI(u) => u.as_str().to_string(),
            other => format!("{other:?}"),
        })
        .collect())
}

/// [`identities`] of the first certificate in a PEM chain.
pub fn identities_pem(cert_pem: &str) -> Result<Vec<Identity>, CertError> {
    let err = |detail: String| CertError::ParseCert {
        what: "identities".into(),
        detail,
    };
    let der = rustls::pki_types::pem::PemObject::from_pem_slice(cert_pem.as_bytes())
        .map(|d: rustls::pki_types::CertificateDer<'static>| d)
        .map_err(|e| err(e.to_string()))?;
    identities(&der).map_err(err)
}

/// The validity window of the first certificate in a PEM chain.
pub fn validity_of(cert_pem: &str) -> Result<Validity, CertError> {
    let err = |detail: String| CertError::ParseCert {
        what: "validity".into(),
        detail,
    };
    let der = rustls::pki_types::pem::PemObject::from_pem_slice(cert_pem.as_bytes())
        .map(|d: rustls::pki_types::CertificateDer<'static>| d)
        .map_err(|e| err(e.to_string()))?;
    let (_, cert) = X509Certificate::from_der(&der).map_err(|e| err(e.to_string()))?;
    let at = |t: i64| {
        u64::try_from(t)
            .map(|s| SystemTime::UNIX_EPOCH + Duration::from_secs(s))
            .map_err(|_| err(format!("timestamp {t} before 1970")))
    };
    Ok(Validity {
        not_before: at(cert.validity().not_before.timestamp())?,
        not_after: at(cert.validity().not_after.timestamp())?,
    })
}

/// Write `ca.crt`, `tls.crt`, `tls.key` into `dir` (created if missing).
///
/// Each file is written to a temporary name and renamed into place, so a reloader
/// polling the directory never reads half a file; the key is mode 0600. The key is
/// renamed before the certificate: a reader that sees the new certificate with the old
/// key reports a mismatch and retries on the next poll, never a silent mix.
pub fn write_tls_dir(dir: &Path, ca_pem: &str, leaf: &IssuedCert) -> Result<(), CertError> {
    fs::create_dir_all(dir).map_err(|source| CertError::Write {
        path: dir.to_path_buf(),
        source,
    })?;
    write_atomic(&dir.join(KEY_FILE), leaf.key_pem.as_bytes(), 0o600)?;
    write_atomic(&dir.join(CERT_FILE), leaf.cert_pem.as_bytes(), 0o644)?;
    write_atomic(&dir.join(CA_FILE), ca_pem.as_bytes(), 0o644)?;
    Ok(())
}

/// Write a file via temp + rename with the given mode.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<(), CertError> {
    use std::os::unix::fs::OpenOptionsExt;
    let err = |source| CertError::Write {
        path: path.to_path_buf(),
        source,
    };
    let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)
        .map_err(err)?;
    f.write_all(bytes).map_err(err)?;
    f.sync_all().map_err(err)?;
    fs::rename(&tmp, path).map_err(err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn role_uri_round_trip() {
        let uri = Role::Agent.uri("node-a");
        assert_eq!(uri, "spiffe://mignet/agent/node-a");
        assert_eq!(
            parse_role_uri(&uri),
            Some(Identity {
                role: "agent".into(),
                name: "node-a".into()
            })
        );
    }

    #[test]
    fn foreign_uris_are_not_identities() {
        for uri in [
            "spiffe://other/agent/node-a",
            "spiffe://mignet/agent",
            "spiffe://mignet/agent/",
            "spiffe://mignet//node-a",
            "spiffe://mignet/agent/a/b",
            "https://mignet/agent/node-a",
        ] {
            assert_eq!(parse_role_uri(uri), None, "{uri}");
        }
    }

    #[test]
    fn issued_agent_cert_carries_its_role() {
        let ca = ClusterCa::generate("test CA", Validity::days_from_now(1)).unwrap();
        let leaf = ca
            .issue(Role::Agent, "node-a", Validity::days_from_now(1))
            .unwrap();
        let der = rustls::pki_types::pem::PemObject::from_pem_slice(leaf.cert_pem.as_bytes())
            .map(|d: rustls::pki_types::CertificateDer<'static>| d)
            .unwrap();
        assert_eq!(
            identities(&der).unwrap(),
            vec![Identity {
                role: "agent".into(),
                name: "node-a".into()
            }]
        );
    }

    #[test]
    fn ca_reloads_from_pem_and_still_signs() {
        let ca = ClusterCa::generate("test CA", Validity::days_from_now(1)).unwrap();
        let again = ClusterCa::from_pem(ca.cert_pem(), &ca.key_pem()).unwrap();
        again
            .issue(Role::Manager, "m", Validity::days_from_now(1))
            .unwrap();
    }

    #[test]
    fn a_request_is_signed_for_its_one_identity_only() {
        let ca = ClusterCa::generate("test CA", Validity::days_from_now(1)).unwrap();
        let (csr, key) = request(Role::Agent, "node-a").unwrap();
        assert_eq!(
            request_identities(&csr).unwrap(),
            vec!["spiffe://mignet/agent/node-a".to_string()]
        );
        let (cert, id) = ca
            .sign_request(Role::Agent, &csr, Validity::days_from_now(1))
            .unwrap();
        assert_eq!(id.name, "node-a");
        let der = rustls::pki_types::pem::PemObject::from_pem_slice(cert.as_bytes())
            .map(|d: rustls::pki_types::CertificateDer<'static>| d)
            .unwrap();
        assert_eq!(identities(&der).unwrap(), vec![id.clone()]);
        assert_eq!(identities_pem(&cert).unwrap(), vec![id]);
        // The key the requester kept matches the certificate.
        let leaf = IssuedCert {
            cert_pem: cert.clone(),
            key_pem: key,
        };
        let dir = std::env::temp_dir().join(format!("mignet-csr-{}", std::process::id()));
        write_tls_dir(&dir, ca.cert_pem(), &leaf).unwrap();
        let loaded = crate::tls::load_configs(
            &crate::tls::TlsPaths::in_dir(&dir),
            &crate::tls::TlsSettings::default(),
            SystemTime::now(),
        );
        let _ = std::fs::remove_dir_all(&dir);
        loaded.unwrap();
        let v = validity_of(&cert).unwrap();
        assert!(v.not_after > v.not_before);
    }

    #[test]
    fn requests_for_another_role_or_no_identity_are_refused() {
        let ca = ClusterCa::generate("test CA", Validity::days_from_now(1)).unwrap();
        let (csr, _) = request(Role::Manager, "m").unwrap();
        let e = ca
            .sign_request(Role::Agent, &csr, Validity::days_from_now(1))
            .unwrap_err();
        assert!(e.to_string().contains("spiffe://mignet/manager/m"), "{e}");
        assert!(ca
            .sign_request(Role::Agent, "not a csr", Validity::days_from_now(1))
            .is_err());
    }
}
