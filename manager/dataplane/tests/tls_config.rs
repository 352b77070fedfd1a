//! Start-up validation of the TLS directory: one specific error per problem,
//! and reload when the files change.

mod proxy_support;

use std::fs;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use mignet_dataplane::certs::{self, ClusterCa, Role, Validity};
use mignet_dataplane::tls::{
    load_configs, FileKind, ReloadingTls, TlsError, TlsPaths, TlsSettings,
};
use proxy_support::{Pki, TempDir};

fn load(dir: &std::path::Path) -> Result<mignet_dataplane::tls::TlsConfigs, TlsError> {
    load_configs(
        &TlsPaths::in_dir(dir),
        &TlsSettings::default(),
        SystemTime::now(),
    )
}

#[test]
fn valid_directory_loads_with_agent_identity() {
    let tmp = TempDir::new("mgtls-cfg");
    let pki = Pki::new("cluster CA");
    let dir = pki.agent_dir(tmp.path(), "node-a");
    let configs = load(&dir).unwrap();
    assert_eq!(configs.identity.role, "agent");
    assert_eq!(configs.identity.name, "node-a");
    // Bulk-data suite first on both sides (the server follows the client's order).
    for provider in [
        configs.client.crypto_provider(),
        configs.server.crypto_provider(),
    ] {
        assert_eq!(
            provider.cipher_suites[0].suite(),
            rustls::CipherSuite::TLS13_AES_128_GCM_SHA256
        );
    }
}

#[test]
fn each_missing_file_is_named() {
    let tmp = TempDir::new("mgtls-cfg");
    let pki = Pki::new("cluster CA");
    for (file, kind) in [
        (certs::CA_FILE, FileKind::Ca),
        (certs::CERT_FILE, FileKind::Cert),
        (certs::KEY_FILE, FileKind::Key),
    ] {
        let dir = pki.agent_dir(tmp.path(), &format!("missing-{file}"));
        fs::remove_file(dir.join(file)).unwrap();
        match load(&dir) {
            Err(TlsError::MissingFile { kind: k, path }) => {
                assert_eq!(k, kind);
                assert_eq!(path, dir.join(file));
            }
            other => panic!("{file}: expected MissingFile, got {other:?}"),
        }
    }
}

