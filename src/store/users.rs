use chrono::{DateTime, Utc};
use futures_util::TryStreamExt;
use mongodb::bson::{self, doc, oid::ObjectId};
use mongodb::options::IndexOptions;
use mongodb::{Collection, Database};
use serde::{Deserialize, Serialize};

use super::{Store, is_duplicate_key};
use crate::domain::{UserId, Username};

const COLLECTION: &str = "users";

/// A user as stored in MongoDB.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UserRecord {
    #[serde(rename = "_id")]
    pub id: ObjectId,
    /// As the user typed it at registration.
    pub username: String,
    /// Lower-cased; carries the unique index.
    pub username_lower: String,
    pub password_hash: String,
    pub created_at: bson::DateTime,
}

impl UserRecord {
    pub fn user_id(&self) -> UserId {
        UserId::from(self.id)
    }

    pub fn created_at(&self) -> DateTime<Utc> {
        DateTime::from_timestamp_millis(self.created_at.timestamp_millis()).unwrap_or_default()
    }
}

pub struct NewUser<'a> {
    pub username: &'a Username,
    pub password_hash: String,
}

pub(super) async fn ensure_indexes(db: &Database) -> mongodb::error::Result<()> {
    let unique = IndexOptions::builder().unique(true).build();
    let index = super::index_with(
        "username_lower_unique",
        doc! { "username_lower": 1 },
        unique,
    );
    users(db).create_index(index).await.map(|_| ())
}

fn users(db: &Database) -> Collection<UserRecord> {
    db.collection(COLLECTION)
}

#[derive(Debug, thiserror::Error)]
pub enum InsertUserError {
    #[error("the username is taken")]
    UsernameTaken,
    #[error(transparent)]
    Database(#[from] mongodb::error::Error),
}

impl Store {
    pub async fn insert_user(&self, new: NewUser<'_>) -> Result<UserRecord, InsertUserError> {
        let record = UserRecord {
            id: ObjectId::new(),
            username: new.username.as_str().to_owned(),
            username_lower: new.username.normalized(),
            password_hash: new.password_hash,
            created_at: bson::DateTime::now(),
        };
        match users(&self.db).insert_one(&record).await {
            Ok(_) => Ok(record),
            Err(err) if is_duplicate_key(&err) => Err(InsertUserError::UsernameTaken),
            Err(err) => Err(err.into()),
        }
    }

    pub async fn find_user_by_username(
        &self,
        username: &Username,
    ) -> mongodb::error::Result<Option<UserRecord>> {
        let users = users(&self.db);
        let find = users.find_one(doc! { "username_lower": { "$eq": username.normalized() } });
        self.bounded("reading a user", find).await
    }

    pub async fn find_user_by_id(&self, id: UserId) -> mongodb::error::Result<Option<UserRecord>> {
        let users = users(&self.db);
        let find = users.find_one(doc! { "_id": id.object_id() });
        self.bounded("reading a user", find).await
    }

    /// The users among `ids` that exist, in no particular order.
    pub async fn find_users_by_ids(
        &self,
        ids: &[UserId],
    ) -> mongodb::error::Result<Vec<UserRecord>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let ids: Vec<ObjectId> = ids.iter().map(UserId::object_id).collect();
        let users = users(&self.db);
        let find = async {
            users
                .find(doc! { "_id": { "$in": ids } })
                .await?
                .try_collect()
                .await
        };
        self.bounded("reading users", find).await
    }

    /// The users with these (lowercased) names that exist, in no particular order.
    pub async fn find_users_by_names(
        &self,
        names: &[String],
    ) -> mongodb::error::Result<Vec<UserRecord>> {
        if names.is_empty() {
            return Ok(Vec::new());
        }
        let users = users(&self.db);
        let find = async {
            let found = users
                .find(doc! { "username_lower": { "$in": names } })
                .await?;
            found.try_collect().await
        };
        self.bounded("reading users", find).await
    }
}
