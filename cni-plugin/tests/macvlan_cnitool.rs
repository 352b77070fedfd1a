//! A real CNI runtime client drives our binaries: cnitool (containernetworking
//! /cni v1.3.0, spec 1.1.0, built by tests/tools/build-cnitool.sh, which
//! tests/setup.sh runs) with the seed's config as a conflist: add, check,
//! status, gc, del.
//!
//! cnitool runs inside the node namespace and in a private mount namespace
//! with a temp dir bind-mounted over /var/lib, so libcni's result cache
//! (/var/lib/cni) persists between the calls but never touches the machine.

mod common;

use common::*;
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::Command;

fn cnitool() -> PathBuf {
    if let Some(p) = std::env::var_os("CNITOOL") {
        return PathBuf::from(p);
    }
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/tools/build-cnitool.sh");
    let out = Command::new("bash")
        .arg(&script)
        .output()
        .expect("run build-cnitool.sh");
    assert!(
        out.status.success(),
        "cnitool is needed (tests/setup.sh builds it): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
}

struct Runtime {
    tool: PathBuf,
    confdir: TempDir,
    store: TempDir,
    /// Stands in for /var/lib inside cnitool's mount namespace.
    varlib: TempDir,
    cni: CniPath,
    node: Node,
}

struct Out {
    ok: bool,
    stdout: String,
    stderr: String,
}

impl Runtime {
    fn run(&self, verb: &str, pod: &Netns) -> Out {
        let ns = std::fs::File::open(self.node.ns.path()).unwrap();
        let fd = ns.as_raw_fd();
        let varlib = std::ffi::CString::new(self.varlib.path.display().to_string()).unwrap();
        let mut cmd = Command::new(&self.tool);
        cmd.args([verb, "migration-bridge", &pod.path_str()])
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .env("NETCONFPATH", &self.confdir.path)
            .env("CNI_PATH", self.cni.as_env())
            .env("CNI_IFNAME", "net1")
            .env("MIGNET_IPAM_STORE_DIR", &self.store.path);
        // SAFETY: pre_exec runs in the forked, single-threaded child before
        // exec; it only makes raw syscalls (setns, unshare, mount) on
        // arguments prepared before the fork (`fd` stays open until exec).
        unsafe {
            cmd.pre_exec(move || {
                let check = |r: libc::c_int| {
                    if r == 0 {
                        Ok(())
                    } else {
                        Err(std::io::Error::last_os_error())
                    }
                };
                check(libc::setns(fd, libc::CLONE_NEWNET))?;
                check(libc::unshare(libc::CLONE_NEWNS))?;
                check(libc::mount(
                    c"none".as_ptr(),
                    c"/".as_ptr(),
                    std::ptr::null(),
                    libc::MS_REC | libc::MS_PRIVATE,
                    std::ptr::null(),
                ))?;
                check(libc::mount(
                    varlib.as_ptr(),
                    c"/var/lib".as_ptr(),
                    std::ptr::null(),
                    libc::MS_BIND,
                    std::ptr::null(),
                ))
            });
        }
        let out = cmd.output().expect("run cnitool");
        drop(ns);
        Out {
            ok: out.status.success(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }
}

#[test]
fn cnitool_add_check_status_gc_del_with_seed_conflist() {
    let rt = Runtime {
        tool: cnitool(),
        confdir: TempDir::new("mgconf"),
        store: TempDir::new("mgstore"),
        varlib: TempDir::new("mgvarlib"),
        cni: CniPath::new(),
        node: Node::new(),
    };
    std::fs::write(
        rt.confdir.path.join("10-migration.conflist"),
        r#"{"cniVersion":"1.1.0","name":"migration-bridge","plugins":[
            {"type":"macvlan","master":"eth1","mode":"bridge",
             "ipam":{"type":"whereabouts","range":"10.200.5.0/24"}}]}"#,
    )
    .unwrap();
    let pod = Netns::new("mgp");

    let add = rt.run("add", &pod);
    assert!(add.ok, "add: {} {}", add.stdout, add.stderr);
    let res: serde_json::Value = serde_json::from_str(&add.stdout).unwrap();
    assert_eq!(res["cniVersion"], "1.1.0");
    assert_eq!(res["interfaces"][0]["name"], "net1");
    assert_eq!(res["ips"][0]["address"], "10.200.5.1/24");
    assert_eq!(pod.addrs("net1"), ["10.200.5.1/24"]);

    let check = rt.run("check", &pod);
    assert!(check.ok, "check: {}", check.stderr);
    let status = rt.run("status", &pod);
    assert!(status.ok, "status: {}", status.stderr);

    // CHECK fails once the address is gone.
    pod.ip(&["addr", "del", "10.200.5.1/24", "dev", "net1"]);
    let check = rt.run("check", &pod);
    assert!(!check.ok, "check passed without the address");
    assert!(check.stderr.contains("10.200.5.1"), "{}", check.stderr);

    // cnitool's gc passes no GC args: libcni first DELs every cached
    // attachment (so the link and the allocation go), then sends GC without
    // cni.dev/valid-attachments, which our IPAM refuses on purpose (a missing
    // list must not free every address of the network).
    let gc = rt.run("gc", &pod);
    assert!(!gc.ok, "gc without valid-attachments was accepted");
    assert!(gc.stderr.contains("valid-attachments"), "{}", gc.stderr);
    assert_eq!(pod.link_names(), ["lo"]);

    let add = rt.run("add", &pod);
    assert!(add.ok, "re-add: {}", add.stderr);
    let res: serde_json::Value = serde_json::from_str(&add.stdout).unwrap();
    assert_eq!(
        res["ips"][0]["address"], "10.200.5.1/24",
        "gc's DEL freed the address"
    );
    let del = rt.run("del", &pod);
    assert!(del.ok, "del: {}", del.stderr);
    let del = rt.run("del", &pod);
    assert!(del.ok, "second del: {}", del.stderr);
    assert_eq!(pod.link_names(), ["lo"]);
}
