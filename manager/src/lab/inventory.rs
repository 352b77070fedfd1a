//! The lab's record of what it created: every namespace (written BEFORE the
//! namespace is created, so a crash in between still gets it removed) and
//! every background process. `lab down` works from this file alone.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{state_file, LabConfig, LabError};
use crate::store::fs as sfs;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessRecord {
    pub pid: i32,
    /// `starttime` from /proc/<pid>/stat: a recycled pid has another one, so
    /// `down` never signals a stranger.
    pub start_time: u64,
    pub what: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LabInventory {
    pub config: LabConfig,
    /// In creation order; removed in reverse.
    #[serde(default)]
    pub namespaces: Vec<String>,
    #[serde(default)]
    pub processes: Vec<ProcessRecord>,
    /// Links, as `(namespace, name)`. They all live in lab namespaces and
    /// go with them; the record lets `down` remove one whose namespace
    /// could not be removed, and says what the lab made.
    #[serde(default)]
    pub links: Vec<(String, String)>,
}

impl LabInventory {
    pub fn load(dir: &Path) -> Result<Option<LabInventory>, LabError> {
        let path = state_file(dir);
        match sfs::read_json(&path) {
            Ok(None) => Ok(None),
            Ok(Some(v)) => serde_json::from_value(v)
                .map(Some)
                .map_err(|source| LabError::State { path, source }),
            Err(sfs::FsError::Corrupt { source, .. }) => Err(LabError::State { path, source }),
            Err(e) => Err(LabError::Store(e.into())),
        }
    }

    /// Create the record for a new lab; fails if one exists.
    pub fn create(config: &LabConfig) -> Result<(), LabError> {
        sfs::create_dir_all(&config.dir).map_err(|e| LabError::Store(e.into()))?;
        let _lock = lock(&config.dir)?;
        if Self::load(&config.dir)?.is_some() {
            return Err(LabError::AlreadyUp {
                dir: config.dir.clone(),
            });
        }
        Self {
            config: config.clone(),
            namespaces: Vec::new(),
            processes: Vec::new(),
            links: Vec::new(),
        }
        .save()
    }

    fn save(&self) -> Result<(), LabError> {
        let v = serde_json::to_value(self).expect("state serialises");
        sfs::write_json(&state_file(&self.config.dir), &v).map_err(|e| LabError::Store(e.into()))
    }

    /// Read-modify-write under the state lock (the daemon and the CLI both
    /// record things).
    pub fn update<T>(dir: &Path, f: impl FnOnce(&mut LabInventory) -> T) -> Result<T, LabError> {
        let _lock = lock(dir)?;
        let mut s = Self::load(dir)?.ok_or_else(|| LabError::NotUp {
            dir: dir.to_owned(),
        })?;
        let out = f(&mut s);
        s.save()?;
        Ok(out)
    }

    pub fn record_namespace(dir: &Path, ns: &str) -> Result<(), LabError> {
        Self::update(dir, |s| {
            if !s.namespaces.iter().any(|n| n == ns) {
                s.namespaces.push(ns.to_owned());
            }
        })
    }

    pub fn forget_namespace(dir: &Path, ns: &str) -> Result<(), LabError> {
        Self::update(dir, |s| s.namespaces.retain(|n| n != ns))
    }

    pub fn record_link(dir: &Path, namespace: &str, name: &str) -> Result<(), LabError> {
        Self::update(dir, |s| {
            let l = (namespace.to_owned(), name.to_owned());
            if !s.links.contains(&l) {
                s.links.push(l);
            }
        })
    }

    pub fn record_process(dir: &Path, pid: i32, what: &str) -> Result<(), LabError> {
        let start_time = process_start_time(pid).unwrap_or(0);
        Self::update(dir, |s| {
            s.processes.push(ProcessRecord {
                pid,
                start_time,
                what: what.to_owned(),
            })
        })
    }
}

fn lock(dir: &Path) -> Result<nix::fcntl::Flock<std::fs::File>, LabError> {
    sfs::lock(&lock_path(dir)).map_err(|e| LabError::Store(e.into()))
}

pub fn lock_path(dir: &Path) -> PathBuf {
    dir.join("lab.lock")
}

/// Field 22 of /proc/<pid>/stat (after the parenthesised command name,
/// which may itself contain spaces and parentheses).
pub fn process_start_time(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = &stat[stat.rfind(')')? + 2..];
    after.split_whitespace().nth(19)?.parse().ok()
}

/// Is this record's process still the one we started?
pub fn is_alive(p: &ProcessRecord) -> bool {
    let Some(now) = process_start_time(p.pid) else {
        return false;
    };
    // A zombie (our child not yet reaped) is as good as gone.
    let zombie = std::fs::read_to_string(format!("/proc/{}/stat", p.pid))
        .ok()
        .and_then(|s| {
            s.rfind(')')
                .and_then(|i| s[i + 2..].chars().next())
                .map(|c| c == 'Z')
        })
        .unwrap_or(false);
    (p.start_time == 0 || now == p.start_time) && !zombie
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_start_time_is_readable_and_stable() {
        let me = std::process::id() as i32;
        let a = process_start_time(me).unwrap();
        assert_eq!(process_start_time(me), Some(a));
        let rec = ProcessRecord {
            pid: me,
            start_time: a,
            what: "test".into(),
        };
        assert!(is_alive(&rec));
        let recycled = ProcessRecord {
            start_time: a + 1,
            ..rec
        };
        assert!(
            !is_alive(&recycled),
            "another start time is another process"
        );
    }

    #[test]
    fn records_round_trip_and_refuse_a_second_lab() {
        let dir = std::env::temp_dir().join(format!("mignet-labstate-{}", std::process::id()));
        let cfg = LabConfig {
            dir: dir.clone(),
            prefix: "x".into(),
            nodes: 2,
        };
        LabInventory::create(&cfg).unwrap();
        assert!(matches!(
            LabInventory::create(&cfg),
            Err(LabError::AlreadyUp { .. })
        ));
        LabInventory::record_namespace(&dir, "x-sw").unwrap();
        LabInventory::record_namespace(&dir, "x-node1").unwrap();
        LabInventory::record_namespace(&dir, "x-sw").unwrap();
        LabInventory::forget_namespace(&dir, "x-node1").unwrap();
        let s = LabInventory::load(&dir).unwrap().unwrap();
        let _ = std::fs::remove_dir_all(&dir);
        assert_eq!(s.namespaces, vec!["x-sw".to_owned()]);
        assert_eq!(s.config, cfg);
    }
}
