//! whereabouts' flat file (`whereabouts.conf`), parsed and merged under a
//! real NAD's `ipam` as `mignet-ipam` does on every call.
//!
//! Properties:
//! - every refusal names the file and is code 7 at the CNI edge;
//! - a parsed file is a JSON object whose store-choosing keys have the
//!   right types (the parse checked them);
//! - merged under the seed NAD (which parses alone), the result either
//!   parses or fails with a CNI error that names the flat file (the only
//!   thing that changed);
//! - allocation stays proportional to the input.

use std::path::Path;

use mignet_cni::ipam::config::parse_netconf_with;
use mignet_cni::ipam::flatfile::FlatFile;
use mignet_cni::{CniError, Code};

const PATH: &str = "/fuzz/whereabouts.d/whereabouts.conf";

/// The `ipam` of examples/nad.yaml's config, without a store choice.
const NAD: &[u8] = br#"{"cniVersion":"1.0.0","name":"migration","type":"mignet-macvlan","master":"eth1","mode":"bridge","ipam":{"type":"whereabouts","range":"10.200.5.0/24","exclude":["10.200.5.0/30"]}}"#;

pub fn check(data: &[u8]) {
    let n = data.len();
    let flat = match crate::alloc_guard::bounded("FlatFile::parse", n, || {
        FlatFile::parse(PATH.into(), data)
    }) {
        Ok(f) => f,
        Err(e) => {
            let text = e.to_string();
            assert!(text.contains(PATH), "the file is not named: {text}");
            let cni = CniError::from(e);
            assert_eq!(cni.code, Code::InvalidConfig);
            assert!(cni.msg.contains(PATH), "{cni:?}");
            return;
        }
    };
    assert_eq!(flat.path, Path::new(PATH));
    match crate::alloc_guard::bounded("parse_netconf_with", n + NAD.len(), || {
        parse_netconf_with(NAD, Path::new("/fuzz/store"), Some(&flat))
    }) {
        Ok(conf) => {
            // Parsing succeeded with a flat file: only the Kubernetes store
            // may be chosen (a flat file means a cluster-wide setup).
            assert!(conf.ipam.kubernetes.is_some(), "{conf:?}");
        }
        Err(e) => {
            assert!(
                matches!(e.code, Code::InvalidConfig | Code::UnsupportedField),
                "{e:?}"
            );
            assert!(
                e.msg.contains(PATH) || e.details.contains(PATH),
                "a failure the flat file caused does not name it: {e:?}"
            );
        }
    }
}
