//! Statistics endpoints. All are exact for any window and answered from counters maintained
//! on write (see `store::stats`), so they stay fast as history grows.

use std::collections::HashMap;

use actix_web::{HttpResponse, web};
use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::auth::AuthUser;
use crate::domain::RoomId;
use crate::error::{ApiError, ErrorBody, ErrorCode};
use crate::http::people::find_by_name;
use crate::http::{Query, limit_param, now};
use crate::state::AppState;
use crate::store::stats::{Kind, Level, Subjects, Tally, Window};

const DEFAULT_LIMIT: usize = 10;
const MAX_LIMIT: usize = 100;
const MAX_BUCKETS: i64 = 2000;

#[derive(Debug, Deserialize, IntoParams)]
pub struct StatsQuery {
    /// Start of the window (RFC 3339, inclusive). Open when absent.
    pub from: Option<DateTime<Utc>>,
    /// End of the window (RFC 3339, exclusive). Open (now) when absent.
    pub to: Option<DateTime<Utc>>,
    /// Entries to return, 1 to 100 (default 10).
    #[param(minimum = 1, maximum = 100)]
    pub limit: Option<usize>,
}

/// A window alone, for what has no ranking to limit.
#[derive(Debug, Deserialize, IntoParams)]
pub struct WindowQuery {
    /// Start of the window (RFC 3339, inclusive). Open when absent.
    pub from: Option<DateTime<Utc>>,
    /// End of the window (RFC 3339, exclusive). Open (now) when absent.
    pub to: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, Copy, Deserialize, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Bucket {
    Hour,
    Day,
}

#[derive(Debug, Deserialize, IntoParams)]
pub struct ActivityQuery {
    /// `hour` or `day` (UTC).
    pub bucket: Bucket,
    /// Start of the window (RFC 3339). Default: 24 buckets before `to` for hours, 30 for days.
    pub from: Option<DateTime<Utc>>,
    /// End of the window (RFC 3339, exclusive). Default: now.
    pub to: Option<DateTime<Utc>>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct UserCount {
    #[schema(example = "665f1c2e9b1e8a0012345678")]
    pub user_id: String,
    #[schema(example = "alice")]
    pub username: String,
    #[schema(example = 42)]
    pub count: i64,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct UserRanking {
    pub from: Option<DateTime<Utc>>,
    pub to: Option<DateTime<Utc>>,
    /// Most first; ties by name.
    pub users: Vec<UserCount>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct RoomCount {
    pub room_id: String,
    #[schema(example = "general")]
    pub name: String,
    #[schema(example = 1234)]
    pub count: i64,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct RoomRanking {
    pub from: Option<DateTime<Utc>>,
    pub to: Option<DateTime<Utc>>,
    /// Most first; ties by name.
    pub rooms: Vec<RoomCount>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ActivityPoint {
    /// Start of the bucket (UTC).
    pub start: DateTime<Utc>,
    /// Messages in the bucket (within the window).
    pub count: i64,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ActivityResponse {
    pub bucket: Bucket,
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    /// Every bucket of the window, empty ones as zeros, oldest first.
    pub points: Vec<ActivityPoint>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct SummaryResponse {
    pub from: Option<DateTime<Utc>>,
    pub to: Option<DateTime<Utc>>,
    /// Registered users (all time).
    pub users: i64,
    /// Rooms (all time).
    pub rooms: i64,
    /// Messages in the window.
    pub messages: i64,
    /// Direct messages in the window.
    pub direct_messages: i64,
    /// Users online now.
    pub online_now: usize,
    /// Messages in the 24 hours before now.
    pub messages_last_24h: i64,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct UserStatsResponse {
    pub from: Option<DateTime<Utc>>,
    pub to: Option<DateTime<Utc>>,
    pub user_id: String,
    pub username: String,
    /// Messages sent (rooms and direct).
    pub sent: i64,
    /// Direct messages received.
    pub received: i64,
    /// First message sent or received in the window.
    pub first_activity: Option<DateTime<Utc>>,
    /// Last message sent or received in the window.
    pub last_activity: Option<DateTime<Utc>>,
    /// Direct-message partners by messages exchanged (both ways), most first. Only in one's
    /// own statistics: whom another user writes to privately is theirs.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub top_partners: Option<Vec<UserCount>>,
}

/// The times a window may start or end at: 1970 to the end of 9999. Chrono goes much further,
/// but date arithmetic on its edges (a default window before `to`, bucket edges after `from`)
/// would overflow, and no message is stored outside.
fn in_range(name: &str, at: Option<DateTime<Utc>>) -> Result<(), ApiError> {
    const LAST_MS: i64 = 253_402_300_799_999; // 9999-12-31T23:59:59.999Z
    match at {
        Some(at) if !(0..=LAST_MS).contains(&at.timestamp_millis()) => {
            Err(ApiError::unprocessable(
                ErrorCode::InvalidWindow,
                format!("`{name}` must be between 1970-01-01T00:00:00Z and 9999-12-31T23:59:59Z"),
            ))
        }
        _ => Ok(()),
    }
}

fn window(from: Option<DateTime<Utc>>, to: Option<DateTime<Utc>>) -> Result<Window, ApiError> {
    in_range("from", from)?;
    in_range("to", to)?;
    if let (Some(from), Some(to)) = (from, to)
        && from >= to
    {
        return Err(ApiError::unprocessable(
            ErrorCode::InvalidWindow,
            "`from` must be before `to`",
        ));
    }
    Ok(Window { from, to })
}

fn limit(raw: Option<usize>) -> Result<usize, ApiError> {
    limit_param(raw, DEFAULT_LIMIT, MAX_LIMIT)
}

/// Most first, then by name (case-insensitively), then by id: deterministic.
fn ranked(tallies: HashMap<String, Tally>, limit: usize) -> Vec<(String, Tally)> {
    let mut entries: Vec<(String, Tally)> = tallies.into_iter().filter(|(_, t)| t.n > 0).collect();
    entries.sort_by(|(a_id, a), (b_id, b)| {
        b.n.cmp(&a.n)
            .then_with(|| a.name.to_lowercase().cmp(&b.name.to_lowercase()))
            .then_with(|| a_id.cmp(b_id))
    });
    entries.truncate(limit);
    entries
}

async fn user_ranking(
    state: &AppState,
    kind: Kind,
    query: &StatsQuery,
) -> Result<HttpResponse, ApiError> {
    let window = window(query.from, query.to)?;
    let limit = limit(query.limit)?;
    state.delivery.before_reading_counts().await;
    let tallies = state
        .store
        .ranking_candidates(kind, &Subjects::All, window, limit)
        .await?;
    let users = ranked(tallies, limit)
        .into_iter()
        .map(|(user_id, t)| UserCount {
            user_id,
            username: t.name,
            count: t.n,
        })
        .collect();
    Ok(HttpResponse::Ok().json(UserRanking {
        from: query.from,
        to: query.to,
        users,
    }))
}

/// Users ranked by messages sent (rooms and direct messages).
#[utoipa::path(get, path = "/stats/most-active", tag = "stats",
    security(("bearer_auth" = [])),
    params(StatsQuery),
    responses(
        (status = 200, description = "The ranking", body = UserRanking),
        (status = 400, description = "Malformed date or number", body = ErrorBody),
        (status = 401, description = "Missing, invalid or revoked token", body = ErrorBody),
        (status = 422, description = "`from` not before `to` or outside 1970-9999, or limit out of range", body = ErrorBody),
        (status = 503, description = "Storage unavailable", body = ErrorBody),
    ))]
pub async fn most_active(
    state: web::Data<AppState>,
    _user: AuthUser,
    query: Query<StatsQuery>,
) -> Result<HttpResponse, ApiError> {
    user_ranking(&state, Kind::Sent, &query).await
}

/// Users ranked by direct messages received: who is written to most.
#[utoipa::path(get, path = "/stats/most-solicited", tag = "stats",
    security(("bearer_auth" = [])),
    params(StatsQuery),
    responses(
        (status = 200, description = "The ranking", body = UserRanking),
        (status = 400, description = "Malformed date or number", body = ErrorBody),
        (status = 401, description = "Missing, invalid or revoked token", body = ErrorBody),
        (status = 422, description = "`from` not before `to` or outside 1970-9999, or limit out of range", body = ErrorBody),
        (status = 503, description = "Storage unavailable", body = ErrorBody),
    ))]
pub async fn most_solicited(
    state: web::Data<AppState>,
    _user: AuthUser,
    query: Query<StatsQuery>,
) -> Result<HttpResponse, ApiError> {
    user_ranking(&state, Kind::Received, &query).await
}

/// Rooms ranked by messages.
#[utoipa::path(get, path = "/stats/rooms", tag = "stats",
    security(("bearer_auth" = [])),
    params(StatsQuery),
    responses(
        (status = 200, description = "The ranking", body = RoomRanking),
        (status = 400, description = "Malformed date or number", body = ErrorBody),
        (status = 401, description = "Missing, invalid or revoked token", body = ErrorBody),
        (status = 422, description = "`from` not before `to` or outside 1970-9999, or limit out of range", body = ErrorBody),
        (status = 503, description = "Storage unavailable", body = ErrorBody),
    ))]
pub async fn rooms(
    state: web::Data<AppState>,
    _user: AuthUser,
    query: Query<StatsQuery>,
) -> Result<HttpResponse, ApiError> {
    let window = window(query.from, query.to)?;
    let limit = limit(query.limit)?;
    state.delivery.before_reading_counts().await;
    let (mut tallies, all_rooms) = tokio::try_join!(
        state.store.tally(Kind::Room, &Subjects::All, window),
        state.store.list_rooms(10_000),
    )?;
    let names: HashMap<String, String> = all_rooms
        .iter()
        .map(|r| (r.room_id().to_string(), r.name.clone()))
        .collect();
    for (id, tally) in &mut tallies {
        if let Some(name) = names.get(id) {
            tally.name.clone_from(name);
        }
    }
    let rooms = ranked(tallies, limit)
        .into_iter()
        .filter(|(id, _)| RoomId::parse(id).is_ok())
        .map(|(room_id, t)| RoomCount {
            room_id,
            name: t.name,
            count: t.n,
        })
        .collect();
    Ok(HttpResponse::Ok().json(RoomRanking {
        from: query.from,
        to: query.to,
        rooms,
    }))
}

/// Messages per hour or day (UTC), every bucket of the window present, zeros included.
#[utoipa::path(get, path = "/stats/activity", tag = "stats",
    security(("bearer_auth" = [])),
    params(ActivityQuery),
    responses(
        (status = 200, description = "The series, oldest first", body = ActivityResponse),
        (status = 400, description = "Unknown bucket, malformed date", body = ErrorBody),
        (status = 401, description = "Missing, invalid or revoked token", body = ErrorBody),
        (status = 422, description = "`from` not before `to` or outside 1970-9999, or more than 2000 buckets", body = ErrorBody),
        (status = 503, description = "Storage unavailable", body = ErrorBody),
    ))]
pub async fn activity(
    state: web::Data<AppState>,
    _user: AuthUser,
    query: Query<ActivityQuery>,
) -> Result<HttpResponse, ApiError> {
    let (level, step) = match query.bucket {
        Bucket::Hour => (Level::Hour, Duration::hours(1)),
        Bucket::Day => (Level::Day, Duration::days(1)),
    };
    in_range("from", query.from)?;
    in_range("to", query.to)?;
    let to = query.to.unwrap_or_else(now);
    let from = query.from.unwrap_or_else(|| {
        let default = if matches!(query.bucket, Bucket::Hour) {
            24
        } else {
            30
        };
        (to - step * default).max(DateTime::UNIX_EPOCH)
    });
    // Without `to` the window is left open for the store, as in the summary: nothing is
    // stored after now, so the current hour is read from its counter instead of from its
    // messages on every request (measured: 360-420 ms with 4,000 messages an hour, 100,000 in
    // all).
    let window = Window {
        to: query.to,
        ..window(Some(from), Some(to))?
    };
    let first_bucket = bucket_start(level, from);
    if (to - first_bucket).num_milliseconds() / step.num_milliseconds() >= MAX_BUCKETS {
        return Err(ApiError::unprocessable(
            ErrorCode::TooManyBuckets,
            format!(
                "the window holds more than {MAX_BUCKETS} buckets; narrow it or use a larger bucket"
            ),
        ));
    }
    state.delivery.before_reading_counts().await;
    let series = state.store.activity_series(level, window).await?;
    let mut points = Vec::new();
    let mut start = first_bucket;
    while start < to {
        points.push(ActivityPoint {
            start,
            count: series.get(&start.timestamp_millis()).copied().unwrap_or(0),
        });
        start += step;
    }
    Ok(HttpResponse::Ok().json(ActivityResponse {
        bucket: query.bucket,
        from,
        to,
        points,
    }))
}

fn bucket_start(level: Level, t: DateTime<Utc>) -> DateTime<Utc> {
    let ms = t.timestamp_millis();
    let size = if level == Level::Hour {
        3_600_000
    } else {
        86_400_000
    };
    DateTime::from_timestamp_millis(ms - ms.rem_euclid(size)).unwrap_or(t)
}

/// Totals: users, rooms, messages and direct messages (in the window), online now, last 24 h.
#[utoipa::path(get, path = "/stats/summary", tag = "stats",
    security(("bearer_auth" = [])),
    params(WindowQuery),
    responses(
        (status = 200, description = "The totals", body = SummaryResponse),
        (status = 400, description = "Malformed date", body = ErrorBody),
        (status = 401, description = "Missing, invalid or revoked token", body = ErrorBody),
        (status = 422, description = "`from` not before `to` or outside 1970-9999", body = ErrorBody),
        (status = 503, description = "Storage or Redis unavailable", body = ErrorBody),
    ))]
