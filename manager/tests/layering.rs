//! The manager's top-level modules form layers: each uses only the modules
//! listed before it in `LAYERS` (the order `lib.rs` documents). A `use` of
//! a later module is a circle in the making, caught here rather than found
//! by the next reader. Reads the sources; comments, strings and `#[cfg(test)]
//! modules are ignored (a test may reach anywhere).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// Lowest first. A new module must be placed here.
const LAYERS: &[&str] = &[
    "api",
    "config",
    "store",
    "backend",
    "network",
    "launcher",
    "metrics",
    "control",
    "kube_adapter",
    "agent",
    "console",
    "http",
    "lab",
    "cli",
    "demo",
];

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).expect("read src dir") {
        let p = e.expect("dir entry").path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The code of a file without comments, string contents and its unit-test
/// module.
fn code_of(text: &str) -> String {
    let text = match text.find("#[cfg(test)]\nmod tests") {
        Some(i) => &text[..i],
        None => text,
    };
    let mut out = String::new();
    for line in text.lines() {
        let line = line.split("//").next().unwrap_or("");
        let mut in_str = false;
        let mut prev = ' ';
        for c in line.chars() {
            if c == '"' && prev != '\\' {
                in_str = !in_str;
            } else if !in_str {
                out.push(c);
            }
            prev = c;
        }
        out.push('\n');
    }
    out
}

/// Top-level modules named by `crate::X` paths, including inside
/// `crate::{X::.., Y}` groups.
fn used_modules(code: &str) -> BTreeSet<String> {
    let mut used = BTreeSet::new();
    let mut rest = code;
    while let Some(i) = rest.find("crate::") {
        rest = &rest[i + "crate::".len()..];
        let names: Vec<&str> = if let Some(group) = rest.strip_prefix('{') {
            let end = group.find('}').unwrap_or(group.len());
            group[..end].split(',').collect()
        } else {
            vec![rest]
        };
        for n in names {
            let ident: String = n
                .trim()
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            if !ident.is_empty() {
                used.insert(ident);
            }
        }
    }
    used
}

#[test]
fn each_module_uses_only_the_layers_below_it() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut violations = Vec::new();
    let mut seen = BTreeSet::new();
    for f in &files {
        let rel = f.strip_prefix(&src).expect("under src");
        let first = rel.components().next().expect("a component");
        let top = first
            .as_os_str()
            .to_string_lossy()
            .trim_end_matches(".rs")
            .to_owned();
        if matches!(top.as_str(), "lib" | "main" | "bin") {
            continue;
        }
        let Some(level) = LAYERS.iter().position(|l| *l == top) else {
            violations.push(format!(
                "{}: module `{top}` is not in LAYERS",
                rel.display()
            ));
            continue;
        };
        seen.insert(top.clone());
        let code = code_of(&std::fs::read_to_string(f).expect("read source"));
        for used in used_modules(&code) {
            match LAYERS.iter().position(|l| *l == used) {
                Some(u) if u > level => violations.push(format!(
                    "{}: `{top}` uses `{used}`, a layer above it",
                    rel.display()
                )),
                _ => {}
            }
        }
    }
    assert!(violations.is_empty(), "{}", violations.join("\n"));
    // The list must not keep names of modules that are gone.
    let listed: BTreeSet<String> = LAYERS.iter().map(|s| s.to_string()).collect();
    assert_eq!(seen, listed, "LAYERS and the modules under src/ differ");
}

#[test]
fn the_scan_sees_grouped_and_plain_paths_and_skips_comments() {
    let code = code_of(
        "use crate::{agent::x, lab};\n// crate::demo\nlet s = \"crate::cli\";\ncrate::store::open();\n#[cfg(test)]\nmod tests { use crate::console; }",
    );
    let used: Vec<_> = used_modules(&code).into_iter().collect();
    assert_eq!(used, ["agent", "lab", "store"]);
}
