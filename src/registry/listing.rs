//! The registry's listings, `GET /{group}` and `GET /`: read a page at a time, each page one
//! short read that SQLite builds as JSON, and streamed to the client as one array.
//!
//! Invariant: memory per listing is one page, whatever the group's size; a key is sent at
//! most once and in order. A listing is not one snapshot: an instance that changes while it
//! is sent shows as it was when its page was read.

use axum::body::{Body, Bytes};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use sqlx::SqlitePool;

use super::Registry;
use crate::error::{Error, Result};

/// The most instances one page of `GET /{group}` holds: under a megabyte of JSON with every
/// meta at [`META_LIMIT`].
const INSTANCES_PAGE: i64 = 100;

/// The most groups one page of `GET /` holds: at most about 130 bytes each, so some 130 KB.
/// (Pages of 100 made a listing of 1 000 groups a tenth slower, for no memory worth saving.)
const GROUPS_PAGE: i64 = 1000;

/// A group as `GET /` lists it. SQLite builds this JSON itself (see `groups_page`); this type
/// is its description for the API document, so the two are kept together here.
#[derive(utoipa::ToSchema)]
#[schema(rename_all = "camelCase")]
#[expect(
    dead_code,
    reason = "only its API description is used: SQLite builds the JSON"
)]
pub struct GroupSummary {
    /// The group's name.
    group: String,
    /// How many live instances it has (at least 1).
    #[schema(minimum = 1)]
    instances: i64,
    /// When its oldest live instance registered (ms since the Unix epoch).
    created_at: i64,
    /// Its latest heartbeat (ms since the Unix epoch).
    last_updated_at: i64,
}

/// What a listing lists.
#[derive(Debug)]
pub enum Listed {
    /// The live instances of one group, by id.
    Instances { group: String },
    /// Every group with a live instance, by name.
    Groups,
}

/// A listing on its way to a client: one JSON array, read and sent a page at a time.
///
/// Each page is one short read that resumes after the last key the previous page sent, so a
/// key is sent at most once and in order; but the listing is not one snapshot: an instance
/// that changes while it is sent shows as it was when its page was read.
pub struct Listing {
    reads: SqlitePool,
    listed: Listed,
    /// The liveness cutoff, fixed when the request arrived, for every page.
    live_after: i64,
    /// Where the next page starts; `None` once the last page has been read.
    after: Option<String>,
    /// The part of the body read but not yet sent.
    ready: Option<Bytes>,
}

impl Listing {
    /// A listing of `listed`, live as of now.
    pub fn new(registry: &Registry, listed: Listed) -> Self {
        Self {
            reads: registry.db.reads.clone(),
            listed,
            live_after: registry.live_after(),
            after: Some(String::new()),
            ready: None,
        }
    }

    fn page_size(&self) -> i64 {
        match self.listed {
            Listed::Instances { .. } => INSTANCES_PAGE,
            Listed::Groups => GROUPS_PAGE,
        }
    }

    /// Reads the first page and answers with the whole listing, or `None` if there is nothing
    /// to list. The first page is read before anything is sent, so an empty listing can still
    /// be a 404 and a failed first read is still an error answer. A listing of one page goes
    /// out whole, as one body of known length; a longer one is streamed.
    pub async fn respond(mut self) -> Result<Option<Response>> {
        let Some(page) = self.read_next().await? else {
            return Ok(None);
        };
        if page.is_empty() {
            return Ok(None);
        }
        if self.after.is_none() {
            return Ok(Some(json_response(Body::from(page.json))));
        }
        self.ready = Some(self.splice(page, true).map_err(Error::Internal)?);
        Ok(Some(json_response(Body::from_stream(
            futures_util::stream::unfold(self, Self::next_chunk),
        ))))
    }

    /// The next part of the body; after a failed read, an error, which cuts the body off.
    async fn next_chunk(mut self) -> Option<(std::io::Result<Bytes>, Self)> {
        if let Some(ready) = self.ready.take() {
            return Some((Ok(ready), self));
        }
        let chunk = match self.read_next().await {
            Ok(None) => return None,
            // What followed the previous page has gone since: the array still needs its end.
            Ok(Some(page)) if page.is_empty() => Ok(Bytes::from_static(b"]")),
            Ok(Some(page)) => self.splice(page, false),
            Err(error) => Err(error.to_string()),
        };
        Some((
            chunk.map_err(|error| {
                tracing::error!(%error, "a listing page could not be read; cutting the answer off");
                self.after = None;
                std::io::Error::other("the listing could not be read")
            }),
            self,
        ))
    }

    /// Reads the page after `self.after`, if there is one to read, and moves `self.after` on.
    async fn read_next(&mut self) -> Result<Option<Page>, sqlx::Error> {
        let Some(after) = self.after.take() else {
            return Ok(None);
        };
        let limit = self.page_size();
        let page = match &self.listed {
            Listed::Instances { group } => {
                instances_page(&self.reads, group, &after, self.live_after, limit).await?
            }
            Listed::Groups => groups_page(&self.reads, &after, self.live_after, limit).await?,
        };
        if page.more {
            self.after.clone_from(&page.last);
        }
        Ok(Some(page))
    }

