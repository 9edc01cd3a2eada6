//! The HTTP listener: `/healthz`, `/readyz`, `/status` and `/metrics`
//! (SPEC §8). The REST API joins it later.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::Router;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Json, Response};
use axum::routing::get;
use serde_json::json;

use crate::api::Api;
use crate::control::ControlState;
use crate::metrics::Metrics;
use crate::pipeline::Shared;
use crate::reload::RuleStore;

#[derive(Clone)]
pub struct AppState {
    pub store: Arc<RuleStore>,
    pub metrics: Arc<Metrics>,
    pub pipeline: Arc<Shared>,
    pub control: Arc<ControlState>,
    /// The REST API, when configured.
    pub api: Option<Api>,
}

impl AppState {
    /// Start-up is done: a valid rule set is loaded, the control topic read
    /// to its end, and events flow.
    pub fn ready(&self) -> bool {
        self.store.file_rules_loaded()
            && self.control.caught_up.load(Ordering::Acquire)
            && self.pipeline.running.load(Ordering::Acquire)
    }
}

pub fn router(state: AppState) -> Router {
    let api = state.api.clone();
    let metrics = state.metrics.clone();
    let router = Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/status", get(status))
        .route("/metrics", get(metrics_text))
        .with_state(state);
    let router = match api {
        Some(api) => router.merge(crate::api::routes(api)),
        None => router,
    };
    router.route_layer(middleware::from_fn_with_state(metrics, count_request))
}

/// Counts every routed request by route template (never the raw path, so
/// rule ids do not become label values), method and status.
async fn count_request(
    State(metrics): State<Arc<Metrics>>,
    route: Option<MatchedPath>,
    request: Request,
    next: Next,
) -> Response {
    let route = route.map_or_else(|| "unmatched".to_owned(), |r| r.as_str().to_owned());
    let method = match request.method().as_str() {
        m @ ("GET" | "POST" | "PUT" | "DELETE" | "HEAD" | "PATCH") => m,
        _ => "other",
    }
    .to_owned();
    let response = next.run(request).await;
    metrics
        .api_requests
        .with_label_values(&[&route, &method, response.status().as_str()])
        .inc();
    response
}

/// Binds `addr` and serves until `shutdown` completes.
pub async fn serve(
    addr: SocketAddr,
    state: AppState,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    serve_on(listener, state, shutdown).await
}

pub async fn serve_on(
    listener: tokio::net::TcpListener,
    state: AppState,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(state))
        .with_graceful_shutdown(shutdown)
        .await
}

async fn readyz(State(state): State<AppState>) -> Response {
    if state.ready() {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        let reason = if !state.store.file_rules_loaded() {
            "waiting for a valid rule set\n"
        } else if !state.control.caught_up.load(Ordering::Acquire) {
            "reading the control topic\n"
        } else {
            "pipeline not started\n"
        };
        (StatusCode::SERVICE_UNAVAILABLE, reason).into_response()
    }
}

async fn status(State(state): State<AppState>) -> Json<serde_json::Value> {
    let set = state.store.current();
    let (files, api) = set.counts();
    let pipeline = state.pipeline.status();
    Json(json!({
        "ready": state.ready(),
        "rules": {
            "hash": set.hash(),
            "file": files,
            "api": api,
            "reload": &*state.store.status(),
        },
        "control": {
            "caught_up": state.control.caught_up.load(Ordering::Acquire),
            "api_rules": state.control.api_rule_count(),
            "rejected_records": state.control.rejected(),
        },
        "kafka": {
            "connected": pipeline.kafka_connected,
            "last_error": pipeline.last_kafka_error,
            "last_error_at": pipeline.last_kafka_error_at,
            "assigned_partitions": pipeline.assigned,
            "lag": pipeline.lag,
            "partition_errors": pipeline.partition_errors,
            "not_fetching": pipeline.not_fetching,
            "backpressure": pipeline.backpressure,
            "in_flight": pipeline.in_flight,
            "stalled": state.pipeline.stalled(),
        },
    }))
}

async fn metrics_text(State(state): State<AppState>) -> Response {
    state
        .metrics
        .sync_control(state.control.rejected_total.load(Ordering::Relaxed));
    state
        .metrics
        .stalled
        .set(i64::from(state.pipeline.stalled()));
    let store = state.store.clone();
    let metrics = state.metrics.clone();
    let body = tokio::task::spawn_blocking(move || metrics.render(&store))
        .await
        .unwrap_or_default();
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body).into_response()
}