pub async fn summary(
    state: web::Data<AppState>,
    _user: AuthUser,
    query: Query<WindowQuery>,
) -> Result<HttpResponse, ApiError> {
    let window = window(query.from, query.to)?;
    let now = now();
    // Open-ended: nothing is stored after now, and the current hour is then read from its
    // counters rather than from the messages themselves.
    let day = Window {
        from: Some(now - Duration::hours(24)),
        to: None,
    };
    let all = Subjects::All;
    state.delivery.before_reading_counts().await;
    let (users, rooms, [messages, direct], last_day) = tokio::try_join!(
        state.store.count_all("users"),
        state.store.count_all("rooms"),
        state
            .store
            .tallies([(Kind::Total, &all), (Kind::Direct, &all)], window),
        state.store.tally(Kind::Total, &all, day),
    )?;
    let online_now = state.live.online_count().await?;
    let total = |t: &HashMap<String, Tally>| t.values().map(|t| t.n).sum::<i64>();
    Ok(HttpResponse::Ok().json(SummaryResponse {
        from: query.from,
        to: query.to,
        users,
        rooms,
        messages: total(&messages),
        direct_messages: total(&direct),
        online_now,
        messages_last_24h: total(&last_day),
    }))
}

/// One user's activity: sent and received counts, first and last activity, and in one's own
/// statistics the top direct-message partners.
#[utoipa::path(get, path = "/stats/users/{username}", tag = "stats",
    security(("bearer_auth" = [])),
    params(("username" = String, Path, description = "The user"), StatsQuery),
    responses(
        (status = 200, description = "The user's statistics", body = UserStatsResponse),
        (status = 400, description = "Malformed date or number", body = ErrorBody),
        (status = 401, description = "Missing, invalid or revoked token", body = ErrorBody),
        (status = 404, description = "No such user", body = ErrorBody),
        (status = 422, description = "`from` not before `to` or outside 1970-9999, or limit out of range", body = ErrorBody),
        (status = 503, description = "Storage unavailable", body = ErrorBody),
    ))]
