//! ReleaseFetcher: polls the release store, downloads and verifies tarballs.
//!
//! Every schedule interval it reads `current.json`; when it names a version
//! whose tarball is not in the local cache yet, a task downloads it to
//! `{var}/cache/{app}/`, checks the optional sha256, and proves it unpacks
//! safely (every entry validated, `bin/{app}` present) before the file is
//! published in the cache under its final name. Only verified tarballs are
//! ever handed to the DeployManager, so a broken release can never reach a
//! service folder. Errors are kept as `last_error` (logged once per change)
//! and retried on the next tick; nothing running is touched.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};

use crate::config::{EngineConfig, StoreConfig};
pub use crate::error::error_chain;
use crate::recorder::{Describe, Recorder};
use crate::store::{
    CurrentRelease, LocalStore, ReleaseStore, S3Store, StoreError, UnpackError, UnpackLimits,
};

/// The registered name of `app`'s ReleaseFetcher: `release_fetcher:{app}`.
pub fn name(app: &str) -> String {
    format!("release_fetcher:{app}")
}

/// A verified release, ready to deploy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadyRelease {
    pub release: CurrentRelease,
    pub tarball: PathBuf,
}

/// What the fetcher knows.
#[derive(Debug, Clone, Default)]
pub struct FetcherStatus {
    pub ready: Option<ReadyRelease>,
    pub last_error: Option<String>,
}

pub enum FetcherMsg {
    Tick,
    Fetched(Result<ReadyRelease, FetchError>),
    Status {
        reply: RpcReplyPort<FetcherStatus>,
    },
    /// The verified tarball of a version that was deployed before (manual
    /// pin, rollback): from the cache, else downloaded from the store.
    Ensure {
        version: String,
        reply: RpcReplyPort<Result<PathBuf, FetchError>>,
    },
    /// A download started by `Ensure` finished: every caller waiting for
    /// that version gets the answer (one download per version at a time).
    Ensured {
        version: String,
        result: Result<PathBuf, FetchError>,
    },
    /// Fault injection for the supervision tests: the handler panics.
    #[cfg(feature = "testhooks")]
    InjectPanic,
}

impl Describe for FetcherMsg {
    fn kind(&self) -> &'static str {
        match self {
            FetcherMsg::Tick => "Tick",
            FetcherMsg::Fetched(_) => "Fetched",
            FetcherMsg::Status { .. } => "Status",
            FetcherMsg::Ensure { .. } => "Ensure",
            FetcherMsg::Ensured { .. } => "Ensured",
            #[cfg(feature = "testhooks")]
            FetcherMsg::InjectPanic => "InjectPanic",
        }
    }
    fn summary(&self) -> String {
        match self {
            FetcherMsg::Fetched(Ok(r)) => format!("ok {}", r.release.version),
            FetcherMsg::Fetched(Err(e)) => format!("error: {}", error_chain(e)),
            FetcherMsg::Ensure { version, .. } => version.clone(),
            FetcherMsg::Ensured { version, result } => match result {
                Ok(_) => format!("{version} ok"),
                Err(e) => format!("{version} error: {}", error_chain(e)),
            },
            _ => String::new(),
        }
    }
}

pub struct ReleaseFetcher;

pub struct FetcherState {
    cfg: Arc<EngineConfig>,
    store: Arc<ReleaseStore>,
    fetching: bool,
    status: FetcherStatus,
    /// `Ensure` callers waiting for a version's download, by version.
    ensuring: std::collections::HashMap<String, Vec<RpcReplyPort<Result<PathBuf, FetchError>>>>,
    recorder: Recorder,
}

/// The configured release store (log its error with [`error_chain`]).
pub async fn make_store(cfg: &EngineConfig) -> Result<ReleaseStore, crate::store::StoreError> {
    match &cfg.store {
        StoreConfig::Local { root } => {
            LocalStore::new(root.clone(), &cfg.app, &cfg.env).map(ReleaseStore::Local)
        }
        StoreConfig::S3 {
            bucket,
            region,
            endpoint,
        } => S3Store::new(bucket, region.clone(), endpoint.clone(), &cfg.app, &cfg.env)
            .await
            .map(ReleaseStore::S3),
    }
}

