//! What the history endpoints and `/metrics` get: series of
//! `[unix_ms, value]` pairs and the newest point of every ring.

use std::time::Duration;

use serde::Serialize;

use super::{BeamPoint, HostPoint, OsPoint};

/// The newest point of every ring.
#[derive(Debug, Clone, Default)]
pub struct Latest {
    pub host: Option<HostPoint>,
    pub instances: Vec<(u32, Option<OsPoint>, Option<BeamPoint>)>,
}

/// One `[unix_ms, value]` pair (integers print without a fraction).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Point(pub u64, pub f64);

impl Serialize for Point {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeTuple;
        let mut t = s.serialize_tuple(2)?;
        t.serialize_element(&self.0)?;
        if self.1.fract() == 0.0 && self.1.abs() < 9.0e15 {
            t.serialize_element(&(self.1 as i64))?;
        } else {
            t.serialize_element(&self.1)?;
        }
        t.end()
    }
}

/// The answer of the history endpoints.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Series {
    pub interval_ms: u64,
    pub series: std::collections::BTreeMap<&'static str, Vec<Point>>,
    /// `[unix_ms, version]`, oldest first.
    pub deploys: Vec<(u64, String)>,
}

impl Series {
    /// No points.
    pub fn empty(period: Duration) -> Self {
        Series::new(period)
    }
    pub(super) fn new(period: Duration) -> Self {
        Series {
            interval_ms: period.as_millis() as u64,
            series: Default::default(),
            deploys: Vec::new(),
        }
    }
    pub(super) fn add(&mut self, name: &'static str, points: impl Iterator<Item = (u64, f64)>) {
        self.series
            .insert(name, points.map(|(t, v)| Point(t, v)).collect());
    }
}
