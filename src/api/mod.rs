//! The REST API for forced errors (SPEC §7): MailerQ-compatible paths under
//! `/v1`, bearer tokens, and every change written to the control topic so
//! that it takes effect on every instance.

pub mod body;
pub mod tokens;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use chrono::Utc;
use serde_json::{Value as Json, json};

use self::body::{BodyError, parse_body, rule_from_request, rule_json};
use self::tokens::{Access, Tokens};
use crate::control::{ControlState, ControlWriter};
use crate::metrics::Metrics;
use crate::reload::RuleStore;
use crate::rules::{Rule, Source};

/// Largest request body for rule changes.
pub const MAX_BODY_BYTES: usize = 64 * 1024;
/// How long a write waits to see its record applied on this instance.
const APPLY_TIMEOUT: Duration = Duration::from_secs(10);

/// The OpenAPI document, served at `/v1/openapi.json`.
pub const OPENAPI: &str = include_str!("openapi.json");

#[derive(Clone)]
pub struct Api {
    pub store: Arc<RuleStore>,
    pub control: Arc<ControlState>,
    /// `None` when Kafka is not reachable for writes (answers 503).
    pub writer: Option<Arc<ControlWriter>>,
    pub tokens: Arc<Tokens>,
    pub metrics: Arc<Metrics>,
    pub max_event_bytes: usize,
    pub max_api_rules: usize,
}

pub fn routes(api: Api) -> Router {
    Router::new()
        .route("/v1/errors", get(list).post(create).delete(delete_matching))
        .route("/v1/errors/{id}", get(get_one).delete(delete_one))
        .route("/v1/evaluate", post(evaluate))
        .route("/v1/openapi.json", get(openapi))
        .with_state(api)
}

/// A client-facing error: a status and a JSON body naming the field.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    field: Option<String>,
    message: String,
    errors: Vec<(Option<String>, String)>,
    retry_after: Option<u64>,
}

impl ApiError {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError {
            status,
            field: None,
            message: message.into(),
            errors: Vec::new(),
            retry_after: None,
        }
    }

    fn unavailable(message: impl Into<String>) -> Self {
        ApiError {
            retry_after: Some(5),
            ..ApiError::new(StatusCode::SERVICE_UNAVAILABLE, message)
        }
    }
}

impl From<BodyError> for ApiError {
    fn from(e: BodyError) -> Self {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            field: e.field,
            message: e.message,
            errors: e.errors,
            retry_after: None,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut body = json!({"error": self.message});
        if let Some(field) = &self.field {
            body["field"] = json!(field);
        }
        if self.errors.len() > 1 {
            body["errors"] = self
                .errors
                .iter()
                .map(|(field, message)| json!({"field": field, "error": message}))
                .collect();
        }
        let mut response = (self.status, axum::Json(body)).into_response();
        if let Some(seconds) = self.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        if self.status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

/// Checks the bearer token; `write` routes refuse read tokens. Returns the
/// token's name for `created_by` and the audit log.
fn authorize(api: &Api, headers: &HeaderMap, write: bool) -> Result<String, ApiError> {
    let authorization = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    match api.tokens.check(authorization) {
        Access::Disabled => Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "the API is disabled: no api_tokens_file is configured",
        )),
        Access::Denied => Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "missing or unknown bearer token (Authorization: Bearer <token>)",
        )),
        Access::Granted {
            read_only: true, ..
        } if write => Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "this token may only read and evaluate",
        )),
        Access::Granted { name, .. } => Ok(name),
    }
}

async fn read_body(body: Body, limit: usize) -> Result<axum::body::Bytes, ApiError> {
    axum::body::to_bytes(body, limit).await.map_err(|_| {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("the body is larger than {limit} bytes"),
        )
    })
}

/// A write route's request: the token's name and the body as one object
/// (JSON or form).
async fn write_request(
    api: &Api,
    headers: &HeaderMap,
    body: Body,
) -> Result<(String, serde_json::Map<String, Json>), ApiError> {
    let name = authorize(api, headers, true)?;
    let bytes = read_body(body, MAX_BODY_BYTES).await?;
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok());
    Ok((name, parse_body(content_type, &bytes)?))
}

/// A rule as `GET /v1/errors` shows it.
fn view(api: &Api, rule: &Rule) -> Json {
    let mut value = rule_json(rule);
    value["source"] = json!(rule.source.to_string());
    value["state"] = json!(rule.state(Utc::now()));
    value["created_by"] = json!(rule.created_by);
    value["created_at"] = json!(rule.created_at.map(|t| t.to_rfc3339()));
    value["matches_this_instance"] = json!(api.metrics.matches_of(&rule.id));
    value
}

