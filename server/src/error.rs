//! The server's domain error, and its one mapping to a gRPC [`Status`].
//!
//! Handlers return `Result<_, Error>` and convert with `?`; nothing else in
//! the server builds a `Status` by hand, so every failure reaches clients
//! with the right code and a message a person can act on.

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, FieldViolation, StatusExt};
use viaduct_proto::v1::Diagnostic;

/// Everything that can go wrong in a request.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Malformed input: a bad id, an out-of-range number, a missing field.
    #[error("{0}")]
    Invalid(String),
    /// A pipeline file or plugin manifest with errors; each names
    /// file:line:column.
    #[error("{}", render(.0))]
    InvalidFile(Vec<Diagnostic>),
    /// The named thing does not exist.
    #[error("{0}")]
    NotFound(String),
    /// The named thing exists already.
    #[error("{0}")]
    AlreadyExists(String),
    /// The request is valid but the state does not allow it.
    #[error("{0}")]
    FailedPrecondition(String),
    /// Missing or unknown credentials.
    #[error("{0}")]
    Unauthenticated(String),
    /// Valid credentials without the needed scope.
    #[error("{0}")]
    PermissionDenied(String),
    /// A request too large to accept.
    #[error("{0}")]
    TooLarge(String),
    /// Over a rate limit: try again after `retry_after`.
    #[error("{message}: try again in {} s", retry_after.as_secs().max(1))]
    RateLimited {
        /// Which limit.
        message: String,
        /// When another try may succeed.
        retry_after: std::time::Duration,
    },
    /// No room for new work: the data directory's disk is nearly full.
    #[error("{0}")]
    NoRoom(String),
    /// The embedded database failed (I/O error, disk full, …).
    #[error("storage error: {0}")]
    Storage(String),
    /// A stored record could not be decoded.
    #[error("corrupt record in `{tree}`: {detail}")]
    Corrupt {
        /// The tree.
        tree: &'static str,
        /// What failed.
        detail: String,
    },
    /// A bug or an unexpected condition.
    #[error("internal error: {0}")]
    Internal(String),
}

impl Error {
    /// Shorthand for [`Error::Invalid`].
    pub fn invalid(msg: impl Into<String>) -> Self {
        Self::Invalid(msg.into())
    }

    /// Shorthand for [`Error::NotFound`].
    pub fn not_found(msg: impl Into<String>) -> Self {
        Self::NotFound(msg.into())
    }

    /// Shorthand for [`Error::FailedPrecondition`].
    pub fn precondition(msg: impl Into<String>) -> Self {
        Self::FailedPrecondition(msg.into())
    }

    fn code(&self) -> Code {
        match self {
            Self::Invalid(_) | Self::InvalidFile(_) => Code::InvalidArgument,
            Self::NotFound(_) => Code::NotFound,
            Self::AlreadyExists(_) => Code::AlreadyExists,
            Self::FailedPrecondition(_) => Code::FailedPrecondition,
            Self::Unauthenticated(_) => Code::Unauthenticated,
            Self::PermissionDenied(_) => Code::PermissionDenied,
            Self::TooLarge(_) | Self::RateLimited { .. } | Self::NoRoom(_) => Code::ResourceExhausted,
            Self::Storage(_) => Code::Unavailable,
            Self::Corrupt { .. } | Self::Internal(_) => Code::Internal,
        }
    }
}

impl From<Error> for Status {
    fn from(e: Error) -> Self {
        let code = e.code();
        if matches!(code, Code::Internal | Code::Unavailable) {
            tracing::error!(error = %e, "request failed");
        }
        match &e {
            Error::InvalidFile(diags) => {
                let violations: Vec<FieldViolation> = diags
                    .iter()
                    .map(|d| FieldViolation::new(format!("{}:{}:{}", d.file, d.line, d.column), d.message.clone()))
                    .collect();
                Status::with_error_details(code, e.to_string(), ErrorDetails::with_bad_request(violations))
            }
            Error::RateLimited { retry_after, .. } => {
                let mut status =
                    Status::with_error_details(code, e.to_string(), ErrorDetails::with_retry_info(Some(*retry_after)));
                // Also as plain metadata, for clients without rich errors.
                let secs = retry_after.as_secs().max(1).to_string();
                if let Ok(v) = secs.parse() {
                    status.metadata_mut().insert("retry-after", v);
                }
                status
            }
            _ => Status::new(code, e.to_string()),
        }
    }
}

/// Result with the server's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Diagnostics as text, one `file:line:column: message` per line.
pub fn render(diags: &[Diagnostic]) -> String {
    diags.iter().map(|d| format!("{}:{}:{}: {}", d.file, d.line, d.column, d.message)).collect::<Vec<_>>().join("\n")
}

/// `e` with its sources, for a person: libraries often put the words that
/// matter (the provider's, the OS's) in a source, not in the error shown.
pub fn with_causes(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let part = s.to_string();
        if !text.contains(&part) {
            text = format!("{text}: {part}");
        }
        source = s.source();
    }
    text
}
