use std::sync::atomic::{AtomicU32, Ordering};

use serde_json::json;

use super::*;
use crate::api::{VirtualMachineInstance, VirtualMachineInstanceMigration};

struct TempDir(PathBuf);
impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn temp() -> TempDir {
    static N: AtomicU32 = AtomicU32::new(0);
    let p = std::env::temp_dir().join(format!(
        "mignet-store-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    ));
    TempDir(p)
}

fn vmim(name: &str) -> Value {
    json!({
        "apiVersion": "kubevirt.io/v1",
        "kind": "VirtualMachineInstanceMigration",
        "metadata": {"name": name, "namespace": "ns1"},
        "spec": {"vmiName": "vmi-fedora"},
        "status": {"phase": "Succeeded"}
    })
}

fn rv(v: &Value) -> u64 {
    stored_version(v)
}

#[test]
fn create_assigns_server_fields_and_drops_status() {
    let d = temp();
    let s = Store::open(&d.0).unwrap();
    let o = s.create_value(vmim("m1")).unwrap();
    assert_eq!(rv(&o), 1);
    assert_eq!(o["metadata"]["generation"], 1);
    assert_eq!(o["metadata"]["uid"].as_str().unwrap().len(), 36);
    assert!(o["metadata"]["creationTimestamp"]
        .as_str()
        .unwrap()
        .ends_with('Z'));
    assert!(o.get("status").is_none(), "status is not set by create");
    let e = s.create_value(vmim("m1")).unwrap_err();
    assert!(matches!(e, StoreError::AlreadyExists { .. }), "{e}");
    let o2 = s.create_value(vmim("m2")).unwrap();
    assert_ne!(o["metadata"]["uid"], o2["metadata"]["uid"]);
    assert_eq!(s.revision().unwrap(), 2);
}

#[test]
fn stale_resource_version_conflicts() {
    let d = temp();
    let s = Store::open(&d.0).unwrap();
    let o = s.create_value(vmim("m1")).unwrap();
    let mut a = o.clone();
    a["spec"]["vmiName"] = json!("other");
    let a = s.update_value(a).unwrap();
    assert_eq!(
        a["metadata"]["generation"], 2,
        "spec change bumps generation"
    );
    let mut stale = o.clone();
    stale["spec"]["vmiName"] = json!("third");
    let e = s.update_value(stale).unwrap_err();
    assert!(e.is_conflict(), "{e}");
    // Status writes are conditional too.
    let e = s.update_status_value(o).unwrap_err();
    assert!(e.is_conflict(), "{e}");
    // A metadata-only change does not bump generation.
    let mut b = a.clone();
    b["metadata"]["labels"] = json!({"x": "y"});
    let b = s.update_value(b).unwrap();
    assert_eq!(b["metadata"]["generation"], 2);
}

#[test]
fn status_is_kept_apart_from_spec() {
    let d = temp();
    let s = Store::open(&d.0).unwrap();
    let o = s.create_value(vmim("m1")).unwrap();
    let mut st = o.clone();
    st["status"] = json!({"phase": "Running"});
    st["spec"]["vmiName"] = json!("ignored");
    let st = s.update_status_value(st).unwrap();
    assert_eq!(st["status"]["phase"], "Running");
    assert_eq!(
        st["spec"]["vmiName"], "vmi-fedora",
        "status update keeps spec"
    );
    let mut up = st.clone();
    up["status"] = json!({"phase": "Failed"});
    up["spec"]["vmiName"] = json!("vmi-2");
    let up = s.update_value(up).unwrap();
    assert_eq!(up["status"]["phase"], "Running", "spec update keeps status");
    assert_eq!(up["spec"]["vmiName"], "vmi-2");
}

#[test]
fn finalizers_hold_deletion_until_removed() {
    let d = temp();
    let s = Store::open(&d.0).unwrap();
    let mut o = vmim("m1");
    o["metadata"]["finalizers"] = json!(["mignet.io/abort"]);
    s.create_value(o).unwrap();
    let key = Key::new("VirtualMachineInstanceMigration", "ns1", "m1");
    let Deleted::Pending(marked) = s.delete(&key).unwrap() else {
        panic!("finalizer must hold the object")
    };
    assert!(marked["metadata"]["deletionTimestamp"].is_string());
    let still = s.get_value(&key).unwrap().expect("still there");
    // A client cannot clear deletionTimestamp.
    let mut undo = still.clone();
    undo["metadata"]
        .as_object_mut()
        .unwrap()
        .remove("deletionTimestamp");
    let kept = s.update_value(undo).unwrap();
    assert!(kept["metadata"]["deletionTimestamp"].is_string());
    let mut done = kept.clone();
    done["metadata"]["finalizers"] = json!([]);
    s.update_value(done).unwrap();
    assert!(
        s.get_value(&key).unwrap().is_none(),
        "gone once finalizers are removed"
    );
    assert!(s.delete(&key).unwrap_err().is_not_found());
}

#[test]
fn typed_access_and_modify() {
    let d = temp();
    let s = Store::open(&d.0).unwrap();
    let m: VirtualMachineInstanceMigration = serde_json::from_value(vmim("m1")).unwrap();
    s.create(&m).unwrap();
    let got: VirtualMachineInstanceMigration = s.get("ns1", "m1").unwrap().unwrap();
    assert_eq!(got.spec.vmi_name, "vmi-fedora");
    let changed = s
        .modify::<VirtualMachineInstanceMigration>("ns1", "m1", |m| m.spec.vmi_name = "x".into())
        .unwrap();
    assert_eq!(changed.spec.vmi_name, "x");
    assert_eq!(
        s.list::<VirtualMachineInstanceMigration>(None)
            .unwrap()
            .len(),
        1
    );
    assert_eq!(
        s.list::<VirtualMachineInstanceMigration>(Some("other"))
            .unwrap()
            .len(),
        0
    );
    assert!(s
        .get::<VirtualMachineInstance>("ns1", "m1")
        .unwrap()
        .is_none());
}

#[test]
fn watchers_see_changes_in_order() {
    let d = temp();
    let s = Store::open(&d.0).unwrap();
    let mut rx = s.subscribe();
    let o = s.create_value(vmim("m1")).unwrap();
    s.update_status_value(o).unwrap();
    s.delete(&Key::new("VirtualMachineInstanceMigration", "ns1", "m1"))
        .unwrap();
    let types: Vec<(EventType, u64)> = (0..3)
        .map(|_| {
            let e = rx.try_recv().unwrap();
            (e.type_, e.resource_version)
        })
        .collect();
    assert_eq!(
        types,
        vec![
            (EventType::Added, 1),
            (EventType::Modified, 2),
            (EventType::Deleted, 3)
        ]
    );
}

#[test]
fn survives_reopen_and_sees_other_writers() {
    let d = temp();
    let a = Store::open(&d.0).unwrap();
    a.create_value(vmim("m1")).unwrap();
    drop(a);
    let b = Store::open(&d.0).unwrap();
    let c = Store::open(&d.0).unwrap();
    assert_eq!(b.revision().unwrap(), 1);
    let since = b.revision().unwrap();
    let writer = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(100));
        c.create_value(vmim("m2")).unwrap();
    });
    let seen = b.wait_for_change(since, Duration::from_secs(10)).unwrap();
    writer.join().unwrap();
    assert_eq!(seen, 2);
    assert_eq!(
        b.list_values("VirtualMachineInstanceMigration", None)
            .unwrap()
            .len(),
        2
    );
}

