//! The web console's files (`console/dist`, built from `console/` and committed), embedded
//! in the binary and served at `/`, so `gaia run` and `gaia allocator` serve the console
//! with nothing else installed. The page is open; what it shows comes from the API
//! (`GET /v1/events`), under the API's tokens. console/README.md says how it is built.

use axum::extract::Path;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use include_dir::{Dir, include_dir};

static DIST: Dir<'_> = include_dir!("$CARGO_MANIFEST_DIR/../console/dist");

/// `GET /`: the page. Never cached, so a new binary's page is picked up at once.
pub(crate) async fn index() -> Response {
    file("index.html", "no-cache")
}

/// `GET /assets/{file}`: scripts and styles. Their names carry a hash of their contents
/// (the build's), so they are cached for good.
pub(crate) async fn asset(Path(name): Path<String>) -> Response {
    file(&format!("assets/{name}"), "public, max-age=31536000, immutable")
}

fn file(path: &str, cache: &'static str) -> Response {
    let Some(file) = DIST.get_file(path) else {
        return (StatusCode::NOT_FOUND, "not found").into_response();
    };
    ([(header::CONTENT_TYPE, content_type(path)), (header::CACHE_CONTROL, cache)], file.contents()).into_response()
}

fn content_type(path: &str) -> &'static str {
    match path.rsplit_once('.').map(|(_, ext)| ext) {
        Some("html") => "text/html; charset=utf-8",
        Some("js") => "text/javascript; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        Some("svg") => "image/svg+xml",
        Some("png") => "image/png",
        Some("json") => "application/json",
        _ => "application/octet-stream",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_built_console_is_embedded() {
        let index = DIST.get_file("index.html").expect("console/dist/index.html (cd console && npm run build)");
        let html = index.contents_utf8().unwrap_or_default();
        // Every script and style the page names is embedded.
        let mut named = 0;
        for part in html.split("/assets/").skip(1) {
            let name = part.split('"').next().unwrap_or_default();
            assert!(
                DIST.get_file(format!("assets/{name}")).is_some(),
                "{name} is named by index.html but not embedded"
            );
            named += 1;
        }
        assert!(named >= 1, "index.html names no asset: {html}");
    }

    #[test]
    fn content_types() {
        assert_eq!(content_type("index.html"), "text/html; charset=utf-8");
        assert_eq!(content_type("assets/index-1a2b.js"), "text/javascript; charset=utf-8");
        assert_eq!(content_type("assets/index-1a2b.css"), "text/css; charset=utf-8");
        assert_eq!(content_type("assets/x"), "application/octet-stream");
    }
}
