//! The HTTP side: `/healthz`, `/api/messages`, `/api/openapi.json`,
//! `/metrics`, and who may read them over HTTPS.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use base64::Engine as _;
use mqtt_tls::MqttClient;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, OpenApi, ToSchema};

use crate::https::Peer;

use crate::metrics::Metrics;
use crate::store::Store;

/// What the handlers share.
#[derive(Clone)]
pub struct AppState {
    /// The database.
    pub store: Store,
    /// The MQTT client (for its connection state).
    pub client: MqttClient,
    /// The counters.
    pub metrics: Arc<Metrics>,
}

/// The router: mount it on its own, or `.merge()` it into your app.
///
/// Over HTTPS (a [`Peer`] on each request, see [`crate::https`]),
/// `/api/messages` and `/metrics` answer only identities with the reader
/// role (403 otherwise); `/healthz` and `/api/openapi.json` any identity of
/// the CA. Plain HTTP (no `Peer`) is not authorized: it is served on
/// loopback only, unless the operator says otherwise.
pub fn app(state: AppState) -> Router {
    // The data routes carry the reader check themselves: a route added
    // here later is checked too.
    let data = Router::new()
        .route("/api/messages", get(messages))
        .route("/metrics", get(metrics))
        .route_layer(middleware::from_fn(require_reader));
    Router::new()
        .route("/healthz", get(healthz))
        .route("/api/openapi.json", get(openapi))
        .merge(data)
        .with_state(state)
}

/// `/healthz` and `/metrics` only: the plain probe listener.
pub fn probes(state: AppState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .with_state(state)
}

/// The role that may read messages and metrics over HTTPS.
pub const READER_ROLE: &str = "reader";

/// An error answer.
#[derive(Serialize, ToSchema)]
struct ApiError {
    /// What went wrong.
    error: String,
}

fn error(status: StatusCode, message: String) -> Response {
    (status, Json(ApiError { error: message })).into_response()
}

async fn require_reader(request: Request, next: Next) -> Response {
    if let Some(peer) = request.extensions().get::<Peer>() {
        let path = request.uri().path();
        if peer.role.as_deref() != Some(READER_ROLE) {
            return error(
                StatusCode::FORBIDDEN,
                format!(
                    "{} (role {}) may not read {path}: only identities with the {READER_ROLE} \
                     role may (provision issue client NAME --role {READER_ROLE})",
                    peer.common_name
                        .as_deref()
                        .unwrap_or("a certificate without a CN"),
                    peer.role.as_deref().unwrap_or("none"),
                ),
            );
        }
    }
    next.run(request).await
}

/// The API's contract, generated from the handlers' types.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "mqtt-ingest",
        description = "Every MQTT message the ingest stored, oldest first. Over HTTPS the \
                       client presents a certificate of the CA with the reader role \
                       (mutual TLS)."
    ),
    paths(messages),
    components(schemas(Page, MessageJson, ApiError))
)]
pub struct ApiDoc;

/// `GET /api/openapi.json`.
async fn openapi() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}

#[derive(Serialize)]
struct Health {
    ok: bool,
    mqtt: MqttHealth,
    database: DatabaseHealth,
}

#[derive(Serialize)]
struct MqttHealth {
    connected: bool,
    last_error: Option<String>,
    /// Filters the broker refused: their messages never arrive.
    refused_subscriptions: Vec<String>,
}

#[derive(Serialize)]
struct DatabaseHealth {
    ok: bool,
    error: Option<String>,
}

/// How long `/healthz` waits for the database's answer.
const HEALTH_PING_TIMEOUT: std::time::Duration = std::time::Duration::from_millis(800);

