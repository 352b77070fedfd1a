//! The file store on a full disk (issue 15): the store directory is a small
//! tmpfs of the test's own, filled to the last byte. ADD and DEL must fail
//! with code 11 naming the store and the OS error, leave every pool file
//! whole and no temp file behind, and work again once space is freed.
//! Needs root (mount); it fails, never skips, without it.

mod ipam_common;

use ipam_common::*;
use serde_json::Value;
use std::collections::BTreeSet;
use std::io::{ErrorKind, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

const POOL: &str = "10.200.5.0-24";
const RANGE: &str = r#""range":"10.200.5.0/24""#;

/// A tmpfs mounted on a fresh store directory; unmounted (lazily, so an open
/// file cannot keep it) on drop, also on panic, before `StoreDir` removes
/// the directory. Touches no other mount.
struct Tmpfs {
    store: StoreDir,
}

impl Tmpfs {
    fn mount(tag: &str, size: &str) -> Self {
        let store = StoreDir::new(tag);
        std::fs::create_dir_all(store.path()).unwrap();
        let out = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0755"),
                "tmpfs",
            ])
            .arg(store.path())
            .output()
            .expect("run mount");
        assert!(
            out.status.success(),
            "mount -t tmpfs on {} failed (this test needs root): {}",
            store.path().display(),
            String::from_utf8_lossy(&out.stderr)
        );
        Tmpfs { store }
    }

    fn path(&self) -> &Path {
        self.store.path()
    }

    /// Free bytes (for the superuser) on the tmpfs.
    fn free(&self) -> u64 {
        let s = nix::sys::statvfs::statvfs(self.path()).unwrap();
        s.blocks_free() * s.fragment_size()
    }

    /// Names in the store directory.
    fn listing(&self) -> BTreeSet<String> {
        std::fs::read_dir(self.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(self.path()).status();
    }
}

/// Append `chunk`-sized writes to `path` until the filesystem says ENOSPC;
/// returns the bytes written. Any other error fails the test.
fn fill(path: &Path, chunk: usize) -> u64 {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap();
    let buf = vec![0x5a_u8; chunk];
    let mut total = 0u64;
    loop {
        match f.write(&buf) {
            Ok(0) => panic!("write of {} returned 0", path.display()),
            Ok(n) => total += n as u64,
            Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => return total,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => panic!("fill {}: {e}", path.display()),
        }
    }
}

/// A CNI error reply on a full disk: code 11, the store path and the OS's
/// "No space left on device" in msg or details.
fn assert_disk_full_error(r: &Reply, store: &Path, what: &str) {
    assert!(!r.ok, "{what} succeeded on a full disk: {}", r.stdout);
    assert_eq!(r.code(), 11, "{what}: {}", r.stdout);
    let text = format!(
        "{} {}",
        r.msg(),
        r.json["details"].as_str().unwrap_or_default()
    );
    assert!(
        text.contains(&store.display().to_string()),
        "{what}: the error does not name the store {}: {text}",
        store.display()
    );
    assert!(
        text.contains("No space left on device"),
        "{what}: the error does not say the disk is full: {text}"
    );
}

fn with_prev(c: &str, addr: &str) -> String {
    let mut v: Value = serde_json::from_str(c).unwrap();
    v["prevResult"] = serde_json::json!({"cniVersion":"1.0.0","ips":[{"address":addr}]});
    v.to_string()
}

