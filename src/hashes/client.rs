//! The HTTP client behind `warden hash` and `warden stats`.

use crate::client::{ClientError, successful};

/// A client of one warden hash listener.
#[derive(Debug, Clone)]
pub struct HashesClient {
    http: reqwest::Client,
    base: String,
}

impl HashesClient {
    /// A client of the hash listener at `base` (e.g. `http://127.0.0.1:8080`).
    pub fn new(base: &str) -> Self {
        Self {
            http: reqwest::Client::new(),
            base: base.trim_end_matches('/').to_owned(),
        }
    }

    /// `POST /hash` with `password` as a form field; the id it was given.
    pub async fn hash(&self, password: &str) -> Result<String, ClientError> {
        let request = self
            .http
            .post(format!("{}/hash", self.base))
            .form(&[("password", password)]);
        self.text(request).await
    }

    /// `GET /stats`, as the server wrote it.
    pub async fn stats(&self) -> Result<String, ClientError> {
        self.text(self.http.get(format!("{}/stats", self.base)))
            .await
    }

    async fn text(&self, request: reqwest::RequestBuilder) -> Result<String, ClientError> {
        let response = request
            .send()
            .await
            .map_err(|error| ClientError::unreachable(&self.base, &error))?;
        successful(response)
            .await?
            .text()
            .await
            .map_err(|error| ClientError::BadAnswer(error.to_string()))
    }
}
