//! whereabouts' flat file (`whereabouts.conf`): the node-wide defaults that
//! whereabouts merges under every NAD's `ipam` object, most importantly the
//! datastore and its kubeconfig.
//!
//! Read as whereabouts reads it (`wa:pkg/config/config.go`, `GetFlatIPAM` and
//! `LoadIPAMConfig`, v0.9.2 to v0.9.4):
//! - candidates, in order: `ipam.configuration_path` (when given), then
//!   `/etc/kubernetes/cni/net.d/whereabouts.d/whereabouts.conf`,
//!   `/etc/cni/net.d/whereabouts.d/whereabouts.conf`,
//!   `/host/etc/cni/net.d/whereabouts.d/whereabouts.conf`;
//! - the first candidate that exists is the flat file. "Exists" is Go's
//!   `os.Stat` then `!os.IsNotExist`: a path that cannot even be stat'ed for
//!   another reason (EACCES, ENOTDIR) counts as present, and then fails to read;
//! - a file that cannot be read or is not JSON fails the whole call;
//! - `mergo.Merge(&nad, flat)`: a NAD key wins unless its value is Go's zero
//!   value (absent, null, "", 0, false, []), objects (Go structs such as
//!   `kubernetes`, `dns`) are merged key by key, and `enable_overlapping_ranges`
//!   is always the NAD's (whereabouts saves and restores it around the merge).
//!
//! Only `find` touches the file system; parsing and merging are pure.

use crate::error::{chain, CniError, Code};
use serde_json::{Map, Value};
use std::path::{Path, PathBuf};

/// whereabouts' fixed flat-file locations, searched after `configuration_path`.
pub const FLAT_FILE_PATHS: [&str; 3] = [
    "/etc/kubernetes/cni/net.d/whereabouts.d/whereabouts.conf",
    "/etc/cni/net.d/whereabouts.d/whereabouts.conf",
    "/host/etc/cni/net.d/whereabouts.d/whereabouts.conf",
];

/// Keys never taken from the flat file. whereabouts restores the NAD's
/// `enable_overlapping_ranges` after merging; `configuration_path` already
/// did its job (it chose this file).
const NOT_MERGED: [&str; 2] = ["enable_overlapping_ranges", "configuration_path"];

/// A flat file that was found and parsed.
#[derive(Debug, Clone, PartialEq)]
pub struct FlatFile {
    /// Where it was found (named in every message about it).
    pub path: PathBuf,
    /// Its top-level object: whereabouts decodes it as an `ipam` object.
    pub ipam: Map<String, Value>,
}

/// Why a flat file could not be used. Every variant names the file; all
/// are CNI code 7 (an invalid config), never a fall back to another store.
#[derive(Debug, thiserror::Error)]
pub enum FlatFileError {
    #[error("whereabouts flat file {}: cannot read it", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("whereabouts flat file {}: not valid JSON", path.display())]
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("whereabouts flat file {}: expected a JSON object, found {found}", path.display())]
    NotObject { path: PathBuf, found: String },
    #[error("whereabouts flat file {}: invalid {field} {value}: {why}", path.display())]
    Field {
        path: PathBuf,
        field: &'static str,
        value: String,
        why: &'static str,
    },
}

impl From<FlatFileError> for CniError {
    fn from(e: FlatFileError) -> Self {
        CniError::new(Code::InvalidConfig, chain(&e))
    }
}

/// The candidate paths in whereabouts' order: `configuration_path` first.
pub fn candidates(configuration_path: Option<&Path>) -> Vec<PathBuf> {
    configuration_path
        .map(Path::to_path_buf)
        .into_iter()
        .chain(FLAT_FILE_PATHS.iter().map(PathBuf::from))
        .collect()
}

/// Find and parse the flat file (the I/O edge). `Ok(None)`: no candidate
/// exists, which whereabouts refuses but we accept (the NAD alone then
/// decides, see `config::select_store`).
pub fn find(configuration_path: Option<&Path>) -> Result<Option<FlatFile>, FlatFileError> {
    for path in candidates(configuration_path) {
        match std::fs::read(&path) {
            Ok(bytes) => return FlatFile::parse(path, &bytes).map(Some),
            // Only "does not exist" moves on, as Go's os.IsNotExist: any
            // other failure means the file is there but unusable, and
            // skipping it could silently pick the node-local store.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(source) => return Err(FlatFileError::Read { path, source }),
        }
    }
    Ok(None)
}

