//! Metrics over time: a bounded ring of samples per instance of each app
//! (keyed by app and instance: two apps' instance 1 are two rings) and one
//! for the host, filled at the sampling period (`DEPLOYEX_BEAM_SAMPLE_MS`,
//! the first app's).
//!
//! Who writes what:
//! - the OtpNodeWatcher records each BEAM telemetry sample
//!   ([`record_beam`], from its `Sampled` handler, under the node's app
//!   and instance: one lock, one copy);
//! - the [`Sampler`] task records the host (CPU, memory, load, disk of the
//!   first app's var dir's filesystem) and every app's instances' process
//!   groups (RSS, CPU %), from one `/proc` pass per period, inline in the
//!   task. It follows the tree's app list (the RootSupervisor publishes it
//!   at start and at each reload): an added app is sampled, the rings of a
//!   removed app (or of an instance a scale-down stopped) are dropped.
//!
//! Readers: an `EngineHandle` reads its own app's rings only
//! ([`History::instance_series`], [`History::latest`]).
//!
//! Invariants: every ring holds at most [`capacity`] points (≥ one hour at
//! the period, at most [`MAX_POINTS`]); its storage is allocated once, at
//! the ring's first point, and then overwritten in place (no allocation per
//! sample). Points are fixed-size `Copy` structs of `u32`/`f32` fields with
//! a `u64` time: [`BeamPoint`] 48 bytes, [`OsPoint`] 16, [`HostPoint`] 32
//! (200 replicas × 1 h at 5 s ≈ 9 MiB, measured by
//! `cargo test -p deployex-actors --lib history::tests::memory_of_200_replicas_for_an_hour -- --nocapture`).
//! Memory values are kept in KiB (`u32`: up to 4 TiB) and served in bytes.
//!
//! The store is process-wide ([`global`]): it outlives actor restarts (a
//! restarted watcher keeps the last hour), like the flight recorders.
//!
//! Where things are: `ring` (the fixed-capacity ring), `store` (the
//! process-wide [`History`]: rings per app and instance, and for the host),
//! `series` (the answers: [`Series`], [`Latest`]), `sampler` (the host and
//! process-group sampler task and its `/proc` parsers).

use std::time::Duration;

mod ring;
mod sampler;
mod series;
mod store;

pub use ring::Ring;
pub use sampler::{Sampler, period_of, spawn_sampler};
pub use series::{Latest, Point, Series};
pub use store::{History, InstanceRings, global, record_beam};

/// At least this much time is kept.
pub const KEEP: Duration = Duration::from_secs(3600);
/// Upper bound of a ring, whatever the period (36 000 points = one hour at
/// 100 ms).
pub const MAX_POINTS: usize = 36_000;

/// Points a ring holds at `period`: one hour's worth, plus one.
pub fn capacity(period: Duration) -> usize {
    let ms = period.as_millis().max(1);
    (KEEP.as_millis().div_ceil(ms) as usize + 1).clamp(2, MAX_POINTS)
}

/// A BEAM telemetry sample (memory in KiB).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct BeamPoint {
    pub t_ms: u64,
    pub mem_total_kib: u32,
    pub mem_processes_kib: u32,
    pub mem_binary_kib: u32,
    pub mem_ets_kib: u32,
    pub mem_atom_kib: u32,
    pub mem_code_kib: u32,
    pub process_count: u32,
    pub run_queue: u32,
    pub port_count: u32,
    pub atom_count: u32,
}

/// An instance's process group, as the OS sees it.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct OsPoint {
    pub t_ms: u64,
    pub rss_kib: u32,
    /// Of one core (a busy 2-core BEAM reads 200).
    pub cpu_pct: f32,
}

/// The host.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct HostPoint {
    pub t_ms: u64,
    /// Of all cores (0–100).
    pub cpu_pct: f32,
    pub load1: f32,
    pub mem_used_kib: u32,
    pub disk_used_kib: u64,
}

pub(crate) trait Timed {
    fn t_ms(&self) -> u64;
}
impl Timed for BeamPoint {
    fn t_ms(&self) -> u64 {
        self.t_ms
    }
}
impl Timed for OsPoint {
    fn t_ms(&self) -> u64 {
        self.t_ms
    }
}
impl Timed for HostPoint {
    fn t_ms(&self) -> u64 {
        self.t_ms
    }
}

pub fn unix_ms_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// RFC 3339 → unix ms.
pub fn rfc3339_ms(s: &str) -> Option<u64> {
    let t = time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).ok()?;
    u64::try_from(t.unix_timestamp_nanos() / 1_000_000).ok()
}

pub(crate) fn to_kib(bytes: u64) -> u32 {
    u32::try_from(bytes / 1024).unwrap_or(u32::MAX)
}

/// A BEAM reading as a ring point.
pub fn beam_point(t_ms: u64, s: &crate::otp_node_watcher::BeamSample) -> BeamPoint {
    let n = |v: u64| u32::try_from(v).unwrap_or(u32::MAX);
    BeamPoint {
        t_ms,
        mem_total_kib: to_kib(s.memory_bytes),
        mem_processes_kib: to_kib(s.memory_processes),
        mem_binary_kib: to_kib(s.memory_binary),
        mem_ets_kib: to_kib(s.memory_ets),
        mem_atom_kib: to_kib(s.memory_atom),
        mem_code_kib: to_kib(s.memory_code),
        process_count: n(s.processes),
        run_queue: n(s.run_queue),
        port_count: n(s.port_count),
        atom_count: n(s.atom_count),
    }
}

#[cfg(test)]
mod tests;