pub async fn user_stats(
    state: web::Data<AppState>,
    caller: AuthUser,
    path: web::Path<String>,
    query: Query<StatsQuery>,
) -> Result<HttpResponse, ApiError> {
    let window = window(query.from, query.to)?;
    let limit = limit(query.limit)?;
    let user = find_by_name(&state, &path).await?;
    let id = user.user_id().to_string();
    let exact = Subjects::Exact(id.clone());
    state.delivery.before_reading_counts().await;
    let both = [(Kind::Sent, &exact), (Kind::Received, &exact)];
    // Another user's partners are not theirs to see, and are not read.
    let partners_of =
        (user.user_id() == caller.user_id).then(|| Subjects::Prefix(format!("{id}|")));
    let ([sent, received], pairs) = match &partners_of {
        None => (state.store.tallies(both, window).await?, None),
        // All time: only the partners that can make the top `limit` are read.
        Some(partners_of) if window.from.is_none() && window.to.is_none() => {
            let (counts, pairs) = tokio::try_join!(
                state.store.tallies(both, window),
                state
                    .store
                    .ranking_candidates(Kind::Pair, partners_of, window, limit),
            )?;
            (counts, Some(pairs))
        }
        // One plan and one read of the raw edges for the three kinds.
        Some(partners_of) => {
            let [sent, received, pairs] = state
                .store
                .tallies([both[0], both[1], (Kind::Pair, partners_of)], window)
                .await?;
            ([sent, received], Some(pairs))
        }
    };
    let sent = sent.get(&id).cloned().unwrap_or_default();
    let received = received.get(&id).cloned().unwrap_or_default();
    let first_activity = [sent.first, received.first].into_iter().flatten().min();
    let last_activity = [sent.last, received.last].into_iter().flatten().max();
    let top_partners = pairs.map(|pairs| {
        let partners: HashMap<String, Tally> = pairs
            .into_iter()
            .filter_map(|(subject, t)| Some((subject.split_once('|')?.1.to_owned(), t)))
            .collect();
        ranked(partners, limit)
            .into_iter()
            .map(|(user_id, t)| UserCount {
                user_id,
                username: t.name,
                count: t.n,
            })
            .collect()
    });
    Ok(HttpResponse::Ok().json(UserStatsResponse {
        from: query.from,
        to: query.to,
        user_id: id,
        username: user.username,
        sent: sent.n,
        received: received.n,
        first_activity,
        last_activity,
        top_partners,
    }))
}
