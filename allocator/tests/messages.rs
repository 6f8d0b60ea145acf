//! `GET /v1/worlds/{worldId}/messages` through `router()`, over a real SQLite activity log:
//! pages newest first and their `next`, the errors, and 404 without a log.
#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns

mod common;

use std::sync::Arc;

use axum::http::{Method, StatusCode};
use gaia_api::activity::MessagePage;
use gaia_checkpoint::{Message, MessageLog, SqlStore};
use gaia_testkit::files::TempFile;

use common::{App, call, error};

async fn app_with_log() -> (App, TempFile) {
    let db = TempFile::new("sqlite");
    let store = SqlStore::connect(&db.sqlite_url()).await.unwrap();
    let lines: Vec<Message> = (1..=5)
        .map(|tick| Message {
            world_id: "w-1".into(),
            epoch: 2,
            tick,
            seq: 0,
            at_ms: 1_000 + tick,
            author_id: 3,
            author: "ada-0".into(),
            text: format!("line {tick}"),
        })
        .collect();
    store.append(&lines).await.unwrap();
    let mut app = App::new();
    app.state = app.state.with_message_log(Arc::new(store));
    app.router = gaia_allocator::router(app.state.clone());
    (app, db)
}

#[tokio::test]
async fn pages_go_newest_first_with_a_next_cursor() {
    let (app, _db) = app_with_log().await;
    let (status, v) = call(&app.router, Method::GET, "/v1/worlds/w-1/messages?limit=3", "").await;
    assert_eq!(status, StatusCode::OK, "{v}");
    let page: MessagePage = serde_json::from_value(v).unwrap();
    let texts: Vec<&str> = page.messages.iter().map(|m| m.text.as_str()).collect();
    assert_eq!(texts, ["line 5", "line 4", "line 3"]);
    assert_eq!((page.messages[0].author.as_str(), page.messages[0].epoch, page.messages[0].at_ms), ("ada-0", 2, 1_005));
    let next = page.next.unwrap();
    let (status, v) =
        call(&app.router, Method::GET, &format!("/v1/worlds/w-1/messages?limit=3&before={next}"), "").await;
    assert_eq!(status, StatusCode::OK, "{v}");
    let page: MessagePage = serde_json::from_value(v).unwrap();
    assert_eq!(page.messages.iter().map(|m| m.text.as_str()).collect::<Vec<_>>(), ["line 2", "line 1"]);
    assert_eq!(page.next, None, "the last page");

    let (status, v) = call(&app.router, Method::GET, "/v1/worlds/w-unknown/messages", "").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(serde_json::from_value::<MessagePage>(v).unwrap().messages, vec![]);
}

#[tokio::test]
async fn bad_queries_are_400_naming_the_field() {
    let (app, _db) = app_with_log().await;
    for (query, field) in
        [("limit=0", "limit"), ("limit=501", "limit"), ("before=x", "before"), ("before=1.2", "before")]
    {
        let (status, v) = call(&app.router, Method::GET, &format!("/v1/worlds/w-1/messages?{query}"), "").await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{query}: {v}");
        assert_eq!(error(&v).error.field.as_deref(), Some(field), "{query}: {v}");
    }
    let (status, v) = call(&app.router, Method::GET, "/v1/worlds/a%20b/messages", "").await;
    assert_eq!((status, error(&v).error.field.as_deref()), (StatusCode::BAD_REQUEST, Some("worldId")));
}

#[tokio::test]
async fn without_a_log_it_is_404() {
    let app = App::new();
    let (status, v) = call(&app.router, Method::GET, "/v1/worlds/w-1/messages", "").await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{v}");
    assert_eq!(error(&v).error.code, "no_activity_log");
}

#[tokio::test]
async fn the_document_has_before_and_limit_in_the_query() {
    let app = App::new();
    let (status, doc) = call(&app.router, Method::GET, "/openapi.json", "").await;
    assert_eq!(status, StatusCode::OK);
    let parameters = doc["paths"]["/v1/worlds/{worldId}/messages"]["get"]["parameters"].as_array().unwrap().clone();
    let places: Vec<(String, String)> = parameters
        .iter()
        .map(|p| (p["name"].as_str().unwrap().to_string(), p["in"].as_str().unwrap().to_string()))
        .collect();
    let expected = [("worldId", "path"), ("before", "query"), ("limit", "query")];
    assert_eq!(places, expected.map(|(n, i)| (n.to_string(), i.to_string())));
}
