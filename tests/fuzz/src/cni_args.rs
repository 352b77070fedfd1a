//! `CNI_ARGS` (`K=V;K2=V2`), as `skel` parses it for every verb.
//!
//! Properties: the pairs re-join into a string that parses to the same
//! pairs; no key contains `=` and nothing contains `;`; an error is code 4
//! (invalid environment) naming `CNI_ARGS`; allocation stays proportional.

use mignet_cni::skel::parse_cni_args;
use mignet_cni::Code;

pub fn check(data: &[u8]) {
    // The runtime passes an environment string; skel reads it with
    // `std::env::var`, so non-UTF-8 never reaches the parser.
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    let parsed = crate::alloc_guard::bounded("parse_cni_args", s.len(), || parse_cni_args(s));
    match parsed {
        Ok(pairs) => {
            assert!(pairs.len() <= s.matches(';').count() + 1);
            for (k, v) in &pairs {
                assert!(!k.contains('=') && !k.contains(';') && !v.contains(';'));
            }
            let joined = pairs
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(";");
            assert_eq!(
                parse_cni_args(&joined).expect("re-joined pairs parse"),
                pairs
            );
        }
        Err(e) => {
            assert_eq!(e.code, Code::InvalidEnvironment, "{e:?}");
            assert!(e.msg.starts_with("CNI_ARGS: "), "{e:?}");
        }
    }
}
