//! Live data for the pages: Server-Sent Events pushing the status snapshot
//! and the actor tree, and the actor tree as JSON.
//!
//! Invariants: a stream polls the engine every [`PERIOD`] and sends only
//! when the JSON changed (plus SSE keep-alives); an engine call that does
//! not answer within its timeout skips a beat, it never blocks the stream.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use futures::Stream;
use warp::http::StatusCode;
use warp::reply::Response;
use warp::sse::Event;
use warp::{Filter, Rejection, Reply};

use crate::AppState;
use crate::api::STATUS_TIMEOUT;
use crate::guard::{Guard, Session, StreamSlot, authed, json_status, stream_slot, with_state};
use crate::scope::{AppView, Scope, api_scope};

/// Poll period of the live streams.
pub const PERIOD: Duration = Duration::from_millis(500);

#[derive(Clone)]
enum What {
    /// One app's status.
    Status(Arc<AppView>),
    Actors,
}

async fn snapshot(state: &AppState, what: &What) -> Option<String> {
    match what {
        What::Status(app) => tokio::time::timeout(STATUS_TIMEOUT, app.status())
            .await
            .ok()
            .and_then(|s| serde_json::to_string(&*s).ok()),
        What::Actors => tokio::time::timeout(STATUS_TIMEOUT, state.engine.actors())
            .await
            .ok()
            .and_then(|a| serde_json::to_string(&a).ok()),
    }
}

/// The engine's futures are not `Sync`, which warp's SSE wants: a task
/// polls and feeds a channel; it ends when the client goes away.
fn changes(
    state: Arc<AppState>,
    what: What,
    slot: StreamSlot,
) -> impl Stream<Item = Result<Event, Infallible>> + Send + Sync + 'static {
    let (tx, rx) = tokio::sync::mpsc::channel::<String>(1);
    let stopped = state.stopped();
    tokio::spawn(async move {
        let _slot = slot; // held while the stream lives
        tokio::pin!(stopped);
        let mut tick = tokio::time::interval(PERIOD);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last = String::new();
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = tx.closed() => return,
                _ = &mut stopped => return,
            }
            if let Some(json) = snapshot(&state, &what).await
                && json != last
            {
                if tx.send(json.clone()).await.is_err() {
                    return;
                }
                last = json;
            }
        }
    });
    futures::stream::unfold(rx, |mut rx| async move {
        let json = rx.recv().await?;
        Some((Ok(Event::default().data(json)), rx))
    })
}

fn sse(state: Arc<AppState>, what: What, slot: StreamSlot) -> Response {
    warp::sse::reply(warp::sse::keep_alive().stream(changes(state, what, slot))).into_response()
}

async fn actors_json(state: Arc<AppState>) -> Result<Response, Rejection> {
    Ok(
        match tokio::time::timeout(STATUS_TIMEOUT, state.engine.actors()).await {
            Ok(a) => json_status(StatusCode::OK, &a),
            Err(_) => crate::guard::json_error(
                StatusCode::SERVICE_UNAVAILABLE,
                "the engine did not answer in time",
            ),
        },
    )
}

pub fn routes(state: Arc<AppState>) -> warp::filters::BoxedFilter<(Response,)> {
    let st = || with_state(state.clone());
    let auth = || {
        authed(state.clone(), Guard::Api)
            .map(|_: Session| ())
            .untuple_one()
    };
    let slot = || stream_slot(state.clone(), Guard::Api);
    let status = api_scope(state.clone())
        .and(warp::path!("status" / "stream"))
        .and(warp::get())
        .and(slot())
        .and(st())
        .map(|scope: Scope, (_, slot): (Session, StreamSlot), s| {
            sse(s, What::Status(scope.app), slot)
        });
    let actors_stream = warp::path!("api" / "v1" / "debug" / "actors" / "stream")
        .and(warp::get())
        .and(slot())
        .and(st())
        .map(|(_, slot): (Session, StreamSlot), s| sse(s, What::Actors, slot));
    let actors = warp::path!("api" / "v1" / "debug" / "actors")
        .and(warp::get())
        .and(auth())
        .and(st())
        .and_then(actors_json);
    status.or(actors_stream).unify().or(actors).unify().boxed()
}