impl FlatFile {
    /// Parse a flat file's bytes. Checks the types of the keys that choose
    /// the store (`datastore`, `kubernetes`, `kubernetes.kubeconfig`) so a
    /// mistake there names this file; other keys are checked by the NAD
    /// parser after the merge.
    pub fn parse(path: PathBuf, bytes: &[u8]) -> Result<FlatFile, FlatFileError> {
        let v: Value = match serde_json::from_slice(bytes) {
            Ok(v) => v,
            Err(source) => return Err(FlatFileError::Json { path, source }),
        };
        let Value::Object(ipam) = v else {
            return Err(FlatFileError::NotObject {
                path,
                found: json_kind(&v).to_string(),
            });
        };
        let field = |field, value: &Value, why| FlatFileError::Field {
            path: path.clone(),
            field,
            value: value.to_string(),
            why,
        };
        match get_ci(&ipam, "datastore") {
            None | Some(Value::String(_)) => {}
            Some(v) => return Err(field("datastore", v, "must be a string")),
        }
        match get_ci(&ipam, "kubernetes") {
            None => {}
            Some(Value::Object(k)) => match get_ci(k, "kubeconfig") {
                None | Some(Value::String(_)) => {}
                Some(v) => {
                    return Err(field(
                        "kubernetes.kubeconfig",
                        v,
                        "must be a string (a path)",
                    ))
                }
            },
            Some(v) => return Err(field("kubernetes", v, "must be an object")),
        }
        Ok(FlatFile { path, ipam })
    }
}

/// Merge the flat file under the NAD's `ipam` object as `mergo.Merge` does
/// (see the module comment). Returns the top-level keys that took a value
/// from the flat file, for messages.
pub fn merge(nad: &mut Map<String, Value>, flat: &Map<String, Value>) -> Vec<String> {
    let mut taken = Vec::new();
    for (key, fv) in flat {
        if NOT_MERGED.iter().any(|k| k.eq_ignore_ascii_case(key)) {
            continue;
        }
        if merge_key(nad, key, fv) {
            taken.push(key.clone());
        }
    }
    taken
}

/// Merge one key; true if anything came from `fv`.
fn merge_key(dst: &mut Map<String, Value>, key: &str, fv: &Value) -> bool {
    if fv.is_null() {
        // mergo never copies a nil source value.
        return false;
    }
    // Go's decoder matches keys case-insensitively, so the NAD's `Kubernetes`
    // and the file's `kubernetes` are one field.
    let existing = if dst.contains_key(key) {
        Some(key.to_string())
    } else {
        dst.keys().find(|k| k.eq_ignore_ascii_case(key)).cloned()
    };
    match existing.as_ref().and_then(|k| dst.get_mut(k)) {
        Some(Value::Object(d)) => match fv {
            // A Go struct: merged field by field.
            Value::Object(f) => f
                .iter()
                .fold(false, |any, (k, v)| merge_key(d, k, v) || any),
            _ => false,
        },
        Some(dv) if !is_go_zero(dv) => false,
        Some(dv) => {
            *dv = fv.clone();
            true
        }
        None => {
            dst.insert(key.to_string(), fv.clone());
            true
        }
    }
}

/// Go's zero value as JSON decodes it: mergo fills only those.
fn is_go_zero(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::Bool(b) => !b,
        Value::Number(n) => n.as_f64() == Some(0.0),
        Value::String(s) => s.is_empty(),
        Value::Array(a) => a.is_empty(),
        Value::Object(_) => false,
    }
}

fn get_ci<'a>(m: &'a Map<String, Value>, key: &str) -> Option<&'a Value> {
    m.get(key)
        .or_else(|| {
            m.iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(key))
                .map(|(_, v)| v)
        })
        .filter(|v| !v.is_null())
}

fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn obj(v: Value) -> Map<String, Value> {
        match v {
            Value::Object(m) => m,
            _ => unreachable!("test literal is an object"),
        }
    }

    #[test]
    fn candidates_put_configuration_path_first() {
        let c = candidates(Some(Path::new("/tmp/wa.conf")));
        assert_eq!(
            c,
            vec![
                PathBuf::from("/tmp/wa.conf"),
                PathBuf::from("/etc/kubernetes/cni/net.d/whereabouts.d/whereabouts.conf"),
                PathBuf::from("/etc/cni/net.d/whereabouts.d/whereabouts.conf"),
                PathBuf::from("/host/etc/cni/net.d/whereabouts.d/whereabouts.conf"),
            ]
        );
        assert_eq!(candidates(None).len(), 3);
        assert_eq!(candidates(None)[0], PathBuf::from(FLAT_FILE_PATHS[0]));
    }

    #[test]
    fn merge_fills_only_what_the_nad_lacks() {
        let mut nad = obj(json!({"type":"whereabouts","range":"10.200.5.0/24",
            "gateway":"10.200.5.1","log_file":"","dns":{"domain":"nad"}}));
        let flat = obj(json!({"datastore":"kubernetes",
            "kubernetes":{"kubeconfig":"/etc/cni/net.d/wa.kubeconfig"},
            "gateway":"10.9.9.9","log_file":"/tmp/wa.log","range":"10.0.0.0/8",
            "dns":{"domain":"flat","nameservers":["10.0.0.53"]}}));
        let mut taken = merge(&mut nad, &flat);
        taken.sort();
        assert_eq!(taken, ["datastore", "dns", "kubernetes", "log_file"]);
        // NAD values win; Go zero values ("") are filled; structs merge per field.
        assert_eq!(nad["gateway"], "10.200.5.1");
        assert_eq!(nad["range"], "10.200.5.0/24");
        assert_eq!(nad["log_file"], "/tmp/wa.log");
        assert_eq!(
            nad["kubernetes"]["kubeconfig"],
            "/etc/cni/net.d/wa.kubeconfig"
        );
        assert_eq!(nad["dns"]["domain"], "nad");
        assert_eq!(nad["dns"]["nameservers"][0], "10.0.0.53");
    }

    #[test]
    fn merge_keeps_nad_kubeconfig_and_fills_an_empty_one() {
        let flat = obj(json!({"kubernetes":{"kubeconfig":"/flat"}}));
        let mut nad = obj(json!({"kubernetes":{"kubeconfig":"/nad"}}));
        assert!(merge(&mut nad, &flat).is_empty());
        assert_eq!(nad["kubernetes"]["kubeconfig"], "/nad");
        // Case-insensitive keys, and "" is Go's zero value.
        let mut nad = obj(json!({"Kubernetes":{"kubeconfig":""}}));
        assert_eq!(merge(&mut nad, &flat), ["kubernetes"]);
        assert_eq!(nad["Kubernetes"]["kubeconfig"], "/flat");
        assert!(!nad.contains_key("kubernetes"));
    }

    #[test]
    fn merge_never_takes_overlapping_ranges_or_configuration_path() {
        let flat = obj(
            json!({"enable_overlapping_ranges":false,"configuration_path":"/x",
            "datastore":null}),
        );
        let mut nad = obj(json!({"type":"whereabouts"}));
        assert!(merge(&mut nad, &flat).is_empty());
        assert_eq!(nad, obj(json!({"type":"whereabouts"})));
    }

    #[test]
    fn parse_names_the_file_and_the_problem() {
        let p = || PathBuf::from("/tmp/wa.conf");
        let msg = |b: &[u8]| CniError::from(FlatFile::parse(p(), b).unwrap_err());
        let e = msg(b"{\"datastore\": ");
        assert_eq!(e.code, Code::InvalidConfig);
        assert!(
            e.msg
                .starts_with("whereabouts flat file /tmp/wa.conf: not valid JSON: "),
            "{}",
            e.msg
        );
        let e = msg(b"[1]");
        assert_eq!(
            e.msg,
            "whereabouts flat file /tmp/wa.conf: expected a JSON object, found a list"
        );
        let e = msg(br#"{"kubernetes":"/k"}"#);
        assert_eq!(
            e.msg,
            "whereabouts flat file /tmp/wa.conf: invalid kubernetes \"/k\": must be an object"
        );
        let e = msg(br#"{"kubernetes":{"kubeconfig":1}}"#);
        assert!(
            e.msg.contains("invalid kubernetes.kubeconfig 1"),
            "{}",
            e.msg
        );
        let e = msg(br#"{"datastore":true}"#);
        assert!(e.msg.contains("invalid datastore true"), "{}", e.msg);
        let ok = FlatFile::parse(
            p(),
            br#"{"datastore":"kubernetes","kubernetes":{"kubeconfig":"/k"}}"#,
        )
        .unwrap();
        assert_eq!(ok.path, p());
        assert_eq!(ok.ipam["kubernetes"]["kubeconfig"], "/k");
    }

    #[test]
    fn find_reads_configuration_path_and_fails_on_an_unreadable_one() {
        let dir = std::env::temp_dir().join(format!("mignet-flatfile-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("whereabouts.conf");
        std::fs::write(&file, br#"{"datastore":"kubernetes"}"#).unwrap();
        let f = find(Some(&file)).unwrap().unwrap();
        assert_eq!(f.path, file);
        // A directory exists but cannot be read as a file: an error, as in
        // whereabouts, never "no flat file".
        let e = CniError::from(find(Some(&dir)).unwrap_err());
        assert_eq!(e.code, Code::InvalidConfig);
        assert!(
            e.msg.starts_with(&format!(
                "whereabouts flat file {}: cannot read it: ",
                dir.display()
            )),
            "{}",
            e.msg
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