#[test]
fn bad_pem_and_empty_files_are_reported() {
    let tmp = TempDir::new("mgtls-cfg");
    let pki = Pki::new("cluster CA");

    let dir = pki.agent_dir(tmp.path(), "badpem");
    fs::write(
        dir.join(certs::CERT_FILE),
        "-----BEGIN CERTIFICATE-----\n!!!not base64!!!\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    assert!(
        matches!(
            load(&dir),
            Err(TlsError::BadPem {
                kind: FileKind::Cert,
                ..
            })
        ),
        "{:?}",
        load(&dir)
    );

    let dir = pki.agent_dir(tmp.path(), "nocert");
    fs::write(dir.join(certs::CA_FILE), "just text\n").unwrap();
    assert!(
        matches!(
            load(&dir),
            Err(TlsError::Empty {
                kind: FileKind::Ca,
                ..
            })
        ),
        "{:?}",
        load(&dir)
    );

    let dir = pki.agent_dir(tmp.path(), "nokey");
    fs::write(dir.join(certs::KEY_FILE), "").unwrap();
    let err = load(&dir).unwrap_err();
    assert!(
        matches!(
            err,
            TlsError::Empty {
                kind: FileKind::Key,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("tls.key"), "{err}");
}

#[test]
fn key_of_another_certificate_is_a_mismatch() {
    let tmp = TempDir::new("mgtls-cfg");
    let pki = Pki::new("cluster CA");
    let dir = pki.agent_dir(tmp.path(), "node-a");
    let other = pki.issue(Role::Agent, "node-b");
    fs::write(dir.join(certs::KEY_FILE), other.key_pem).unwrap();
    let err = load(&dir).unwrap_err();
    assert!(matches!(err, TlsError::KeyMismatch { .. }), "{err:?}");
}

#[test]
fn expired_and_not_yet_valid_certificates_are_refused_at_startup() {
    let tmp = TempDir::new("mgtls-cfg");
    let pki = Pki::new("cluster CA");
    let now = SystemTime::now();
    let past = Validity {
        not_before: now - Duration::from_secs(10 * 86_400),
        not_after: now - Duration::from_secs(86_400),
    };
    let leaf = pki.ca.issue(Role::Agent, "old", past).unwrap();
    let dir = tmp.path().join("expired");
    certs::write_tls_dir(&dir, pki.ca.cert_pem(), &leaf).unwrap();
    let err = load(&dir).unwrap_err();
    assert!(
        matches!(
            err,
            TlsError::Expired {
                kind: FileKind::Cert,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("expired"), "{err}");

    let future = Validity {
        not_before: now + Duration::from_secs(86_400),
        not_after: now + Duration::from_secs(2 * 86_400),
    };
    let leaf = pki.ca.issue(Role::Agent, "early", future).unwrap();
    let dir = tmp.path().join("early");
    certs::write_tls_dir(&dir, pki.ca.cert_pem(), &leaf).unwrap();
    assert!(matches!(load(&dir), Err(TlsError::NotYetValid { .. })));

    // An expired CA is reported against the CA bundle.
    let old_ca = ClusterCa::generate("old CA", past).unwrap();
    let leaf = old_ca
        .issue(Role::Agent, "n", Validity::days_from_now(1))
        .unwrap();
    let dir = tmp.path().join("oldca");
    certs::write_tls_dir(&dir, old_ca.cert_pem(), &leaf).unwrap();
    assert!(matches!(
        load(&dir),
        Err(TlsError::Expired {
            kind: FileKind::Ca,
            ..
        })
    ));
}

#[test]
fn certificate_of_another_role_or_ca_is_refused_at_startup() {
    let tmp = TempDir::new("mgtls-cfg");
    let pki = Pki::new("cluster CA");

    let dir = tmp.path().join("manager");
    certs::write_tls_dir(&dir, pki.ca.cert_pem(), &pki.issue(Role::Manager, "m")).unwrap();
    let err = load(&dir).unwrap_err();
    assert!(matches!(err, TlsError::WrongRole { .. }), "{err:?}");

    let foreign = Pki::new("foreign CA");
    let dir = tmp.path().join("foreign");
    certs::write_tls_dir(&dir, pki.ca.cert_pem(), &foreign.issue(Role::Agent, "x")).unwrap();
    let err = load(&dir).unwrap_err();
    assert!(matches!(err, TlsError::NotIssuedByCa { .. }), "{err:?}");

    // A leaf in the CA bundle is not a CA.
    let dir = tmp.path().join("leafca");
    let leaf = pki.issue(Role::Agent, "y");
    certs::write_tls_dir(&dir, &leaf.cert_pem, &leaf).unwrap();
    let err = load(&dir).unwrap_err();
    assert!(matches!(err, TlsError::NotACa { .. }), "{err:?}");
}

#[test]
fn reload_picks_up_replaced_files_and_keeps_old_config_on_broken_ones() {
    let tmp = TempDir::new("mgtls-cfg");
    let pki = Pki::new("CA one");
    let dir = pki.agent_dir(tmp.path(), "node-a");
    let tls = ReloadingTls::load(TlsPaths::in_dir(&dir), TlsSettings::default()).unwrap();
    let first = tls.current();
    assert!(!tls.reload_if_changed().unwrap(), "nothing changed yet");

    // A broken key: the reload fails, the old configs stay, the error is kept.
    let good_key = fs::read(dir.join(certs::KEY_FILE)).unwrap();
    certs::write_atomic(&dir.join(certs::KEY_FILE), b"garbage", 0o600).unwrap();
    assert!(tls.reload_if_changed().is_err());
    assert!(Arc::ptr_eq(&first, &tls.current()));
    assert!(tls.last_error().is_some());
    certs::write_atomic(&dir.join(certs::KEY_FILE), &good_key, 0o600).unwrap();

    // New CA and certificate: new configs with the new identity.
    let pki2 = Pki::new("CA two");
    certs::write_tls_dir(
        &dir,
        pki2.ca.cert_pem(),
        &pki2.issue(Role::Agent, "node-a2"),
    )
    .unwrap();
    assert!(tls.reload_if_changed().unwrap());
    let second = tls.current();
    assert!(!Arc::ptr_eq(&first, &second));
    assert_eq!(second.identity.name, "node-a2");
    assert!(tls.last_error().is_none());
}
