//! Full-text search over the messages a user may read: a `$text` query where the server has
//! text indexes (MongoDB, nx-27017), a case-insensitive `$regex` where it refuses them
//! (SecantusDB, code 67), decided once, when the index is created.

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

impl Store {
    /// The messages of `rooms` and of `user`'s direct conversations that have every one of
    /// `words`, newest first, older than `before` (a `seq`) when given, at most `limit`.
    /// Deleted messages have no body and are never found.
    pub async fn search(
        &self,
        words: &[String],
        user: UserId,
        rooms: &[RoomId],
        before: Option<&str>,
        limit: i64,
    ) -> mongodb::error::Result<Vec<MessageRecord>> {
        let rooms: Vec<String> = rooms.iter().map(ToString::to_string).collect();
        let me = user.to_string();
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
        // One query per place a readable message can be, merged: nx-27017 answers nothing to a
        // `$text` query with an `$or` beside it.
        let places = [
            doc! { "room_id": { "$in": rooms } },
            doc! { "sender_id": { "$eq": &me }, "room_id": { "$eq": null } },
            doc! { "recipient_id": { "$eq": &me } },
        ];
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
    fn a_query_is_matched_literally() {
        assert_eq!(literal("a.b*(c)"), r"a\.b\*\(c\)");
        assert_eq!(literal("héllo"), "héllo");
    }
}
