//! The OpenAPI document, generated from the handlers' annotations. `export-openapi` writes it
//! to `openapi/openapi.json`; a test fails when that file and this code disagree.

use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use crate::error::ErrorBody;
use crate::http::{auth, conversations, events, health, messages, rooms, search, stats, users};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Chat service API",
        description = "Real-time chat backend. Authenticate with `POST /auth/login` and send the \
            returned token as `Authorization: Bearer <token>` (browsers may use the `access_token` \
            cookie set by login instead). Every error has the body `{\"error\": code, \"message\": text}`.",
        license(name = "MIT")
    ),
    paths(
        auth::register,
        auth::login,
        auth::logout,
        users::me,
        users::online,
        users::by_username,
        rooms::list_rooms,
        rooms::create_room,
        rooms::join_room,
        rooms::leave_room,
        rooms::room_messages,
        rooms::read_room,
        rooms::room_typing,
        messages::create_message,
        messages::edit_message,
        messages::delete_message,
        messages::add_reaction,
        messages::remove_reaction,
        conversations::conversation_messages,
        conversations::list_conversations,
        conversations::read_conversation,
        conversations::conversation_typing,
        search::search,
        events::events,
        stats::most_active,
        stats::most_solicited,
        stats::rooms,
        stats::activity,
        stats::summary,
        stats::user_stats,
        health::healthz,
        health::readyz,
    ),
    components(schemas(
        ErrorBody,
        events::ReadyEvent,
        events::ResyncEvent,
        events::PresenceEvent,
        events::LogoutEvent,
        crate::delivery::RoomMemberEvent,
        crate::delivery::ReactionEvent,
        crate::delivery::ReadEvent,
        crate::delivery::TypingEvent,
    )),
    modifiers(&SecurityAddon),
    tags(
        (name = "auth", description = "Accounts and sessions"),
        (name = "users", description = "Profiles and presence"),
        (name = "rooms", description = "Rooms: create, list, join, leave, read state, typing"),
        (name = "messages", description = "Messages: send, edit, delete, react, search; direct conversations and history"),
        (name = "events", description = "The live Server-Sent Events stream"),
        (name = "stats", description = "Statistics over the message history, each over an optional window"),
        (name = "health", description = "Liveness and readiness probes"),
    )
)]
pub struct ApiDoc;

struct SecurityAddon;

impl Modify for SecurityAddon {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer_auth",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .build(),
            ),
        );
    }
}

/// The document as committed in `openapi/openapi.json`: pretty JSON with a final newline.
pub fn openapi_json() -> Result<String, serde_json::Error> {
    let mut json = ApiDoc::openapi().to_pretty_json()?;
    json.push('\n');
    Ok(json)
}