impl Actor for ReleaseFetcher {
    type Msg = FetcherMsg;
    type State = FetcherState;
    type Arguments = Arc<EngineConfig>;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        cfg: Self::Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        myself.send_interval(cfg.schedule_interval, || FetcherMsg::Tick);
        let _ = myself.cast(FetcherMsg::Tick);
        let recorder = Recorder::for_actor(&name(&cfg.app));
        Ok(FetcherState {
            store: Arc::new(make_store(&cfg).await.map_err(|e| error_chain(&e))?),
            cfg,
            fetching: false,
            status: FetcherStatus::default(),
            ensuring: std::collections::HashMap::new(),
            recorder,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let _rec = state.recorder.begin(&msg);
        match msg {
            FetcherMsg::Tick => {
                if state.fetching {
                    return Ok(());
                }
                state.fetching = true;
                let cfg = state.cfg.clone();
                let store = state.store.clone();
                let known = state.status.ready.clone();
                tokio::spawn(async move {
                    let result = fetch_current(&cfg, &store, known).await;
                    let _ = myself.cast(FetcherMsg::Fetched(result));
                });
            }
            FetcherMsg::Fetched(result) => {
                state.fetching = false;
                match result {
                    Ok(ready) => {
                        if state.status.last_error.take().is_some() {
                            tracing::info!(version = %ready.release.version, "release store readable again");
                        }
                        let changed = state.status.ready.as_ref() != Some(&ready);
                        if changed {
                            tracing::info!(version = %ready.release.version, tarball = %ready.tarball.display(), "release verified and ready");
                            state.status.ready = Some(ready);
                            if let Some(dm) = ractor::registry::where_is(
                                crate::deploy_manager::name(&state.cfg.app),
                            ) {
                                let _ = dm.send_message(crate::deploy_manager::DeployMsg::Evaluate);
                            }
                        }
                    }
                    Err(error) => {
                        let message = error_chain(&error);
                        if state.status.last_error.as_deref() != Some(message.as_str()) {
                            tracing::error!(error = %message, "release rejected");
                            // Once per distinct error, not once per poll.
                            let kind = if error.rejected() {
                                crate::events::EventKind::ReleaseRejected
                            } else {
                                crate::events::EventKind::StoreError
                            };
                            crate::events::emit(
                                &state.cfg.app,
                                crate::events::NewEvent::new(kind, message.clone()),
                            );
                        }
                        state.status.last_error = Some(message);
                    }
                }
            }
            FetcherMsg::Status { reply } => {
                let _ = reply.send(state.status.clone());
            }
            FetcherMsg::Ensure { version, reply } => {
                // Single flight: a second caller for a version being
                // downloaded waits for the same download.
                if let Some(waiting) = state.ensuring.get_mut(&version) {
                    waiting.push(reply);
                    return Ok(());
                }
                state.ensuring.insert(version.clone(), vec![reply]);
                let cfg = state.cfg.clone();
                let store = state.store.clone();
                let release = CurrentRelease {
                    version: version.clone(),
                    pre_commands: Vec::new(),
                    hash: String::new(),
                    sha256: None,
                };
                crate::task::spawn_for(
                    myself,
                    "fetching a release",
                    async move { ensure_cached(&cfg, &store, &release).await },
                    move |result| FetcherMsg::Ensured { version, result },
                );
            }
            FetcherMsg::Ensured { version, result } => {
                for reply in state.ensuring.remove(&version).unwrap_or_default() {
                    let _ = reply.send(result.clone());
                }
            }
            #[cfg(feature = "testhooks")]
            FetcherMsg::InjectPanic => panic!("injected panic in {}", name(&state.cfg.app)),
        }
        Ok(())
    }
}

/// Why no verified tarball came out of the store. `Clone`: one download's
/// outcome answers every caller waiting on the single-flight `Ensure`.
/// Rendered with [`error_chain`] (`tarball 0.1.2: sha256 mismatch: ...`).
#[derive(Debug, Clone, thiserror::Error)]
pub enum FetchError {
    /// `current.json` could not be read, or what it holds is unusable
    /// (see [`FetchError::rejected`]).
    #[error("current.json")]
    Current(#[source] Arc<StoreError>),
    /// The tarball could not be downloaded.
    #[error("tarball {version}")]
    Download {
        version: String,
        #[source]
        source: Arc<StoreError>,
    },
    /// The tarball was downloaded and failed verification.
    #[error("tarball {version}")]
    Verify {
        version: String,
        #[source]
        source: Arc<VerifyError>,
    },
    /// The local cache could not be written.
    #[error("cannot {what} {}", path.display())]
    Cache {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: Arc<std::io::Error>,
    },
    /// The blocking verification task panicked or was cancelled.
    #[error("verification task failed: {0}")]
    Task(String),
    /// The task doing the work panicked.
    #[error(transparent)]
    Panic(#[from] crate::task::TaskPanic),
    /// The fetcher did not answer an `Ensure` in time (or is restarting):
    /// raised by the caller.
    #[error("the release fetcher did not answer: {0}")]
    NoAnswer(String),
}

impl FetchError {
    /// The store answered but what it holds is unusable (malformed
    /// `current.json`, a tarball that fails verification): a
    /// `release_rejected` event. `false`: the store could not be read
    /// (down, missing object, I/O), a `store_error`.
    pub fn rejected(&self) -> bool {
        match self {
            FetchError::Current(e) => matches!(
                **e,
                StoreError::MalformedCurrent { .. }
                    | StoreError::InvalidCurrent { .. }
                    | StoreError::InvalidName { .. }
                    | StoreError::CurrentTooLarge { .. }
            ),
            FetchError::Verify { .. } => true,
            FetchError::Download { .. }
            | FetchError::Cache { .. }
            | FetchError::Task(_)
            | FetchError::Panic(_)
            | FetchError::NoAnswer(_) => false,
        }
    }

    fn cache(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> FetchError {
        let path = path.to_path_buf();
        move |e| FetchError::Cache {
            what,
            path,
            source: Arc::new(e),
        }
    }
}

/// Why a tarball is refused (the fetcher's and `deployex publish`'s check).
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error("sha256 mismatch: current.json says {expected}, the tarball is {actual}")]
    Sha256Mismatch { expected: String, actual: String },
    /// Reading, hashing or unpacking failed (an unsafe or broken archive).
    #[error(transparent)]
    Unpack(#[from] UnpackError),
    #[error("no valid releases/start_erl.data (\"{{erts}} {{version}}\"): not a mix release")]
    NotARelease,
    #[error("the release inside is version {found}, not {expected}")]
    WrongVersion { found: String, expected: String },
}

async fn fetch_current(
    cfg: &EngineConfig,
    store: &ReleaseStore,
    known: Option<ReadyRelease>,
) -> Result<ReadyRelease, FetchError> {
    let release = store
        .current()
        .await
        .map_err(|e| FetchError::Current(Arc::new(e)))?;
    if let Some(known) = known
        && known.release == release
        && known.tarball.is_file()
    {
        return Ok(known);
    }
    let tarball = ensure_cached(cfg, store, &release).await?;
    Ok(ReadyRelease { release, tarball })
}

/// The cached, verified tarball of `release`, downloading it when missing.
async fn ensure_cached(
    cfg: &EngineConfig,
    store: &ReleaseStore,
    release: &CurrentRelease,
) -> Result<PathBuf, FetchError> {
    let version = &release.version;
    let cache = cfg.cache_dir();
    let final_path = cache.join(format!("{}-{}.tar.gz", cfg.app, version));
    tokio::fs::create_dir_all(&cache)
        .await
        .map_err(FetchError::cache("create", &cache))?;
    // The `hash` of current.json the cached copy was fetched for: the same
    // version published again with another hash (a rebuilt tarball) must
    // not be served from the cache. Empty hash (a pin or a rollback of a
    // version deployed before): whatever the cache holds.
    let hash_path = cached_hash_path(&final_path);
    let hash_matches = release.hash.is_empty()
        || tokio::fs::read_to_string(&hash_path)
            .await
            .is_ok_and(|h| h == release.hash);
    if final_path.is_file() && hash_matches {
        // Cached and verified before; re-check the checksum when one is
        // given (the store may have been fixed), else trust the cache.
        let Some(expected) = release.sha256.clone() else {
            return Ok(final_path);
        };
        let cached = final_path.clone();
        let matches = tokio::task::spawn_blocking(move || {
            crate::store::sha256_file(&cached)
                .is_ok_and(|s| s.eq_ignore_ascii_case(expected.trim()))
        })
        .await
        .unwrap_or(false);
        if matches {
            return Ok(final_path);
        }
    }
    let part = cache.join(format!(".{}-{}.tar.gz.part", cfg.app, version));
    store
        .download(version, &part)
        .await
        .map_err(|e| FetchError::Download {
            version: version.clone(),
            source: Arc::new(e),
        })?;
    let app = cfg.app.clone();
    let expected = release.sha256.clone();
    let part2 = part.clone();
    let scratch = cache.join(format!(".verify-{}", version));
    let want = version.clone();
    let verified = tokio::task::spawn_blocking(move || {
        verify_tarball(&part2, &scratch, &app, Some(&want), expected)
    })
    .await
    .map_err(|e| FetchError::Task(e.to_string()))?;
    if let Err(error) = verified {
        let _ = tokio::fs::remove_file(&part).await;
        return Err(FetchError::Verify {
            version: version.clone(),
            source: Arc::new(error),
        });
    }
    // The hash first, then the tarball: a crash in between leaves a hash
    // that does not describe the file only when both are replaced, and the
    // worst case is one download too many.
    let _ = tokio::fs::remove_file(&hash_path).await;
    tokio::fs::rename(&part, &final_path)
        .await
        .map_err(FetchError::cache("publish", &final_path))?;
    if !release.hash.is_empty() {
        let tmp = cache.join(format!(".{}-{}.hash.part", cfg.app, version));
        if tokio::fs::write(&tmp, release.hash.as_bytes())
            .await
            .is_ok()
        {
            let _ = tokio::fs::rename(&tmp, &hash_path).await;
        }
    }
    prune_cache(&cache, 10).await;
    Ok(final_path)
}

/// Blocking: sha256 (when given) and a full validating unpack into a scratch
/// folder that is removed afterwards; returns the version inside
/// (`releases/start_erl.data`). With `version`, the release inside must be
/// the version it is published as: a tarball of another version, or one
/// that is not a mix release, would deploy something the history and the
/// rollout logic do not know. Public so that `deployex publish` refuses
/// exactly what the fetcher would reject, with the same message.
pub fn verify_tarball(
    tarball: &Path,
    scratch: &Path,
    app: &str,
    version: Option<&str>,
    expected_sha256: Option<String>,
) -> Result<String, VerifyError> {
    if let Some(expected) = expected_sha256 {
        let actual = crate::store::sha256_file(tarball)?;
        if !actual.eq_ignore_ascii_case(expected.trim()) {
            return Err(VerifyError::Sha256Mismatch { expected, actual });
        }
    }
    let _ = std::fs::remove_dir_all(scratch);
    let result = crate::store::unpack_release(tarball, scratch, app, &UnpackLimits::default())
        .map_err(VerifyError::from)
        .and_then(
            |_| match (crate::store::release_version(scratch), version) {
                (None, _) => Err(VerifyError::NotARelease),
                (Some(found), Some(want)) if want != found => Err(VerifyError::WrongVersion {
                    found,
                    expected: want.to_string(),
                }),
                (Some(found), _) => Ok(found),
            },
        );
    let _ = std::fs::remove_dir_all(scratch);
    result
}

/// `{app}-{version}.tar.gz` → `{app}-{version}.tar.gz.hash`.
fn cached_hash_path(tarball: &Path) -> PathBuf {
    let mut p = tarball.as_os_str().to_owned();
    p.push(".hash");
    PathBuf::from(p)
}

/// Keep the `keep` newest tarballs of the cache (and their hash files).
async fn prune_cache(cache: &Path, keep: usize) {
    let Ok(mut dir) = tokio::fs::read_dir(cache).await else {
        return;
    };
    let mut files = Vec::new();
    while let Ok(Some(entry)) = dir.next_entry().await {
        let path = entry.path();
        if path.extension().is_some_and(|e| e == "gz")
            && !entry.file_name().to_string_lossy().starts_with('.')
            && let Ok(meta) = entry.metadata().await
            && let Ok(modified) = meta.modified()
        {
            files.push((modified, path));
        }
    }
    files.sort_by_key(|f| std::cmp::Reverse(f.0));
    for (_, path) in files.into_iter().skip(keep) {
        let _ = tokio::fs::remove_file(cached_hash_path(&path)).await;
        let _ = tokio::fs::remove_file(path).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_event_kind_comes_from_the_variant_and_the_text_keeps_the_causes() {
        let too_large = FetchError::Current(Arc::new(StoreError::CurrentTooLarge {
            path: "/s/current.json".into(),
            size: 9,
            max: 1,
        }));
        assert!(too_large.rejected());
        let missing = FetchError::Download {
            version: "0.1.2".into(),
            source: Arc::new(StoreError::TarballMissing {
                version: "0.1.2".into(),
                path: "/s/a-0.1.2.tar.gz".into(),
            }),
        };
        assert!(!missing.rejected());
        assert_eq!(
            error_chain(&missing),
            "tarball 0.1.2: no tarball for version 0.1.2 at /s/a-0.1.2.tar.gz"
        );
        let mismatch = FetchError::Verify {
            version: "0.1.2".into(),
            source: Arc::new(VerifyError::Sha256Mismatch {
                expected: "ab".into(),
                actual: "cd".into(),
            }),
        };
        assert!(mismatch.rejected());
        // One outcome answers every waiter of the single-flight `Ensure`.
        let copy = mismatch.clone();
        assert_eq!(
            error_chain(&copy),
            "tarball 0.1.2: sha256 mismatch: current.json says ab, the tarball is cd"
        );
        assert!(!FetchError::NoAnswer("timeout".into()).rejected());
    }
}
