//! The HTTP client behind `warden jobs …`: one call per route, with the server's own error
//! message carried back in one line.

use std::io::Write;

use serde_json::Value;

use crate::client::{ClientError, successful};

/// A client of one warden jobs listener.
#[derive(Debug, Clone)]
pub struct JobsClient {
    http: reqwest::Client,
    base: String,
    token: Option<String>,
}

impl JobsClient {
    /// A client of the jobs listener at `base` (e.g. `https://127.0.0.1:8443`), over `tls`
    /// (mutual TLS) when given, sending `token` as the bearer token if given.
    pub fn new(
        base: &str,
        token: Option<String>,
        tls: Option<rustls::ClientConfig>,
    ) -> Result<Self, ClientError> {
        let builder = reqwest::Client::builder();
        let builder = match tls {
            Some(tls) => builder.tls_backend_preconfigured(tls),
            None => builder,
        };
        let http = builder
            .build()
            .map_err(|error| ClientError::unreachable(base, &error))?;
        Ok(Self {
            http,
            base: base.trim_end_matches('/').to_owned(),
            token,
        })
    }

    /// `POST /jobs` with `job`, a job request as the API takes it.
    pub async fn start(&self, job: &Value) -> Result<Value, ClientError> {
        let request = self.http.post(self.url("/jobs")).json(job);
        json_of(self.send(request).await?).await
    }

    /// One page of `GET /jobs[?status=S]`: the first when `next` is `None`, else the page
    /// that `next` (from the previous page) names. Returns the page's jobs and the next
    /// page's path, if more follow.
    pub async fn list_page(
        &self,
        status: Option<&str>,
        next: Option<&str>,
    ) -> Result<(Vec<Value>, Option<String>), ClientError> {
        let request = match next {
            Some(path) => self.http.get(self.url(path)),
            None => {
                let request = self.http.get(self.url("/jobs"));
                match status {
                    Some(status) => request.query(&[("status", status)]),
                    None => request,
                }
            }
        };
        let response = self.send(request).await?;
        let next = response
            .headers()
            .get(reqwest::header::LINK)
            .and_then(|link| link.to_str().ok())
            .and_then(next_page);
        match json_of(response).await? {
            Value::Array(jobs) => Ok((jobs, next)),
            _ => Err(ClientError::BadAnswer(
                "the job list is not an array".into(),
            )),
        }
    }

    /// `GET /jobs/{id}`.
    pub async fn status(&self, id: &str) -> Result<Value, ClientError> {
        let request = self.http.get(self.url(&format!("/jobs/{id}")));
        json_of(self.send(request).await?).await
    }

    /// `POST /jobs/{id}/stop`.
    pub async fn stop(&self, id: &str) -> Result<Value, ClientError> {
        let request = self.http.post(self.url(&format!("/jobs/{id}/stop")));
        json_of(self.send(request).await?).await
    }

    /// `GET /jobs/{id}/output[?follow=true]`, written to `out` as the bytes come.
    pub async fn logs(
        &self,
        id: &str,
        follow: bool,
        out: &mut impl Write,
    ) -> Result<(), ClientError> {
        let mut request = self.http.get(self.url(&format!("/jobs/{id}/output")));
        if follow {
            request = request.query(&[("follow", "true")]);
        }
        let mut response = self.send(request).await?;
        while let Some(bytes) = response
            .chunk()
            .await
            .map_err(|error| ClientError::BadAnswer(error.to_string()))?
        {
            out.write_all(&bytes)?;
            out.flush()?;
        }
        Ok(())
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    async fn send(
        &self,
        mut request: reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, ClientError> {
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        let response = request
            .send()
            .await
            .map_err(|error| ClientError::unreachable(&self.base, &error))?;
        successful(response).await
    }
}

async fn json_of(response: reqwest::Response) -> Result<Value, ClientError> {
    response
        .json()
        .await
        .map_err(|error| ClientError::BadAnswer(error.to_string()))
}

/// The path of `rel="next"` in a `Link` header, if it names one on this server.
fn next_page(link: &str) -> Option<String> {
    link.split(',').find_map(|entry| {
        let (target, params) = entry.trim().split_once(';')?;
        let path = target.trim().strip_prefix('<')?.strip_suffix('>')?;
        let is_next = params
            .split(';')
            .any(|param| param.trim() == "rel=\"next\"");
        (is_next && path.starts_with('/')).then(|| path.to_owned())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_next_page_is_read_from_the_link_header() {
        assert_eq!(
            next_page(r#"</jobs?limit=2&after=x>; rel="next""#).as_deref(),
            Some("/jobs?limit=2&after=x")
        );
        assert_eq!(next_page(r#"</jobs?a=1>; rel="prev""#), None);
        assert_eq!(next_page(r#"<https://elsewhere/jobs>; rel="next""#), None);
        assert_eq!(next_page("garbage"), None);
    }
}
