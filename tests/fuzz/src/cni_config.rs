//! The network config on a CNI plugin's stdin: macvlan's strict (ADD,
//! CHECK) and lenient (DEL) parsers and the IPAM's `ipam` parser, alone and
//! with a whereabouts flat file merged under it.
//!
//! Properties:
//! - every error carries the CNI code for its kind: 6 (decode) for input
//!   that is not a JSON object of the right shape, 7 (invalid config) or 2
//!   (unsupported field) otherwise, and names the field: a code-7 message
//!   starts with `invalid <field>` or `missing <field>`, a decode error of a
//!   JSON object names the field whose type is wrong;
//! - DEL accepts everything ADD accepts, and sees the same IPAM type;
//! - parsed ranges are sane: first <= last, both inside the subnet, every
//!   exclusion inside the subnet's offsets;
//! - allocation stays proportional to the input.

use std::path::Path;

use mignet_cni::ipam::config::{parse_netconf, parse_netconf_with};
use mignet_cni::ipam::flatfile::FlatFile;
use mignet_cni::macvlan::{parse_config, parse_del_config};
use mignet_cni::{CniError, Code};

/// Every top-level key a field-naming message may start with.
const FIELDS: &[&str] = &[
    "cniVersion",
    "name",
    "master",
    "mode",
    "mtu",
    "mac",
    "linkInContainer",
    "bcqueuelen",
    "ipam",
    "dns",
    "runtimeConfig",
    "prevResult",
    "args",
    "cni.dev/valid-attachments",
    "cni.dev/attachments",
];

fn names_a_field(rest: &str) -> bool {
    let field: String = rest
        .chars()
        .take_while(|c| !c.is_whitespace() && *c != ':')
        .collect();
    FIELDS.iter().any(|f| {
        field == *f || field.starts_with(&format!("{f}.")) || field.starts_with(&format!("{f}["))
    })
}

fn is_json_object(data: &[u8]) -> bool {
    matches!(
        serde_json::from_slice::<serde_json::Value>(data),
        Ok(serde_json::Value::Object(_))
    )
}

fn check_error(what: &str, data: &[u8], e: &CniError) {
    match e.code {
        Code::Decode => {
            assert!(e.msg.starts_with("failed to decode"), "{what}: {e:?}");
            // A JSON object that failed to decode had a field of the wrong
            // type: the message must say which.
            if is_json_object(data) && e.msg.contains("field") {
                assert!(
                    !e.msg.contains("field \"?\""),
                    "{what}: field not named: {e:?}"
                );
            }
        }
        Code::InvalidConfig => {
            let rest = e
                .msg
                .strip_prefix("invalid ")
                .or_else(|| e.msg.strip_prefix("missing "));
            match rest {
                Some(rest) => assert!(names_a_field(rest), "{what}: field not named: {e:?}"),
                None => assert!(
                    e.msg.starts_with("whereabouts flat file "),
                    "{what}: code 7 without a field: {e:?}"
                ),
            }
        }
        Code::UnsupportedField => {
            assert!(
                e.msg.starts_with("unsupported ") && names_a_field(&e.msg["unsupported ".len()..]),
                "{what}: {e:?}"
            );
        }
        other => panic!("{what}: unexpected code {other:?}: {e:?}"),
    }
}

pub fn check(data: &[u8]) {
    use crate::alloc_guard::bounded;
    let n = data.len();

    let add = bounded("macvlan parse_config", n, || parse_config(data));
    let del = bounded("macvlan parse_del_config", n, || parse_del_config(data));
    match (&add, &del) {
        (Ok(a), Ok(d)) => assert_eq!(a.ipam_type, d.ipam_type, "ADD and DEL disagree"),
        (Ok(a), Err(e)) => panic!("DEL refuses what ADD accepts ({a:?}): {e:?}"),
        (Err(e), _) => check_error("macvlan ADD", data, e),
    }
    if let Err(e) = &del {
        assert_eq!(e.code, Code::Decode, "DEL is lenient: {e:?}");
    }

    let store = Path::new("/fuzz/store");
    let ipam = bounded("ipam parse_netconf", n, || parse_netconf(data, store));
    match &ipam {
        Ok(conf) => {
            for r in &conf.ipam.ranges {
                assert!(r.first <= r.last, "{r:?}");
                assert!(r.subnet.contains(r.ip_at(r.first)), "{r:?}");
                assert!(r.subnet.contains(r.ip_at(r.last)), "{r:?}");
                for &(a, b) in &r.excluded {
                    assert!(a <= b, "{r:?}");
                    assert!(r.subnet.contains(r.ip_at(b)), "{r:?}");
                }
            }
        }
        Err(e) => check_error("ipam", data, e),
    }

    // The same config over a flat file naming a kubeconfig: the merge must
    // not break anything the NAD alone got right, and a new failure is one
    // the flat file caused, so it must name the file.
    let flat = FlatFile::parse(
        "/fuzz/whereabouts.conf".into(),
        br#"{"datastore":"kubernetes","kubernetes":{"kubeconfig":"/fuzz/kubeconfig"},"gateway":"10.200.5.1"}"#,
    )
    .expect("the fixed flat file parses");
    match bounded("ipam parse_netconf_with", n, || {
        parse_netconf_with(data, store, Some(&flat))
    }) {
        Ok(conf) => assert!(conf.ipam.kubernetes.is_some(), "{conf:?}"),
        Err(e) => {
            check_error("ipam with flat file", data, &e);
            if ipam.is_ok() {
                assert!(
                    e.msg.contains("/fuzz/whereabouts.conf")
                        || e.details.contains("/fuzz/whereabouts.conf"),
                    "a failure the flat file caused does not name it: {e:?}"
                );
            }
        }
    }
}