#[test]
fn concurrent_writers_never_lose_an_update() {
    let d = temp();
    let s = std::sync::Arc::new(Store::open(&d.0).unwrap());
    let m: VirtualMachineInstanceMigration = serde_json::from_value(vmim("m1")).unwrap();
    s.create(&m).unwrap();
    let threads: Vec<_> = (0..4)
        .map(|_| {
            // Separate Store handles: the flock must exclude them like processes.
            let s2 = Store::open(s.root()).unwrap();
            std::thread::spawn(move || {
                for _ in 0..25 {
                    s2.modify::<VirtualMachineInstanceMigration>("ns1", "m1", |m| {
                        let n: u32 = m
                            .spec
                            .vmi_name
                            .strip_prefix('n')
                            .and_then(|x| x.parse().ok())
                            .unwrap_or(0);
                        m.spec.vmi_name = format!("n{}", n + 1);
                    })
                    .unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let m: VirtualMachineInstanceMigration = s.get("ns1", "m1").unwrap().unwrap();
    assert_eq!(m.spec.vmi_name, "n100");
    assert_eq!(m.metadata.generation, Some(101));
}

#[test]
fn keys_cannot_escape_the_store() {
    let d = temp();
    let s = Store::open(&d.0).unwrap();
    for (ns, name) in [("ns1", "../x"), ("..", "x"), ("ns1", "A"), ("ns1", "")] {
        let mut o = vmim("m");
        o["metadata"]["namespace"] = json!(ns);
        o["metadata"]["name"] = json!(name);
        let e = s.create_value(o).unwrap_err();
        assert!(matches!(e, StoreError::Invalid { .. }), "{ns}/{name}: {e}");
    }
}

#[test]
fn a_leftover_temp_file_is_not_an_object() {
    let d = temp();
    let s = Store::open(&d.0).unwrap();
    s.create_value(vmim("m1")).unwrap();
    let dir = d.0.join("objects/VirtualMachineInstanceMigration/ns1");
    std::fs::write(dir.join(".m2.json.tmp.1"), "{tor").unwrap();
    assert_eq!(
        s.list_values("VirtualMachineInstanceMigration", None)
            .unwrap()
            .len(),
        1
    );
}

#[test]
fn every_handle_on_a_store_shares_one_event_stream() {
    let d = temp();
    let a = Store::open(&d.0).unwrap();
    let b = Store::open(d.0.join(".").join("")).unwrap();
    let mut rx = a.subscribe();
    b.create_value(vmim("m1")).unwrap();
    let e = rx.try_recv().expect("a's subscriber sees b's write");
    assert_eq!(e.key.name, "m1");
    // Another store's writes are not mixed in.
    let other = temp();
    Store::open(&other.0)
        .unwrap()
        .create_value(vmim("m2"))
        .unwrap();
    assert!(rx.try_recv().is_err());
}

#[test]
fn a_garbled_revision_is_an_error_not_a_restart_at_zero() {
    let d = temp();
    let s = Store::open(&d.0).unwrap();
    s.create_value(vmim("m1")).unwrap();
    std::fs::write(d.0.join("revision"), "garbage\n").unwrap();
    let e = s.revision().unwrap_err().to_string();
    assert!(e.contains("revision") && e.contains("garbage"), "{e}");
    let e = s.create_value(vmim("m2")).unwrap_err().to_string();
    assert!(e.contains("garbage"), "{e}");
}

#[test]
fn a_write_after_the_store_was_removed_fails_and_brings_nothing_back() {
    // The race this guards: a writer holding the lock (its lock file open)
    // while the directory is removed, then writing its object and revision.
    let d = temp();
    let s = Store::open(&d.0).unwrap();
    s.create_value(vmim("m1")).unwrap();
    std::fs::remove_dir_all(&d.0).unwrap();
    assert!(fs::write_revision(&d.0.join("revision"), 7).is_err());
    assert!(fs::write_json(&d.0.join("objects/k/ns/o.json"), &json!({})).is_err());
    assert!(s.create_value(vmim("m2")).is_err());
    assert!(!d.0.exists(), "a late write recreated {}", d.0.display());
}

/// A write that cannot finish (a full disk: ENOSPC) is simulated by a
/// directory where the write's temp file goes, so creating it fails.
fn block_temp_of(path: &Path) -> PathBuf {
    let name = path.file_name().unwrap().to_string_lossy().into_owned();
    let tmp = path
        .parent()
        .unwrap()
        .join(format!(".{name}.tmp.{}", std::process::id()));
    std::fs::create_dir(&tmp).unwrap();
    tmp
}

#[test]
fn a_write_that_fails_at_the_revision_never_hands_its_version_out_again() {
    let d = temp();
    let s = Store::open(&d.0).unwrap();
    let o = s.create_value(vmim("m1")).unwrap();
    let key = Key::of(&o).unwrap();
    let blocked = block_temp_of(&d.0.join("revision"));
    let mut changed = o.clone();
    changed["spec"]["vmiName"] = json!("other");
    assert!(s.update_value(changed).is_err());
    std::fs::remove_dir(&blocked).unwrap();
    // The object went to disk before the revision failed; whoever reads it
    // now sees its version, and the next write must be newer than that.
    let seen = s.get_value(&key).unwrap().unwrap();
    let mut again = seen.clone();
    again["spec"]["vmiName"] = json!("third");
    let next = s.update_value(again).unwrap();
    assert!(rv(&next) > rv(&seen), "{} after {}", rv(&next), rv(&seen));
    assert_eq!(s.revision().unwrap(), rv(&next));
    let status = s.update_status_value(next.clone()).unwrap();
    assert!(rv(&status) > rv(&next));
}

#[test]
fn a_write_that_fails_at_the_object_never_reuses_a_resource_version() {
    let d = temp();
    let s = Store::open(&d.0).unwrap();
    let o = s.create_value(vmim("m1")).unwrap();
    let path = s.object_path(&Key::of(&o).unwrap());
    let blocked = block_temp_of(&path);
    let mut changed = o.clone();
    changed["spec"]["vmiName"] = json!("other");
    assert!(s.update_value(changed.clone()).is_err());
    assert_eq!(s.get_value(&Key::of(&o).unwrap()).unwrap().unwrap(), o);
    std::fs::remove_dir(&blocked).unwrap();
    // Every version handed out is newer than every one before, whatever
    // failed in between: watchers skip what they have already seen.
    let next = s.update_value(changed).unwrap();
    assert!(rv(&next) > rv(&o), "{} after {}", rv(&next), rv(&o));
    assert!(s.revision().unwrap() >= rv(&next));
}
