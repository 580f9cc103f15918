//! Where an instance lives: its slot (folder + node name) and its port,
//! recorded in `{var}/service/{app}/slots/{i}.json` (written atomically).
//!
//! A `start_first` deployment starts the new version in the other slot on
//! the pool's spare port, and records the switch only once the new process
//! is ready; a deployex killed before that adopts the old process from the
//! recorded slot and stops the half-started one as a stray. Without a
//! record (every `stop_first` install) an instance is in slot `a` on port
//! `base + i - 1`, as before start-first existed.
//!
//! Invariant: the ports of the recorded instances are distinct and in the
//! pool, so exactly one pool port is spare during a start-first rollout
//! (one instance moves at a time). A record that breaks it (edited by hand,
//! the pool shrunk) is ignored for that instance, with a warning.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::config::{EngineConfig, Slot};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Placement {
    pub slot: Slot,
    pub port: u16,
}

impl Placement {
    /// Slot `a` on the instance's own port.
    pub fn default_for(cfg: &EngineConfig, instance: u32) -> Placement {
        Placement {
            slot: Slot::A,
            port: cfg.port(instance),
        }
    }
}

/// The recorded placement of `instance`, if there is a valid one.
pub fn read(cfg: &EngineConfig, instance: u32) -> Option<Placement> {
    let path = cfg.slot_record(instance);
    let bytes = std::fs::read(&path).ok()?;
    match serde_json::from_slice::<Placement>(&bytes) {
        Ok(p) if cfg.port_pool().contains(&p.port) => Some(p),
        Ok(p) => {
            tracing::warn!(instance, port = p.port, pool = ?cfg.port_pool(), "slot record names a port outside the pool; ignored");
            None
        }
        Err(e) => {
            tracing::warn!(instance, error = %e, path = %path.display(), "unreadable slot record; ignored");
            None
        }
    }
}

/// Where `instance` lives: its record, or the default placement.
pub fn placement(cfg: &EngineConfig, instance: u32) -> Placement {
    read(cfg, instance).unwrap_or_else(|| Placement::default_for(cfg, instance))
}

/// Record `instance`'s placement (atomically: temp file, fsync, rename).
pub fn write(cfg: &EngineConfig, instance: u32, p: Placement) -> std::io::Result<()> {
    let path = cfg.slot_record(instance);
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let bytes = serde_json::to_vec(&p).map_err(std::io::Error::other)?;
    crate::storage::write_atomic(&path, &bytes)
}

/// The pool port no instance holds, for `instance`'s next start-first
/// deployment. `None` when every port is taken (records that break the
/// invariant above): the deployment then stops first.
pub fn spare_port(cfg: &EngineConfig, instance: u32, own: u16) -> Option<u16> {
    let held: Vec<u16> = (1..=cfg.replicas)
        .map(|i| {
            if i == instance {
                own
            } else {
                placement(cfg, i).port
            }
        })
        .collect();
    cfg.port_pool().find(|p| !held.contains(p))
}

/// Remove a slot's pid file (its process is gone or was never recorded).
pub fn forget_pid(service: &Path) {
    let _ = std::fs::remove_file(service.join("pid"));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::DeployStrategy;

    fn cfg(dir: &Path) -> EngineConfig {
        let mut c = EngineConfig::with_defaults("app", dir);
        c.replicas = 3;
        c.app_port_base = 4000;
        c.deploy_strategy = DeployStrategy::StartFirst;
        c
    }

    #[test]
    fn without_records_instances_sit_in_slot_a_and_the_last_port_is_spare() {
        let dir = tempfile::tempdir().unwrap();
        let c = cfg(dir.path());
        assert_eq!(c.port_pool(), 4000..=4003);
        assert_eq!(
            placement(&c, 2),
            Placement {
                slot: Slot::A,
                port: 4001
            }
        );
        assert_eq!(spare_port(&c, 1, 4000), Some(4003));
    }

    #[test]
    fn the_spare_moves_with_each_switch() {
        let dir = tempfile::tempdir().unwrap();
        let c = cfg(dir.path());
        // Instance 1 moved to the spare; its old port is the new spare.
        write(
            &c,
            1,
            Placement {
                slot: Slot::B,
                port: 4003,
            },
        )
        .unwrap();
        assert_eq!(
            placement(&c, 1),
            Placement {
                slot: Slot::B,
                port: 4003
            }
        );
        assert_eq!(spare_port(&c, 2, 4001), Some(4000));
        write(
            &c,
            2,
            Placement {
                slot: Slot::B,
                port: 4000,
            },
        )
        .unwrap();
        assert_eq!(spare_port(&c, 3, 4002), Some(4001));
    }

    #[test]
    fn broken_or_out_of_pool_records_fall_back_to_the_default() {
        let dir = tempfile::tempdir().unwrap();
        let c = cfg(dir.path());
        std::fs::create_dir_all(c.slot_record(1).parent().unwrap()).unwrap();
        std::fs::write(c.slot_record(1), b"{not json").unwrap();
        assert_eq!(placement(&c, 1), Placement::default_for(&c, 1));
        write(
            &c,
            2,
            Placement {
                slot: Slot::B,
                port: 9999,
            },
        )
        .unwrap();
        assert_eq!(placement(&c, 2), Placement::default_for(&c, 2));
    }

    #[test]
    fn no_spare_when_records_collide() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = cfg(dir.path());
        c.replicas = 2;
        // Pool 4000..=4002; instance 2 claims 4002, instance 1 is asked
        // with 4000 and 4001 held by a broken layout.
        write(
            &c,
            2,
            Placement {
                slot: Slot::B,
                port: 4001,
            },
        )
        .unwrap();
        assert_eq!(spare_port(&c, 1, 4002), Some(4000));
        write(
            &c,
            2,
            Placement {
                slot: Slot::B,
                port: 4000,
            },
        )
        .unwrap();
        c.deploy_strategy = DeployStrategy::StopFirst;
        // stop_first: the pool has no spare at all.
        assert_eq!(spare_port(&c, 1, 4001), None);
    }
}
