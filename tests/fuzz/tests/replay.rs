//! Replays every committed input (`corpus/<target>/*` and
//! `regressions/<target>/*`) through its target's checks, without AFL:
//! a regression stays fixed, and a corpus input that stops satisfying a
//! property fails here before any fuzzing starts.

use std::path::{Path, PathBuf};

fn inputs(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = match std::fs::read_dir(dir) {
        Ok(rd) => rd
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.is_file()
                    && p.file_name()
                        .is_some_and(|n| n != ".gitkeep" && n != "README")
            })
            .collect(),
        Err(_) => Vec::new(),
    };
    v.sort();
    v
}

fn replay(target: &str) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let check = mignet_fuzz::TARGETS
        .iter()
        .find(|(n, _)| *n == target)
        .map(|(_, f)| *f)
        .expect("known target");
    let corpus = inputs(&root.join("corpus").join(target));
    assert!(!corpus.is_empty(), "no seed corpus for {target}");
    let regressions = inputs(&root.join("regressions").join(target));
    for path in corpus.iter().chain(&regressions) {
        let data = std::fs::read(path).expect("read input");
        let r = std::panic::catch_unwind(|| check(&data));
        assert!(r.is_ok(), "{target}: {} fails its checks", path.display());
    }
    eprintln!(
        "{target}: {} corpus and {} regression inputs replayed",
        corpus.len(),
        regressions.len()
    );
}

macro_rules! targets {
    ($($t:ident),* $(,)?) => {
        $( #[test] fn $t() { replay(stringify!($t)); } )*

        #[test]
        fn every_target_is_replayed() {
            let here: Vec<&str> = vec![$(stringify!($t)),*];
            let all: Vec<&str> = mignet_fuzz::TARGETS.iter().map(|(n, _)| *n).collect();
            assert_eq!(here, all);
        }
    };
}

targets!(
    cni_config,
    cni_args,
    ipam_store,
    ipam_flatfile,
    ipam_pool,
    stream_header,
    qmp,
    quantity,
    console_api,
);
