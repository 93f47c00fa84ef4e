//! Full-text search over the messages a user may read: a `$text` query where the server has
//! text indexes (MongoDB, nx-27017), a case-insensitive `$regex` where it refuses them
//! (SecantusDB, code 67), decided once, when the index is created.

use std::sync::Arc;
use std::time::Duration;

use futures_util::TryStreamExt;
use mongodb::bson::{Document, doc};
use mongodb::options::IndexOptions;
use mongodb::{Database, IndexModel};

use super::{MessageRecord, Store};
use crate::domain::{RoomId, UserId};

/// How the store searches, as start-up found out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SearchMode {
    Text,
    Regex,
}

/// Creates the text index of message bodies; where the server has none, search falls back
/// to scanning with `$regex`.
pub(super) async fn ensure_index(db: &Database) -> mongodb::error::Result<SearchMode> {
    const CANNOT_CREATE_INDEX: i32 = 67;
    let index = IndexModel::builder()
        .keys(doc! { "body": "text" })
        .options(IndexOptions::builder().name("body_text".to_owned()).build())
        .build();
    let messages = db.collection::<Document>("messages");
    match messages.create_index(index).await {
        Ok(_) => Ok(SearchMode::Text),
        Err(err) if super::server_codes(&err).contains(&CANNOT_CREATE_INDEX) => {
            tracing::info!("this MongoDB server has no text indexes; search scans with $regex");
            Ok(SearchMode::Regex)
        }
        // nx-27017 refuses to create a text index again once the collection has documents
        // (and does not list it): a `$text` query that works says it is there.
        Err(err) => match messages
            .find_one(doc! { "$text": { "$search": "x" } })
            .await
        {
            Ok(_) => Ok(SearchMode::Text),
            Err(_) => Err(err),
        },
    }
}

/// A query has at most this many characters, and this many words.
pub const MAX_QUERY_CHARS: usize = 200;
pub const MAX_QUERY_WORDS: usize = 10;

/// The words of a query: separated by white space, without quotes (a query is a set of words,
/// every one of which a hit has).
pub fn terms(query: &str) -> Result<Vec<String>, String> {
    let words: Vec<String> = query
        .split_whitespace()
        .map(|w| w.replace('"', ""))
        .filter(|w| !w.is_empty())
        .collect();
    match words.len() {
        0 => Err("the query has no words".to_owned()),
        n if n > MAX_QUERY_WORDS => Err(format!(
            "the query must have at most {MAX_QUERY_WORDS} words"
        )),
        _ => Ok(words),
    }
}