#[test]
fn a_full_disk_fails_add_and_del_with_code_11_and_leaves_the_store_whole() {
    let fs = Tmpfs::mount("diskfull", "64k");
    let store: PathBuf = fs.path().to_path_buf();
    let c = conf("1.0.0", &fs.store, RANGE);
    let pool_file = store.join(format!("{POOL}.json"));

    // Three allocations while there is room; one of them through a pod.
    let pod = "K8S_POD_NAMESPACE=ns1;K8S_POD_NAME=agent-a";
    let earlier: Vec<(&str, &str, String)> = [("c1", ""), ("c2", ""), ("c3", pod)]
        .into_iter()
        .map(|(cid, args)| {
            let mut a = add_ok(cid, "net1", args, &c);
            assert_eq!(a.len(), 1);
            (cid, args, a.remove(0))
        })
        .collect();
    assert_eq!(
        earlier.iter().map(|e| e.2.as_str()).collect::<Vec<_>>(),
        ["10.200.5.1/24", "10.200.5.2/24", "10.200.5.3/24"]
    );
    let before_bytes = std::fs::read(&pool_file).unwrap();
    let before_pool = fs.store.pool(POOL);
    assert_eq!(before_pool.len(), 3);

    // Fill the tmpfs to the last byte: big writes, then 512-byte ones.
    let ballast = store.join("ballast");
    let tail = store.join("ballast.tail");
    let big = fill(&ballast, 64 * 1024);
    assert!(big > 0, "the tmpfs had no room for ballast");
    fill(&tail, 512);
    assert_eq!(fs.free(), 0, "the tmpfs is not full");
    let files_when_full = fs.listing();

    // ADD of a new container: code 11, the store and the OS error named.
    let r = cni("ADD", "c4", "net1", "", &c);
    assert_disk_full_error(&r, &store, "ADD c4");
    assert!(
        r.msg().contains(&pool_file.display().to_string()),
        "{}",
        r.stdout
    );
    eprintln!("ADD on a full disk: {}", r.stdout.trim());

    // Nothing half-written: the pool file is byte for byte what it was, it
    // parses to the same allocations, and no temp file is left.
    assert_eq!(std::fs::read(&pool_file).unwrap(), before_bytes);
    assert_eq!(fs.store.pool(POOL), before_pool);
    assert_eq!(fs.listing(), files_when_full, "the store directory changed");
    // The earlier allocations still answer: a repeated ADD writes nothing
    // and gives the same address, CHECK against it passes, and c4 has none.
    for (cid, args, addr) in &earlier {
        assert_eq!(
            add_ok(cid, "net1", args, &c),
            vec![addr.to_string()],
            "{cid}"
        );
        ok("CHECK", cid, "net1", &with_prev(&c, addr));
    }
    assert_eq!(cni("CHECK", "c4", "net1", "", &c).code(), 102);

    // DEL must write the pool without c2, which needs a new page: it fails
    // the same way (the runtime retries a DEL), and c2 keeps its address.
    let r = cni("DEL", "c2", "net1", "", &c);
    assert_disk_full_error(&r, &store, "DEL c2");
    assert!(
        r.msg().contains(&pool_file.display().to_string()),
        "{}",
        r.stdout
    );
    eprintln!("DEL on a full disk: {}", r.stdout.trim());
    assert_eq!(std::fs::read(&pool_file).unwrap(), before_bytes);
    assert_eq!(fs.listing(), files_when_full, "the store directory changed");
    ok("CHECK", "c2", "net1", &with_prev(&c, "10.200.5.2/24"));
    // A DEL of something the store does not hold writes nothing: success.
    ok("DEL", "never-added", "net1", &c);

    // Free the space: the same ADD now works, with a new address.
    std::fs::remove_file(&ballast).unwrap();
    std::fs::remove_file(&tail).unwrap();
    let got = add_ok("c4", "net1", "", &c);
    assert_eq!(got, ["10.200.5.4/24"]);
    assert!(!earlier.iter().any(|e| e.2 == got[0]));
    // The retried DEL frees c2 for real.
    ok("DEL", "c2", "net1", &c);
    let after = fs.store.pool(POOL);
    assert_eq!(after.len(), 3, "{after:?}");
    assert!(!after.contains_key(&2), "{after:?}");
    assert_eq!(after[&4]["id"], "c4");
    assert_eq!(cni("CHECK", "c2", "net1", "", &c).code(), 102);
    assert_eq!(
        fs.listing(),
        [format!("{POOL}.json"), format!("{POOL}.lock")]
            .into_iter()
            .collect::<BTreeSet<_>>()
    );
}

/// Dual stack with room for exactly one page: the v6 pool's new version
/// fits, the v4 pool's (two pages) does not. Writing and renaming pool by
/// pool renamed the v6 file first: half an allocation, an address held
/// for a container the runtime was told had none. Every temp file is now
/// written before any rename, so neither pool changes.
#[test]
fn a_full_disk_never_leaves_half_a_dual_stack_allocation() {
    let fs = Tmpfs::mount("diskfull-ds", "128k");
    let store: PathBuf = fs.path().to_path_buf();
    let v4 = store.join("10.200.6.0-24.json");
    let v6 = store.join("fd00-5---64.json");
    let dual = conf(
        "1.0.0",
        &fs.store,
        r#""ipRanges":[{"range":"fd00:5::/64"},{"range":"10.200.6.0/24"}]"#,
    );
    let v4_only = conf("1.0.0", &fs.store, r#""range":"10.200.6.0/24""#);
    // One page to free later, taken while there is room.
    let spacer = store.join("spacer");
    std::fs::write(&spacer, vec![0u8; 4096]).unwrap();

    assert_eq!(
        add_ok("d1", "net1", "", &dual),
        ["fd00:5::1/64", "10.200.6.1/24"]
    );
    // Runtime-style 64-character container IDs grow the v4 pool past a page.
    let mut n = 0;
    while std::fs::metadata(&v4).unwrap().len() <= 4096 + 512 {
        n += 1;
        add_ok(&format!("{n:064x}"), "net1", "", &v4_only);
    }
    let (v4_before, v6_before) = (
        std::fs::read_to_string(&v4).unwrap(),
        std::fs::read_to_string(&v6).unwrap(),
    );

    fill(&store.join("ballast"), 64 * 1024);
    fill(&store.join("ballast.tail"), 512);
    std::fs::remove_file(&spacer).unwrap();
    assert_eq!(fs.free(), 4096, "exactly one page should be free");
    let files = fs.listing();

    let r = cni("ADD", "d2", "net1", "", &dual);
    assert_disk_full_error(&r, &store, "dual-stack ADD d2");
    assert!(r.msg().contains("10.200.6.0-24.json"), "{}", r.stdout);
    assert_eq!(
        std::fs::read_to_string(&v6).unwrap(),
        v6_before,
        "the v6 pool changed"
    );
    assert_eq!(
        std::fs::read_to_string(&v4).unwrap(),
        v4_before,
        "the v4 pool changed"
    );
    assert_eq!(fs.listing(), files, "the store directory changed");
    assert_eq!(cni("CHECK", "d2", "net1", "", &dual).code(), 102);
    ok("CHECK", "d1", "net1", &dual);
}