async fn list(State(api): State<Api>, headers: HeaderMap) -> Result<Response, ApiError> {
    authorize(&api, &headers, false)?;
    let set = api.store.current();
    let mut rules: Vec<&Rule> = set.rules().iter().collect();
    rules.sort_by(|a, b| a.id.cmp(&b.id));
    let body: Vec<Json> = rules.into_iter().map(|r| view(&api, r)).collect();
    Ok(axum::Json(body).into_response())
}

async fn get_one(
    State(api): State<Api>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    authorize(&api, &headers, false)?;
    let set = api.store.current();
    let rule = set
        .get(&id)
        .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, format!("no rule with id {id:?}")))?;
    Ok(axum::Json(view(&api, rule)).into_response())
}

async fn create(
    State(api): State<Api>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let (name, map) = write_request(&api, &headers, body).await?;
    let rule = rule_from_request(map, &name, Utc::now())?;
    let existing = api.store.current().get(&rule.id).map(|r| r.source.clone());
    if let Some(source) = &existing
        && *source != Source::Api
    {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            format!("rule {:?} comes from {source}; change it in git", rule.id),
        ));
    }
    if existing.is_none() && api.control.api_rule_count() >= api.max_api_rules {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            format!(
                "{} API rules are in force, the configured max_api_rules; delete some first",
                api.max_api_rules
            ),
        ));
    }
    write(&api, &rule.id, Some(&rule)).await?;
    tracing::info!(
        target: "audit",
        action = if existing.is_some() { "replace" } else { "create" },
        rule = %rule.id,
        token = %name,
        code = rule.code,
        "api rule written"
    );
    let set = api.store.current();
    let Some(stored) = set.get(&rule.id).filter(|r| r.source == Source::Api) else {
        return Err(ApiError::unavailable(
            "the change was written but this instance did not apply it; see /status control.rejected_records",
        ));
    };
    Ok((StatusCode::CREATED, axum::Json(view(&api, stored))).into_response())
}

async fn delete_one(
    State(api): State<Api>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let name = authorize(&api, &headers, true)?;
    delete(&api, &id, &name).await
}

/// MailerQ's form: the body's conditions name the API rule to delete.
async fn delete_matching(
    State(api): State<Api>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let (name, mut map) = write_request(&api, &headers, body).await?;
    let id = match map.get("id") {
        Some(Json::String(id)) => id.clone(),
        Some(_) => return Err(BodyError::field("id", "\"id\" must be a string").into()),
        None => {
            // The id is derived from the conditions alone; what a rule would
            // need beyond them does not matter here.
            map.entry("code").or_insert(json!(550));
            for key in [
                "description",
                "extended",
                "status",
                "mode",
                "not_before",
                "expires",
            ] {
                map.remove(key);
            }
            rule_from_request(map, &name, Utc::now())?.id
        }
    };
    delete(&api, &id, &name).await
}

async fn delete(api: &Api, id: &str, name: &str) -> Result<Response, ApiError> {
    let source = api.store.current().get(id).map(|r| r.source.clone());
    let Some(source) = source else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("no rule with id {id:?}"),
        ));
    };
    if source != Source::Api {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            format!("rule {id:?} comes from {source}; git owns it, remove it there"),
        ));
    }
    write(api, id, None).await?;
    tracing::info!(target: "audit", action = "delete", rule = %id, token = %name, "api rule deleted");
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// Writes a control record and waits until this instance has applied it.
async fn write(api: &Api, id: &str, rule: Option<&Rule>) -> Result<(), ApiError> {
    let Some(writer) = &api.writer else {
        return Err(ApiError::unavailable("kafka is not available for writes"));
    };
    let started = std::time::Instant::now();
    let (partition, offset) = writer
        .write(id, rule)
        .await
        .map_err(|e| ApiError::unavailable(format!("the change was not written: {e}")))?;
    tracing::debug!(
        partition,
        offset,
        written_ms = started.elapsed().as_millis() as u64,
        "control record written"
    );
    if !api
        .control
        .wait_applied(partition, offset, APPLY_TIMEOUT)
        .await
    {
        return Err(ApiError::unavailable(
            "the change was written but is not applied on this instance yet; check GET /v1/errors",
        ));
    }
    Ok(())
}

async fn evaluate(
    State(api): State<Api>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    authorize(&api, &headers, false)?;
    let bytes = read_body(body, api.max_event_bytes).await?;
    let set = api.store.current();
    let verdict = crate::eval::evaluate(&set, &bytes, Utc::now(), api.max_event_bytes);
    Ok(axum::Json(verdict).into_response())
}

async fn openapi(State(api): State<Api>, headers: HeaderMap) -> Result<Response, ApiError> {
    authorize(&api, &headers, false)?;
    Ok(([(header::CONTENT_TYPE, "application/json")], OPENAPI).into_response())
}
