//! One error type for the library: every failure a user can cause (bad files, bad input) becomes
//! a clear, one-line message instead of a panic.

use thiserror::Error;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, Error)]
pub enum Error {
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("config: {0}")]
    Config(String),
    #[error("weights: {0}")]
    Weights(String),
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    #[error("input: {0}")]
    Input(String),
    #[error("gpu: {0}")]
    Gpu(String),
    #[error("network: {0}")]
    Network(String),
    #[error("browser: {0}")]
    Browser(String),
}

impl Error {
    pub fn io(path: impl AsRef<std::path::Path>, source: std::io::Error) -> Self {
        Error::Io { path: path.as_ref().display().to_string(), source }
    }
}
