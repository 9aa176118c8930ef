//! The registry's listings, `GET /{group}` and `GET /`: read a page at a time, each page one
//! short read that the database builds as JSON, and streamed to the client as one array.
//!
//! Invariant: memory per listing is one page, whatever the group's size; a key is sent at
//! most once and in order. A listing is not one snapshot: an instance that changes while it
//! is sent shows as it was when its page was read.

use axum::body::{Body, Bytes};
use axum::http::header;
use axum::response::{IntoResponse, Response};

use super::store::{Page, RegistryStore};
use crate::error::{Error, Result};

/// The most instances one page of `GET /{group}` holds: under a megabyte of JSON with every
/// meta at [`META_LIMIT`].
const INSTANCES_PAGE: i64 = 100;

/// The most groups one page of `GET /` holds: at most about 130 bytes each, so some 130 KB.
/// (Pages of 100 made a listing of 1 000 groups a tenth slower, for no memory worth saving.)
const GROUPS_PAGE: i64 = 1000;

/// A group as `GET /` lists it. The database builds this JSON itself (see `groups_page` in
/// `store/`); this type is its description for the API document.
#[derive(utoipa::ToSchema)]
#[schema(rename_all = "camelCase")]
#[expect(
    dead_code,
    reason = "only its API description is used: the database builds the JSON"
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
    store: RegistryStore,
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
    pub async fn new(store: &RegistryStore, listed: Listed) -> Result<Self, sqlx::Error> {
        Ok(Self {
            live_after: store.live_after().await?,
            store: store.clone(),
            listed,
            after: Some(String::new()),
            ready: None,
        })
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
                let store = &self.store;
                store
                    .instances_page(group, &after, self.live_after, limit)
                    .await?
            }
            Listed::Groups => {
                let store = &self.store;
                store.groups_page(&after, self.live_after, limit).await?
            }
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

/// A response whose body is JSON that the database already built.
pub fn json_response(body: Body) -> Response {
    ([(header::CONTENT_TYPE, "application/json")], body).into_response()
}
