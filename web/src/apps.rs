//! Several applications (issue 17): `GET /api/v1/apps`, one status object
//! per app in configuration order (today's `/api/v1/status` shape).
//! Every per-app route lives in its own module under the app prefix
//! (`/api/v1/apps/{app}/…`, `/apps/{app}/…`): see scope.rs.
//!
//! Invariants: the route requires a session, as every API route; the list
//! follows a reload (SIGHUP): [`AppList`] is shared with the binary, which
//! replaces it.

use std::sync::Arc;

use deployex_actors::engine::Engine;
use warp::http::StatusCode;
use warp::reply::Response;
use warp::{Filter, Rejection};

use crate::AppState;
use crate::api::STATUS_TIMEOUT;
use crate::guard::{Guard, Session, authed, json_error, json_status, with_state};

/// Every app by name, in configuration order; replaced as a whole by a
/// reload (SIGHUP: an added app appears, a removed one is 404).
pub type AppList = Arc<std::sync::RwLock<Vec<(String, Arc<dyn Engine>)>>>;

/// A list to share between the server and whoever reloads it.
pub fn app_list(apps: Vec<(String, Arc<dyn Engine>)>) -> AppList {
    Arc::new(std::sync::RwLock::new(apps))
}

async fn list(state: Arc<AppState>) -> Result<Response, Rejection> {
    let views = state.all_views();
    let all = futures::future::join_all(views.iter().map(|v| v.status()));
    Ok(match tokio::time::timeout(STATUS_TIMEOUT, all).await {
        Ok(statuses) => {
            let statuses: Vec<&deployex_actors::model::Status> =
                statuses.iter().map(|s| &**s).collect();
            json_status(StatusCode::OK, &statuses)
        }
        Err(_) => json_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "the engine did not answer in time",
        ),
    })
}

pub fn routes(state: Arc<AppState>) -> warp::filters::BoxedFilter<(Response,)> {
    warp::path!("api" / "v1" / "apps")
        .and(warp::get())
        .and(
            authed(state.clone(), Guard::Api)
                .map(|_: Session| ())
                .untuple_one(),
        )
        .and(with_state(state))
        .and_then(list)
        .boxed()
}
