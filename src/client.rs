//! What the command line's HTTP clients share ([`crate::hashes::client`] and
//! [`crate::jobs::client`]): one error type, and how a server's refusal is read back into one
//! line that carries the server's own message.

/// Why a call did not succeed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach {url}: {reason}")]
    Unreachable { url: String, reason: String },
    #[error("the server answered {status}: {message}")]
    Refused { status: u16, message: String },
    #[error("the server's answer could not be read: {0}")]
    BadAnswer(String),
    #[error("cannot read or write: {0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Tls(#[from] crate::security::tls::TlsError),
}

impl ClientError {
    /// The error for a request to `url` that got no answer.
    pub fn unreachable(url: &str, error: &reqwest::Error) -> Self {
        Self::Unreachable {
            url: url.to_owned(),
            reason: root_cause(error),
        }
    }
}

/// The response if it is a success; otherwise [`ClientError::Refused`] with the server's
/// message (the `error` of its JSON error body, or the body's text).
pub async fn successful(response: reqwest::Response) -> Result<reqwest::Response, ClientError> {
    let status = response.status();
    if status.is_success() {
        return Ok(response);
    }
    let text = response.text().await.unwrap_or_default();
    let message = serde_json::from_str::<serde_json::Value>(&text)
        .ok()
        .and_then(|body| body["error"].as_str().map(str::to_owned))
        .unwrap_or_else(|| match text.trim() {
            "" => "no reason given".to_owned(),
            text => text.to_owned(),
        });
    Err(ClientError::Refused {
        status: status.as_u16(),
        message,
    })
}

/// The innermost cause of an error, which says what actually went wrong in one line.
pub fn root_cause(error: &(dyn std::error::Error + 'static)) -> String {
    let mut cause = error;
    while let Some(source) = cause.source() {
        cause = source;
    }
    cause.to_string()
}