/// A regex matching `text` literally.
fn literal(text: &str) -> String {
    let mut out = String::with_capacity(text.len() * 2);
    for c in text.chars() {
        if "\\^$.|?*+()[]{}".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// The newest messages of the caller's conversations that a search reads and matches itself
/// before it asks the index: a text index gives every match of a word unordered, so a word in
/// many messages costs a sort of all of them (and nx-27017 pays for each), while a word in 2%
/// of these fills a page of 20 from them alone.
const RECENT: i64 = 1000;

/// Whether `body` has every one of `words` as the store's query finds them: where the server
/// has a text index, each word as whole words (runs of letters and digits, without case or
/// accents; a word of several, such as `foo-bar`, as those words one after another), which is
/// how nx-27017's index matches a quoted word; where it scans, as a part of a word.
fn has_words(mode: SearchMode, words: &[String], body: &str) -> bool {
    match mode {
        SearchMode::Text => {
            let body = tokens(body);
            words.iter().all(|word| {
                let word = tokens(word);
                !word.is_empty() && body.windows(word.len()).any(|at| at == word.as_slice())
            })
        }
        SearchMode::Regex => {
            let body = body.to_lowercase();
            words.iter().all(|word| body.contains(&word.to_lowercase()))
        }
    }
}

/// The words of `text` as a text index has them: lower case, accents removed.
fn tokens(text: &str) -> Vec<String> {
    use unicode_normalization::UnicodeNormalization;
    use unicode_normalization::char::is_combining_mark;
    let folded: String = text
        .nfd()
        .filter(|c| !is_combining_mark(*c))
        .flat_map(char::to_lowercase)
        .collect();
    folded
        .split(|c: char| !c.is_alphanumeric())
        .filter(|t| !t.is_empty())
        .map(str::to_owned)
        .collect()
}

/// How long a user's list of direct conversations is kept before search reads it again.
const PARTNERS_FOR: Duration = Duration::from_secs(30);
/// Users whose lists are kept at most.
const PARTNERS_KEPT: u64 = 10_000;
/// A user with this many direct conversations or more is searched through the index alone.
const MAX_PARTNERS: usize = 10_000;

pub(super) fn partners_cache() -> moka::sync::Cache<UserId, Option<Partners>> {
    moka::sync::Cache::builder()
        .max_capacity(PARTNERS_KEPT)
        .time_to_live(PARTNERS_FOR)
        .build()
}

/// Everyone a user has a direct conversation with, as the pair counters listed them at
/// `listed_at_ms`. A conversation is listed once its first message is counted, within the
/// reconciler's lag of its storing: a search reads the direct messages since a little before
/// `listed_at_ms` besides, whatever their conversation.
#[derive(Debug, Clone)]
pub struct Partners {
    pub users: Arc<[UserId]>,
    pub listed_at_ms: i64,
}

/// The caller's direct conversations, as a search reads their recent messages itself.
#[derive(Debug, Clone, Copy)]
pub struct Directs<'a> {
    /// Everyone the caller has a direct conversation with, as the pair counters list them.
    pub partners: &'a [UserId],
    /// A conversation is listed once its first message is counted: every direct message
    /// since this time (ms) is read as well, whatever its conversation.
    pub since_ms: i64,
}

impl Store {
    /// `user`'s [`Partners`], read once in [`PARTNERS_FOR`]; `None` past [`MAX_PARTNERS`].
    pub async fn partners(&self, user: UserId) -> mongodb::error::Result<Option<Partners>> {
        if let Some(kept) = self.partners.get(&user) {
            return Ok(kept);
        }
        let listed_at_ms = super::now_ms();
        let counted = self.partners_of(&user.to_string(), MAX_PARTNERS).await?;
        let users: Arc<[UserId]> = counted
            .into_iter()
            .filter_map(|(partner, _)| UserId::parse(&partner).ok())
            .collect();
        let listed = (users.len() < MAX_PARTNERS).then_some(Partners {
            users,
            listed_at_ms,
        });
        self.partners.insert(user, listed.clone());
        Ok(listed)
    }

    /// The messages of `rooms` and of `user`'s direct conversations that have every one of
    /// `words`, newest first, older than `before` (a `seq`) when given, at most `limit`.
    /// Deleted messages have no body and are never found.
    ///
    /// With `directs`, the newest [`RECENT`] messages of the rooms and of the listed direct
    /// conversations, and every direct message since `directs.since_ms`, are matched here;
    /// only if they do not fill the page is the index asked, for the listed conversations'
    /// older messages. Without, the index is asked for everything.
    pub async fn search(
        &self,
        words: &[String],
        user: UserId,
        rooms: &[RoomId],
        directs: Option<Directs<'_>>,
        before: Option<&str>,
        limit: i64,
    ) -> mongodb::error::Result<Vec<MessageRecord>> {
        let me = user.to_string();
        let Some(directs) = directs else {
            let rooms: Vec<String> = rooms.iter().map(ToString::to_string).collect();
            let places = vec![
                doc! { "room_id": { "$in": rooms } },
                doc! { "sender_id": { "$eq": &me }, "room_id": { "$eq": null } },
                doc! { "recipient_id": { "$eq": &me } },
            ];
            return self.indexed_search(words, places, before, limit).await;
        };
        let conversations: Vec<String> = rooms
            .iter()
            .map(|room| super::room_conversation(*room))
            .chain(
                directs
                    .partners
                    .iter()
                    .map(|p| super::direct_conversation(user, *p)),
            )
            .collect();
        let listed = doc! { "conversation": { "$in": conversations } };
        let older = |mut filter: Document| {
            if let Some(before) = before {
                filter.insert("seq", doc! { "$lt": before });
            }
            filter
        };
        let messages = self.db.collection::<MessageRecord>("messages");
        // By `_id`, which sorts like `seq`: nx-27017 walks its `_id` order and stops early.
        let window = async {
            let found = messages
                .find(older(listed.clone()))
                .sort(doc! { "_id": -1 })
                .limit(RECENT)
                .await?;
            found.try_collect::<Vec<MessageRecord>>().await
        };
        // Direct messages too new for the list to have their conversation.
        let unlisted = [
            doc! { "recipient_id": { "$eq": &me } },
            doc! { "sender_id": { "$eq": &me }, "room_id": { "$eq": null } },
        ]
        .map(|mut place| {
            place.insert("at_ms", doc! { "$gte": directs.since_ms });
            let messages = &messages;
            let filter = older(place);
            async move {
                let found = messages.find(filter).await?;
                found.try_collect::<Vec<MessageRecord>>().await
            }
        });
        let read =
            futures_util::future::try_join(window, futures_util::future::try_join_all(unlisted));
        let (window, unlisted) = self.bounded("searching recent messages", read).await?;
        // Below the floor the window has not looked; without one it saw every message.
        let floor = match window.last() {
            Some(last) if i64::try_from(window.len()).unwrap_or(i64::MAX) >= RECENT => {
                Some(last.seq.clone())
            }
            _ => None,
        };
        let mode = self.search_mode();
        let hit = |m: &MessageRecord| m.deleted_at_ms.is_none() && has_words(mode, words, &m.body);
        let (mut found, mut unlisted_hits): (Vec<MessageRecord>, Vec<MessageRecord>) = (
            window.into_iter().filter(hit).collect(),
            unlisted.into_iter().flatten().filter(hit).collect(),
        );
        let below = |m: &MessageRecord| floor.as_ref().is_some_and(|floor| m.seq < *floor);
        let older_unlisted: Vec<MessageRecord> =
            unlisted_hits.extract_if(.., |m| below(m)).collect();
        merge(&mut found, unlisted_hits);
        let wanted = usize::try_from(limit).unwrap_or(usize::MAX);
        if let Some(floor) = &floor
            && found.len() < wanted
        {
            let rest = i64::try_from(wanted - found.len()).unwrap_or(limit);
            let mut older = self
                .indexed_search(words, vec![listed], Some(floor), rest)
                .await?;
            merge(&mut older, older_unlisted);
            older.truncate(wanted - found.len());
            found.extend(older);
        }
        found.truncate(wanted);
        Ok(found)
    }

    /// The messages of `places` (filters, each a place a readable message can be) that have
    /// every one of `words`, through the text index (or the scan), newest first.
    async fn indexed_search(
        &self,
        words: &[String],
        places: Vec<Document>,
        before: Option<&str>,
        limit: i64,
    ) -> mongodb::error::Result<Vec<MessageRecord>> {
        let mut matching = doc! { "deleted_at_ms": { "$exists": false } };
        match self.search_mode() {
            // Quoted, each word is required (unquoted, MongoDB finds any of them).
            SearchMode::Text => {
                let all: Vec<String> = words.iter().map(|w| format!("\"{w}\"")).collect();
                matching.insert("$text", doc! { "$search": all.join(" ") });
            }
            SearchMode::Regex => {
                let all: Vec<Document> = words
                    .iter()
                    .map(|w| doc! { "body": { "$regex": literal(w), "$options": "i" } })
                    .collect();
                matching.insert("$and", all);
            }
        }
        if let Some(before) = before {
            matching.insert("seq", doc! { "$lt": before });
        }
        // One query per place, merged: nx-27017 answers nothing to a `$text` query with an
        // `$or` beside it.
        let collection = self.db.collection::<MessageRecord>("messages");
        let reads = places.into_iter().map(|mut place| {
            place.extend(matching.clone());
            let collection = &collection;
            async move {
                let found = collection
                    .find(place)
                    .sort(doc! { "seq": -1 })
                    .limit(limit)
                    .await?;
                found.try_collect::<Vec<MessageRecord>>().await
            }
        });
        let read = futures_util::future::try_join_all(reads);
        let mut found: Vec<MessageRecord> = (self.bounded("searching messages", read).await?)
            .into_iter()
            .flatten()
            .collect();
        found.sort_by(|a, b| b.seq.cmp(&a.seq));
        found.truncate(usize::try_from(limit).unwrap_or(usize::MAX));
        Ok(found)
    }
}

/// Adds `more` to `found`, newest first, each message once.
fn merge(found: &mut Vec<MessageRecord>, more: Vec<MessageRecord>) {
    for message in more {
        if !found.iter().any(|m| m.id == message.id) {
            found.push(message);
        }
    }
    found.sort_by(|a, b| b.seq.cmp(&a.seq));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_query_is_its_words_without_quotes() {
        assert_eq!(terms(" deploy  \"friday\" ").unwrap(), ["deploy", "friday"]);
        assert!(terms(" \" \"\" ").is_err());
        assert!(terms(&"w ".repeat(MAX_QUERY_WORDS + 1)).is_err());
    }

    #[test]
    fn recent_messages_are_matched_as_the_index_matches() {
        let words = |q: &str| terms(q).unwrap();
        let text = |q: &str, body: &str| has_words(SearchMode::Text, &words(q), body);
        assert!(text("coffee", "Tea, COFFEE; milk"));
        assert!(text("Coffee", "coffee"));
        assert!(!text("coffee", "coffeehouse"));
        assert!(!text("coffee", "coffees"));
        assert!(
            text("coffee", "foo_coffee"),
            "an underscore separates words"
        );
        assert!(text("cafe", "un café"), "accents do not count");
        assert!(text("über", "uber cool"));
        assert!(text("foo-bar", "foo bar"));
        assert!(!text("foo-bar", "bar foo"));
        assert!(text("coffee.com", "email bob@coffee.com"));
        assert!(
            text("coffee milk", "milk and coffee"),
            "every word, in any order"
        );
        assert!(!text("coffee milk", "coffee only"));
        assert!(!text("!!!", "!!!"), "no word, no hit");
        let scan = |q: &str, body: &str| has_words(SearchMode::Regex, &words(q), body);
        assert!(scan("coffee", "a COFFEEHOUSE"));
        assert!(!scan("coffee milk", "coffee only"));
    }

    #[test]
    fn a_query_is_matched_literally() {
        assert_eq!(literal("a.b*(c)"), r"a\.b\*\(c\)");
        assert_eq!(literal("héllo"), "héllo");
    }
}
