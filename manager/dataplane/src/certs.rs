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
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
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
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "mignet");
        dn.push(DnType::OrganizationalUnitName, role.as_str());
        dn.push(DnType::CommonName, name);
        params.distinguished_name = dn;
        params.subject_alt_names =
            vec![SanType::URI(subject.as_str().try_into().map_err(sign_err)?)];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.not_before = validity.not_before.into();
        params.not_after = validity.not_after.into();
        params.use_authority_key_identifier_extension = true;
        let cert = params.signed_by(&key, &self.issuer).map_err(sign_err)?;
        Ok(IssuedCert {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }
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
}
