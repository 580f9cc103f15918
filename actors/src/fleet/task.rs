//! The fleet task's one period (`tick`): heartbeat, fleet ghosts, slot
//! renewal, release and claim, the view; all store I/O of fleet mode
//! happens here, never in an actor's handler.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant, SystemTime};

use serde_json::{Value, json};

use crate::engine::Engine;

use super::objects::{ObjError, Objects};
use super::{FleetConfig, Held, Shared, VIEW_INTEREST, VIEW_READ};

/// This host's fleet task: its store, its prefix and the engine it reports.
pub(super) struct Fleet {
    pub(super) prefix: String,
    pub(super) objects: Objects,
    pub(super) cfg: FleetConfig,
    pub(super) engine: crate::EngineHandle,
    /// What this app's hooks and this task share.
    pub(super) state: std::sync::Arc<std::sync::Mutex<Shared>>,
}

/// A slot as read from the store.
#[derive(Debug, Clone)]
struct Slot {
    key: String,
    host: String,
    etag: String,
    age: Duration,
}

impl Fleet {
    /// This app's shared state (`Option` for the callers' `if let`: always
    /// `Some`).
    fn shared(&self) -> Option<std::sync::MutexGuard<'_, Shared>> {
        Some(
            self.state
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner()),
        )
    }

    fn key(&self, rest: &str) -> String {
        format!("{}{rest}", self.prefix)
    }

    pub(super) async fn tick(&self) -> Result<(), ObjError> {
        // 1. Heartbeat; its store time is "now" for every lease below.
        let status = self.engine.status().await;
        let held: Vec<String> = self
            .shared()
            .map(|s| s.held.keys().cloned().collect())
            .unwrap_or_default();
        let beat = json!({
            "host": self.cfg.host_id,
            "host_time": crate::storage::utc_now_rfc3339(),
            "deployex": status.deployex.version,
            "desired_version": status.desired_version,
            "deploying": status.deploying,
            "last_error": status.last_error,
            "holds": held,
            "instances": status.instances.iter().map(|i| json!({
                "instance": i.instance,
                "version": i.version,
                "state": i.state,
            })).collect::<Vec<_>>(),
        });
        let beat_key = self.key(&format!("hosts/{}.json", self.cfg.host_id));
        self.objects
            .put(&beat_key, beat.to_string().into_bytes())
            .await?;
        let now = self
            .objects
            .get(&beat_key)
            .await?
            .map(|o| o.modified)
            .unwrap_or_else(SystemTime::now);

        // 2. Ghosts first: a host that takes a slot released below must
        // find the ghost.
        let (to_ghost, to_unghost) = match self.shared() {
            Some(mut s) => (
                std::mem::take(&mut s.to_ghost),
                std::mem::take(&mut s.to_unghost),
            ),
            None => return Ok(()),
        };
        for (i, (version, why)) in to_ghost.iter().enumerate() {
            let body = json!({"version": version, "host": self.cfg.host_id, "why": why});
            let key = self.key(&format!("ghosts/{version}.json"));
            if let Err(e) = self.objects.put(&key, body.to_string().into_bytes()).await {
                if let Some(mut s) = self.shared() {
                    s.to_ghost.extend(to_ghost[i..].iter().cloned());
                    s.to_unghost.extend(to_unghost);
                }
                return Err(e);
            }
            tracing::warn!(%version, "fleet: version ghosted fleet-wide");
        }
        for (i, version) in to_unghost.iter().enumerate() {
            let key = self.key(&format!("ghosts/{version}.json"));
            if let Err(e) = self.objects.delete(&key, None).await {
                if let Some(mut s) = self.shared() {
                    s.to_unghost.extend(to_unghost[i..].iter().cloned());
                }
                return Err(e);
            }
        }

        // 3. Release finished slots; renew the others.
        let (release, held) = match self.shared() {
            Some(mut s) => {
                let release = std::mem::take(&mut s.release);
                for v in &release {
                    s.held.remove(v);
                }
                (release, s.held.clone())
            }
            None => return Ok(()),
        };
        let held_before: HashMap<String, Held> = held;
        for version in &release {
            if let Err(e) = self.release_slot(version, now).await {
                // Tried again next tick (the slot must not wait for its lease).
                if let Some(mut s) = self.shared() {
                    s.release.extend(release.iter().cloned());
                }
                return Err(e);
            }
        }
        for (version, h) in held_before {
            let body = claim_body(&self.cfg.host_id, &version);
            match self.objects.renew(&h.key, body, &h.etag).await? {
                Some(etag) => {
                    if let Some(mut s) = self.shared()
                        && let Some(entry) = s.held.get_mut(&version)
                    {
                        entry.etag = etag;
                        entry.renewed = Instant::now();
                    }
                }
                None => {
                    tracing::error!(%version, "fleet: slot lost (lease ran out and another host took it)");
                    if let Some(mut s) = self.shared() {
                        s.held.remove(&version);
                    }
                }
            }
        }

        // 4. The fleet's ghosts.
        let ghosts: BTreeSet<String> = self
            .objects
            .list(&self.key("ghosts/"))
            .await?
            .iter()
            .filter_map(|k| {
                k.rsplit('/')
                    .next()?
                    .strip_suffix(".json")
                    .map(str::to_owned)
            })
            .collect();
        let (want, cleared) = match self.shared() {
            Some(mut s) => {
                let pending: Vec<String> = s.to_ghost.iter().map(|(v, _)| v.clone()).collect();
                let cleared: Vec<String> = match &s.read_ghosts {
                    Some(before) => before.difference(&ghosts).cloned().collect(),
                    None => Vec::new(),
                };
                s.read_ghosts = Some(ghosts.clone());
                s.ghosts = ghosts.iter().cloned().chain(pending).collect();
                let want = s
                    .want
                    .clone()
                    .filter(|v| !s.held.contains_key(v) && !s.ghosts.contains(v));
                (want, cleared)
            }
            None => (None, Vec::new()),
        };
        // Un-ghosted on another host: un-ghost here too.
        for version in cleared {
            if let Some(dm) =
                ractor::registry::where_is(crate::deploy_manager::name(&self.engine.config().app))
            {
                let dm: ractor::ActorRef<crate::deploy_manager::DeployMsg> = dm.into();
                let v = version.clone();
                let answer = ractor::call_t!(
                    dm,
                    |reply| crate::deploy_manager::DeployMsg::Unghost { version: v, reply },
                    2000
                );
                if let Ok(Ok(())) = answer {
                    tracing::info!(%version, "fleet: un-ghosted on another host, un-ghosted here");
                }
            }
        }

        // 5. Claim a slot for the version this host waits for.
        if let Some(version) = want
            && self.try_claim(&version, now).await?
            && let Some(dm) =
                ractor::registry::where_is(crate::deploy_manager::name(&self.engine.config().app))
        {
            let _ = dm.send_message(crate::deploy_manager::DeployMsg::Evaluate);
        }

        // 6. The view for the API, while someone looks at it.
        let asked = self
            .shared()
            .and_then(|s| s.view_asked)
            .is_some_and(|t| t.elapsed() < VIEW_INTEREST);
        if asked {
            let view = self
                .read_view(now, &ghosts, status.desired_version.as_deref())
                .await?;
            if let Some(mut s) = self.shared() {
                s.view = Some(view);
                s.view_at = Some(Instant::now());
            }
            VIEW_READ.notify_waiters();
        }
        Ok(())
    }

    /// Deletes this host's slot(s) of `version` (found in the store, so a
    /// retry after a failed tick needs no memory of the etag).
    async fn release_slot(&self, version: &str, now: SystemTime) -> Result<(), ObjError> {
        let prefix = self.key(&format!("claims/{version}/"));
        for slot in self.read_slots(&prefix, now).await? {
            if slot.host == self.cfg.host_id {
                self.objects.delete(&slot.key, Some(&slot.etag)).await?;
            }
        }
        Ok(())
    }

    /// The slots of one version (`prefix` = `claims/{version}/`).
    async fn read_slots(&self, prefix: &str, now: SystemTime) -> Result<Vec<Slot>, ObjError> {
        let mut slots = Vec::new();
        for key in self.objects.list(prefix).await? {
            if !key
                .rsplit('/')
                .next()
                .is_some_and(|n| n.starts_with("slot-"))
            {
                continue;
            }
            let Some(obj) = self.objects.get(&key).await? else {
                continue;
            };
            let host = serde_json::from_slice::<Value>(&obj.bytes)
                .ok()
                .and_then(|v| v["host"].as_str().map(str::to_owned))
                .unwrap_or_default();
            slots.push(Slot {
                key,
                host,
                etag: obj.etag,
                age: now.duration_since(obj.modified).unwrap_or_default(),
            });
        }
        Ok(slots)
    }

    async fn canary(&self, version: &str) -> Result<Option<String>, ObjError> {
        let key = self.key(&format!("canary/{version}.json"));
        Ok(self.objects.get(&key).await?.and_then(|o| {
            serde_json::from_slice::<Value>(&o.bytes)
                .ok()
                .and_then(|v| v["host"].as_str().map(str::to_owned))
        }))
    }

    /// Tries to take a slot for `version`; true when this host holds one.
    async fn try_claim(&self, version: &str, now: SystemTime) -> Result<bool, ObjError> {
        let me = &self.cfg.host_id;
        let prefix = self.key(&format!("claims/{version}/"));
        let slots = self.read_slots(&prefix, now).await?;
        let live = |s: &Slot| s.age <= self.cfg.lease;
        let canary = self.canary(version).await?;
        if let Some(c) = &canary
            && c != me
            && slots.iter().any(|s| &s.host == c && live(s))
        {
            return Ok(false);
        }
        let body = claim_body(me, version);
        let mut got: Option<Held> = None;
        for n in 0..self.cfg.max_parallel {
            let key = format!("{prefix}slot-{n}");
            let etag = match slots.iter().find(|s| s.key == key) {
                None => self.objects.create(&key, body.clone()).await?,
                Some(s) if &s.host == me => Some(s.etag.clone()),
                Some(s) if !live(s) => {
                    let taken = self.objects.replace(&key, body.clone(), &s.etag).await?;
                    if taken.is_some() {
                        tracing::warn!(%version, holder = %s.host, age = ?s.age, "fleet: took over an expired slot");
                    }
                    taken
                }
                Some(_) => None,
            };
            if let Some(etag) = etag {
                got = Some(Held {
                    key,
                    etag,
                    renewed: Instant::now(),
                });
                break;
            }
        }
        let Some(held) = got else {
            return Ok(false);
        };
        // The first host to claim is the canary; a host that claimed at the
        // same time as a live canary steps back.
        let canary_key = self.key(&format!("canary/{version}.json"));
        let canary = match canary {
            Some(c) => Some(c),
            None => {
                let body = json!({"host": me}).to_string().into_bytes();
                match self.objects.create(&canary_key, body).await? {
                    Some(_) => None,
                    None => self.canary(version).await?,
                }
            }
        };
        let step_back = match &canary {
            Some(c) if c != me => self
                .read_slots(&prefix, now)
                .await?
                .iter()
                .any(|s| &s.host == c && live(s)),
            _ => false,
        };
        // A ghost written while this host was claiming wins.
        let ghost = self.key(&format!("ghosts/{version}.json"));
        let ghosted = self.objects.get(&ghost).await?.is_some();
        if step_back || ghosted {
            self.objects.delete(&held.key, Some(&held.etag)).await?;
            if ghosted && let Some(mut s) = self.shared() {
                s.ghosts.insert(version.to_owned());
            }
            return Ok(false);
        }
        tracing::info!(%version, slot = %held.key, canary = canary.is_none(), "fleet: slot claimed");
        if let Some(mut s) = self.shared() {
            s.held.insert(version.to_owned(), held);
        }
        Ok(true)
    }

    /// What `GET /api/v1/fleet` shows. Reads the active versions' slots and
    /// canaries (and the canary of `desired`), not every version ever
    /// deployed: the cost of a tick does not grow with the history.
    async fn read_view(
        &self,
        now: SystemTime,
        ghosts: &BTreeSet<String>,
        desired: Option<&str>,
    ) -> Result<Value, ObjError> {
        let age_ms = |t: SystemTime| now.duration_since(t).unwrap_or_default().as_millis() as u64;
        let mut hosts = Vec::new();
        for key in self.objects.list(&self.key("hosts/")).await? {
            let Some(obj) = self.objects.get(&key).await? else {
                continue;
            };
            let mut beat: Value = serde_json::from_slice(&obj.bytes).unwrap_or(Value::Null);
            if let Some(map) = beat.as_object_mut() {
                map.insert("last_seen".into(), json!(rfc3339(obj.modified)));
                map.insert("age_ms".into(), json!(age_ms(obj.modified)));
            }
            hosts.push(beat);
        }
        let mut claims = Vec::new();
        let mut canaries = BTreeMap::new();
        if let Some(desired) = desired
            && let Some(c) = self.canary(desired).await?
        {
            canaries.insert(desired.to_owned(), c);
        }
        for dir in self.objects.list(&self.key("claims/")).await? {
            let Some(version) = dir.trim_end_matches('/').rsplit('/').next() else {
                continue;
            };
            let canary = self.canary(version).await?;
            if let Some(c) = &canary {
                canaries.insert(version.to_owned(), c.clone());
            }
            for slot in self.read_slots(&dir, now).await? {
                claims.push(json!({
                    "version": version,
                    "slot": slot.key.rsplit('/').next(),
                    "host": slot.host,
                    "age_ms": slot.age.as_millis() as u64,
                    "expired": slot.age > self.cfg.lease,
                    "canary": canary.as_deref() == Some(slot.host.as_str()),
                }));
            }
        }
        let last_error = self.shared().and_then(|s| s.last_error.clone());
        Ok(json!({
            "host_id": self.cfg.host_id,
            "max_parallel": self.cfg.max_parallel,
            "lease_ms": self.cfg.lease.as_millis() as u64,
            "store_time": rfc3339(now),
            "hosts": hosts,
            "claims": claims,
            "canaries": canaries,
            "ghosts": ghosts,
            "last_error": last_error,
        }))
    }
}

/// A slot's content. The nonce makes every write distinct: S3's ETag is the
/// content's MD5, and a renewal must change it (see `Objects::renew`).
fn claim_body(host: &str, version: &str) -> Vec<u8> {
    json!({
        "host": host,
        "version": version,
        "host_time": crate::storage::utc_now_rfc3339(),
        "nonce": format!("{:016x}", rand::random::<u64>()),
    })
    .to_string()
    .into_bytes()
}

fn rfc3339(t: SystemTime) -> String {
    time::OffsetDateTime::from(t)
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}
