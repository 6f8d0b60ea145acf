//! `GET /v1/worlds/{worldId}/messages?before=&limit=`: a world's activity log, newest
//! first, from the durable store the game servers write it to (docs/agents.md).

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use gaia_api::activity::MessagePage;
use gaia_api::allocation::{ErrorBody, check_id};
use gaia_checkpoint::{Cursor, MAX_PAGE, MessageLog};
use serde::Deserialize;

use crate::params::{PathParams, QueryParams};
use crate::{ApiError, AppState};

/// Messages per page when `limit` is unset.
const DEFAULT_LIMIT: usize = 50;

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(crate) struct PageQuery {
    /// The `next` of the previous page; unset: the newest messages.
    before: Option<String>,
    /// At most 500; default 50.
    limit: Option<usize>,
}

/// A world's messages, newest first.
#[utoipa::path(
    get,
    path = "/v1/worlds/{worldId}/messages",
    tag = "worlds",
    params(("worldId" = String, Path, description = "The world"), PageQuery),
    responses(
        (status = 200, description = "A page of messages, newest first", body = MessagePage),
        (status = 400, description = "`bad_request`: `worldId` is not an id, `before` not a cursor, `limit` not 1 to 500", body = ErrorBody),
        (status = 401, response = crate::openapi::Unauthorized),
        (status = 404, description = "`no_activity_log`: this control plane has no durable store to read it from", body = ErrorBody),
        (status = 503, description = "`unavailable`: the store cannot be reached", body = ErrorBody),
    ),
    security(("matchmaker" = [])),
)]
pub(crate) async fn messages(
    State(s): State<AppState>,
    PathParams(world_id): PathParams<String>,
    QueryParams(q): QueryParams<PageQuery>,
) -> Result<Json<MessagePage>, ApiError> {
    check_id("worldId", &world_id)?;
    let before = q
        .before
        .as_deref()
        .map(str::parse::<Cursor>)
        .transpose()
        .map_err(|message| ApiError::BadRequest { field: Some("before".into()), message })?;
    let limit = q.limit.unwrap_or(DEFAULT_LIMIT);
    if !(1..=MAX_PAGE).contains(&limit) {
        let message = format!("must be 1 to {MAX_PAGE}, not {limit}");
        return Err(ApiError::BadRequest { field: Some("limit".into()), message });
    }
    let log: &Arc<dyn MessageLog> = s.messages.as_ref().ok_or(ApiError::NoActivityLog)?;
    let page = log.page(&world_id, before, limit).await.map_err(|e| ApiError::LogUnavailable(e.to_string()))?;
    let next = (page.len() == limit).then(|| page.last().map(|m| m.cursor().to_string())).flatten();
    let messages = page.into_iter().map(gaia_checkpoint::Message::into_wire).collect();
    Ok(Json(MessagePage { messages, next }))
}
