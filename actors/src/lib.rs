//! deployex's engine: the actor tree that fetches releases, runs instances,
//! deploys and upgrades them. See ARCHITECTURE.md for the map.

pub mod engine;
pub mod model;
pub mod process;
