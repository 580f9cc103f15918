//! Static assets (CSS, JS, the vendored xterm.js) compiled into the binary
//! and served under `/static/` without a session.
//!
//! Invariants: nothing is fetched from a CDN; vendored files carry their
//! pinned version in the name, so they are cached as immutable, our own
//! files for an hour.

use warp::http::{Response, StatusCode, header};
use warp::reply::Response as WarpResponse;
use warp::{Filter, Rejection};

/// xterm.js version vendored under `assets/vendor/` (npm `@xterm/xterm`).
pub const XTERM_VERSION: &str = "6.0.0";
/// `@xterm/addon-fit` version vendored beside it.
pub const XTERM_FIT_VERSION: &str = "0.11.0";

struct Asset {
    name: &'static str,
    mime: &'static str,
    body: &'static [u8],
    immutable: bool,
}

const ASSETS: &[Asset] = &[
    Asset {
        name: "app.css",
        mime: "text/css; charset=utf-8",
        body: include_bytes!("../assets/app.css"),
        immutable: false,
    },
    Asset {
        name: "app.js",
        mime: "text/javascript; charset=utf-8",
        body: include_bytes!("../assets/app.js"),
        immutable: false,
    },
    Asset {
        name: "observe.js",
        mime: "text/javascript; charset=utf-8",
        body: include_bytes!("../assets/observe.js"),
        immutable: false,
    },
    Asset {
        name: "observe.css",
        mime: "text/css; charset=utf-8",
        body: include_bytes!("../assets/observe.css"),
        immutable: false,
    },
    Asset {
        name: "xterm-6.0.0.js",
        mime: "text/javascript; charset=utf-8",
        body: include_bytes!("../assets/vendor/xterm.js"),
        immutable: true,
    },
    Asset {
        name: "xterm-6.0.0.css",
        mime: "text/css; charset=utf-8",
        body: include_bytes!("../assets/vendor/xterm.css"),
        immutable: true,
    },
    Asset {
        name: "addon-fit-0.11.0.js",
        mime: "text/javascript; charset=utf-8",
        body: include_bytes!("../assets/vendor/addon-fit.js"),
        immutable: true,
    },
];

fn serve_asset(name: String) -> Result<WarpResponse, Rejection> {
    let asset = ASSETS
        .iter()
        .find(|a| a.name == name)
        .ok_or_else(warp::reject::not_found)?;
    let cache = if asset.immutable {
        "public, max-age=31536000, immutable"
    } else {
        "public, max-age=3600"
    };
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, asset.mime)
        .header(header::CACHE_CONTROL, cache)
        .header("x-content-type-options", "nosniff")
        .body(asset.body.into())
        .map_err(|_| warp::reject::not_found())
}

/// `GET /static/{name}`.
pub fn routes() -> warp::filters::BoxedFilter<(WarpResponse,)> {
    warp::path!("static" / String)
        .and(warp::get())
        .and_then(|name| async move { serve_asset(name) })
        .boxed()
}