    /// A page's JSON array as its part of the whole array, changed in place: a later page's `[`
    /// becomes the `,` that continues the array, and every page but the last loses its `]`.
    fn splice(&self, page: Page, first: bool) -> Result<Bytes, String> {
        let mut json = page.json.into_bytes();
        if json.len() < 2 || json.first() != Some(&b'[') || json.last() != Some(&b']') {
            return Err("a listing page is not a JSON array".into());
        }
        if !first {
            json[0] = b',';
        }
        if self.after.is_some() {
            json.pop();
        }
        Ok(Bytes::from(json))
    }
}

/// One page of a listing, as SQLite built it: its items as a JSON array (`[]` when there are
/// none); whether anything followed it when it was read; and if so, in `last`, the key of its
/// last item, after which the next page starts.
///
/// SQLite builds the JSON: one row per page crosses from SQLite's thread instead of one per
/// item. Knowing `more` up front lets a listing of one page go out whole, and the last page
/// carry the array's end.
#[derive(Debug)]
struct Page {
    pub json: String,
    pub last: Option<String>,
    pub more: bool,
}

impl Page {
    /// Whether the page has no item.
    pub fn is_empty(&self) -> bool {
        self.json == "[]"
    }
}

/// Up to `limit` live instances of `group` with an id after `after`, by id.
///
/// First the page's end: the `limit`-th live id after `after`, from a walk of the primary
/// key that leaves meta unread. Then one walk of the key range up to that end (or to the
/// group's last id, if fewer are left) builds the page, like the whole listing was built
/// before it was paged: a `LIMIT` on a subquery would pass every row through a co-routine
/// and cost a page of a small group a fifth more. Expired instances are filtered before the
/// count, so they never cut a page short.
async fn instances_page(
    reads: &SqlitePool,
    group: &str,
    after: &str,
    live_after: i64,
    limit: i64,
) -> Result<Page, sqlx::Error> {
    sqlx::query_as!(
        Page,
        r#"WITH page_end AS MATERIALIZED (
               SELECT (SELECT id FROM instances
                       WHERE group_name = ?1 AND id > ?2 AND updated_at_ms > ?3
                       ORDER BY id
                       LIMIT 1 OFFSET ?4 - 1) AS id
           )
           SELECT (SELECT json_group_array(
                              json_object('id', id, 'group', group_name,
                                          'createdAt', created_at_ms,
                                          'updatedAt', updated_at_ms, 'meta', json(meta))
                              ORDER BY id
                          )
                   FROM instances
                   WHERE group_name = ?1 AND id > ?2 AND updated_at_ms > ?3
                     AND id <= coalesce(page_end.id,
                                        (SELECT max(id) FROM instances WHERE group_name = ?1))
                  ) AS "json!: String",
                  page_end.id AS "last: String",
                  page_end.id IS NOT NULL
                  AND EXISTS (SELECT 1 FROM instances
                              WHERE group_name = ?1 AND id > page_end.id
                                AND updated_at_ms > ?3) AS "more!: bool"
           FROM page_end"#,
        group,
        after,
        live_after,
        limit
    )
    .fetch_one(reads)
    .await
}

/// Up to `limit` groups named after `after` that have a live instance, by name, each with
/// its count of live instances, the earliest `createdAt` and the latest heartbeat among them.
///
/// A walk of the primary key from `after`, already grouped; only live instances are
/// aggregated, so a group with none is neither listed nor counted against the limit.
async fn groups_page(
    reads: &SqlitePool,
    after: &str,
    live_after: i64,
    limit: i64,
) -> Result<Page, sqlx::Error> {
    sqlx::query_as!(
        Page,
        r#"SELECT json AS "json!: String",
                  last AS "last: String",
                  EXISTS (SELECT 1 FROM instances WHERE group_name > last AND updated_at_ms > ?2)
                      AS "more!: bool"
           FROM (
               SELECT json_group_array(
                          json_object('group', group_name, 'instances', instances,
                                      'createdAt', created_at_ms,
                                      'lastUpdatedAt', last_updated_at_ms)
                          ORDER BY group_name
                      ) AS json,
                      max(group_name) AS last
               FROM (
                   SELECT group_name,
                          count(*) AS instances,
                          min(created_at_ms) AS created_at_ms,
                          max(updated_at_ms) AS last_updated_at_ms
                   FROM instances
                   WHERE group_name > ?1 AND updated_at_ms > ?2
                   GROUP BY group_name
                   ORDER BY group_name
                   LIMIT ?3
               )
           )"#,
        after,
        live_after,
        limit
    )
    .fetch_one(reads)
    .await
}

/// A response whose body is JSON that SQLite already built.
pub fn json_response(body: Body) -> Response {
    ([(header::CONTENT_TYPE, "application/json")], body).into_response()
}
