//! The HTTP API: `POST /chat.v1.ChatService/<Method>` (Connect-style unary JSON), the
//! `StreamMessages` event stream (SSE), and `/metrics`, `/healthz`, `/readyz`.

mod caller;
mod devices;
pub mod error;
pub mod health;
pub mod json;
mod messages;
mod middleware;
mod rooms;
mod stream;
pub mod stream_slots;
pub mod validate;
pub mod wire;

use std::sync::Arc;

use axum::Router;
use axum::routing::{get, post};
use tokio::sync::watch;
use tower::ServiceBuilder;
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::TraceLayer;
use tracing::warn;

use crate::auth::Authenticator;
use crate::config::Limits;
use crate::crypto::ContentCipher;
use crate::events::{EventBus, RoomEvent};
use crate::ids::{MessageIdGenerator, RoomId, UserId};
use crate::metrics::Metrics;
use crate::store::{ChatStore, RoomAccess};

pub use caller::Caller;
pub use error::{ApiError, Code};
pub use middleware::note_cohort;

/// Everything a handler needs.
pub struct App {
    pub store: Arc<dyn ChatStore>,
    /// The room cache, for the readiness answer (the store already reads through it).
    pub cache: Option<Arc<crate::store::room_cache::RoomCache>>,
    pub auth: Authenticator,
    pub cipher: ContentCipher,
    pub events: EventBus,
    pub metrics: Arc<Metrics>,
    pub limits: Limits,
    /// The event streams open per user (at most `limits.max_streams_per_user`).
    pub stream_slots: Arc<stream_slots::StreamSlots>,
    pub message_ids: MessageIdGenerator,
    /// Turns true when the server starts shutting down; open streams end then, so graceful
    /// shutdown does not wait on them forever.
    pub shutdown: watch::Receiver<bool>,
}

pub type AppState = Arc<App>;

impl App {
    /// 404 for an unknown room, 403 unless `user` is a member.
    async fn member_access(&self, room: RoomId, user: UserId) -> Result<RoomAccess, ApiError> {
        let access = self.store.room_access(room, user).await?;
        if access.is_member() {
            Ok(access)
        } else {
            Err(ApiError::not_a_member())
        }
    }

    /// Best effort: the change is stored; a stream that misses the event can re-read history.
    async fn publish(&self, event: RoomEvent) {
        if let Err(e) = self.events.publish(event).await {
            warn!(error = %e, "room event not delivered to streams");
        }
    }
}

pub fn router(app: AppState) -> Router {
    let unary = Router::new()
        .route("/chat.v1.ChatService/CreateRoom", post(rooms::create_room))
        .route("/chat.v1.ChatService/GetRoom", post(rooms::get_room))
        .route("/chat.v1.ChatService/GetRooms", post(rooms::get_rooms))
        .route("/chat.v1.ChatService/LeaveRoom", post(rooms::leave_room))
        .route("/chat.v1.ChatService/PinRoom", post(rooms::pin_room))
        .route(
            "/chat.v1.ChatService/SendMessage",
            post(messages::send_message),
        )
        .route(
            "/chat.v1.ChatService/GetMessageHistory",
            post(messages::get_message_history),
        )
        .route(
            "/chat.v1.ChatService/MarkMessagesAsRead",
            post(messages::mark_messages_as_read),
        )
        .route(
            "/chat.v1.ChatService/ReactToMessage",
            post(messages::react_to_message),
        )
        .route(
            "/chat.v1.ChatService/RegisterDeviceToken",
            post(devices::register_device_token),
        )
        .route(
            "/chat.v1.ChatService/ListDeviceTokens",
            post(devices::list_device_tokens),
        )
        .route(
            "/chat.v1.ChatService/DeleteDeviceToken",
            post(devices::delete_device_token),
        )
        // Outermost first: metrics see the final code; the error-body layer sees the
        // responses of the timeout and body-limit layers.
        .layer(
            ServiceBuilder::new()
                .layer(axum::middleware::from_fn_with_state(
                    app.clone(),
                    middleware::track_request,
                ))
                .layer(axum::middleware::from_fn_with_state(
                    app.clone(),
                    middleware::connect_error_body,
                ))
                // The body limit too (the bytes it passes on are within it).
                .layer(axum::middleware::from_fn_with_state(
                    app.clone(),
                    middleware::read_whole_body,
                ))
                .layer(TimeoutLayer::with_status_code(
                    axum::http::StatusCode::GATEWAY_TIMEOUT,
                    app.limits.request_timeout,
                )),
        );
    // Long-lived: no request timeout.
    let streams = Router::new()
        .route(
            "/chat.v1.ChatService/StreamMessages",
            get(stream::stream_messages).post(stream::stream_messages),
        )
        .layer(
            ServiceBuilder::new()
                .layer(axum::middleware::from_fn_with_state(
                    app.clone(),
                    middleware::connect_error_body,
                ))
                .layer(RequestBodyLimitLayer::new(app.limits.max_body_bytes)),
        );
    let api = unary
        .merge(streams)
        .fallback(middleware::unknown_method)
        .method_not_allowed_fallback(middleware::unknown_method);
    health::router()
        .merge(api)
        .layer(TraceLayer::new_for_http())
        .with_state(app)
}