/// 200 when the MQTT session is up with every subscription granted and the
/// database answers and takes writes; 503 otherwise, saying which.
async fn healthz(State(state): State<AppState>) -> Response {
    let connected = state.client.is_connected();
    // A probe must answer quickly (orchestrators time out after a second
    // or two), even while the database does not answer at all.
    let ping = match tokio::time::timeout(HEALTH_PING_TIMEOUT, state.store.ping()).await {
        Ok(result) => result.map_err(|e| e.to_string()),
        Err(_) => Err(format!(
            "the database did not answer within {} ms",
            HEALTH_PING_TIMEOUT.as_millis()
        )),
    };
    let writes_ok = state.metrics.database_ok.load(Ordering::Relaxed)
        || state.metrics.stored.load(Ordering::Relaxed) == 0
            && state.metrics.store_failures.load(Ordering::Relaxed) == 0;
    let db_error = match (&ping, writes_ok) {
        (Err(e), _) => Some(e.clone()),
        (Ok(()), false) => {
            Some("the last write failed; retrying, nothing is acknowledged meanwhile".to_owned())
        }
        (Ok(()), true) => None,
    };
    let refused_subscriptions = state.client.refused_subscriptions();
    let health = Health {
        ok: connected && db_error.is_none() && refused_subscriptions.is_empty(),
        mqtt: MqttHealth {
            connected,
            refused_subscriptions,
            // Shown while connected too: a refused subscription or a
            // dropped link that came back is worth seeing.
            last_error: state.client.last_error(),
        },
        database: DatabaseHealth {
            ok: db_error.is_none(),
            error: db_error,
        },
    };
    let status = if health.ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(health)).into_response()
}

/// The query of `/api/messages`.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct ListQuery {
    /// Only messages on this exact topic.
    topic: Option<String>,
    /// Only messages with an id above this (the previous page's
    /// `next_after`); default 0.
    after: Option<i64>,
    /// At most this many (default 100; below 1 counts as 1, above 1000 as
    /// 1000).
    limit: Option<i64>,
}

/// One stored message.
#[derive(Serialize, ToSchema)]
struct MessageJson {
    /// Its id: increasing in the order messages were stored.
    id: i64,
    /// Its topic.
    topic: String,
    /// The payload as text when it is UTF-8.
    payload: Option<String>,
    /// The payload in base64.
    payload_base64: String,
    /// The QoS it arrived with.
    qos: u8,
    /// The retain flag.
    retain: bool,
    /// Whether the broker marked it a redelivery.
    duplicate: bool,
    /// When it was received, microseconds since the Unix epoch.
    received_at_us: i64,
}

/// A page of messages.
#[derive(Serialize, ToSchema)]
struct Page {
    /// The messages, oldest first.
    messages: Vec<MessageJson>,
    /// Pass as `after` for the next page.
    next_after: Option<i64>,
}

/// `GET /api/messages?topic=&after=&limit=`: oldest first, at most 1000.
#[utoipa::path(
    get,
    path = "/api/messages",
    params(ListQuery),
    responses(
        (status = 200, description = "A page of messages, oldest first", body = Page),
        (status = 400, description = "A parameter that does not parse", body = ApiError),
        (status = 403, description = "The client certificate's role is not reader", body = ApiError),
        (status = 503, description = "The database does not answer", body = ApiError),
    )
)]
async fn messages(
    State(state): State<AppState>,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Response {
    let q = match query {
        Ok(Query(q)) => q,
        Err(e) => return error(StatusCode::BAD_REQUEST, e.body_text()),
    };
    // No MQTT topic holds a NUL (and PostgreSQL refuses one in a text):
    // such a topic has no messages.
    if q.topic.as_deref().is_some_and(|t| t.contains('\0')) {
        return Json(Page {
            messages: Vec::new(),
            next_after: None,
        })
        .into_response();
    }
    let limit = q.limit.unwrap_or(100).clamp(1, 1000);
    match state
        .store
        .list(q.topic.as_deref(), q.after.unwrap_or(0), limit)
        .await
    {
        Ok(rows) => {
            let next_after = (rows.len() as i64 == limit)
                .then(|| rows.last().map(|r| r.id))
                .flatten();
            let messages = rows
                .into_iter()
                .map(|r| MessageJson {
                    id: r.id,
                    topic: r.topic,
                    payload: String::from_utf8(r.payload.clone()).ok(),
                    payload_base64: base64::engine::general_purpose::STANDARD.encode(&r.payload),
                    qos: r.qos,
                    retain: r.retain,
                    duplicate: r.duplicate,
                    received_at_us: r.received_at_us,
                })
                .collect();
            Json(Page {
                messages,
                next_after,
            })
            .into_response()
        }
        Err(e) => {
            tracing::warn!("GET /api/messages: {e}");
            error(
                StatusCode::SERVICE_UNAVAILABLE,
                "the database does not answer (the ingest's log says why)".into(),
            )
        }
    }
}

async fn metrics(State(state): State<AppState>) -> Response {
    let stats = state.client.stats();
    let text = state.metrics.render(&stats, state.client.is_connected());
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
}
