//! The HTTP side: `/healthz`, `/api/messages`, `/metrics`.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::extract::{Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use base64::Engine as _;
use mqtt_tls::MqttClient;
use serde::{Deserialize, Serialize};

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
pub fn app(state: AppState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/api/messages", get(messages))
        .route("/metrics", get(metrics))
        .with_state(state)
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

#[derive(Deserialize)]
struct ListQuery {
    topic: Option<String>,
    after: Option<i64>,
    limit: Option<i64>,
}

#[derive(Serialize)]
struct MessageJson {
    id: i64,
    topic: String,
    /// The payload as text when it is UTF-8.
    payload: Option<String>,
    payload_base64: String,
    qos: u8,
    retain: bool,
    duplicate: bool,
    received_at_us: i64,
}

#[derive(Serialize)]
struct Page {
    messages: Vec<MessageJson>,
    /// Pass as `after` for the next page.
    next_after: Option<i64>,
}

/// `GET /api/messages?topic=&after=&limit=`: oldest first, at most 1000.
async fn messages(State(state): State<AppState>, Query(q): Query<ListQuery>) -> Response {
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
        Err(e) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(serde_json::json!({ "error": e.to_string() })),
        )
            .into_response(),
    }
}

async fn metrics(State(state): State<AppState>) -> Response {
    let stats = state.client.stats();
    let text = state.metrics.render(
        stats.connections.saturating_sub(1),
        state.client.is_connected(),
    );
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
}
