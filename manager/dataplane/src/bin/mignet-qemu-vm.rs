//! `mignet-qemu-vm start RUN_DIR KERNEL INITRD [MEMORY_MIB]`: starts a test VM
//! with the QEMU driver, prints its pid and QMP socket, and exits leaving the
//! VM running (detached).
//!
//! A developer tool, and what the `qemu_process` test uses to start a VM from
//! a process that then dies, proving the VM outlives whoever started it.

use std::path::PathBuf;
use std::process::ExitCode;

use mignet_dataplane::qemu::{VmProcess, VmSpec};

fn usage() -> ExitCode {
    eprintln!("usage: mignet-qemu-vm start RUN_DIR KERNEL INITRD [MEMORY_MIB]");
    ExitCode::from(2)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() < 4 || args[0] != "start" {
        return usage();
    }
    let run_dir = PathBuf::from(&args[1]);
    let name = run_dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "vm".into());
    let mut spec = VmSpec::new(name, &run_dir, &args[2], &args[3]);
    if let Some(m) = args.get(4) {
        match m.parse() {
            Ok(m) => spec.memory_mib = m,
            Err(_) => return usage(),
        }
    }
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("mignet-qemu-vm: cannot start runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(VmProcess::start(&spec)) {
        Ok(vm) => {
            println!("pid={}", vm.pid());
            println!("qmp={}", vm.qmp_socket().display());
            println!("pidfile={}", vm.pid_file().display());
            vm.detach();
            ExitCode::SUCCESS
        }
        Err(e) => {
            let mut msg = e.to_string();
            let mut src = std::error::Error::source(&e);
            while let Some(s) = src {
                msg.push_str(&format!(": {s}"));
                src = s.source();
            }
            eprintln!("mignet-qemu-vm: {msg}");
            ExitCode::FAILURE
        }
    }
}
