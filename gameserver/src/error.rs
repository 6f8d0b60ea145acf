//! Why a game server cannot start or stops serving.

use gaia_sdk::SdkError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error("control plane: {0}")]
    Sdk(#[from] SdkError),
    #[error("checkpoint store {url}: {source}")]
    Store {
        url: String,
        #[source]
        source: gaia_checkpoint::StoreError,
    },
    #[error("serving: {0}")]
    Io(#[from] std::io::Error),
}

impl Error {
    pub fn metric_label(&self) -> &'static str {
        match self {
            Self::Config(_) => "config",
            Self::Sdk(_) => "sdk",
            Self::Store { .. } => "store",
            Self::Io(_) => "io",
        }
    }
}
