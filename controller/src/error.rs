//! What can go wrong while realising desired replicas.
//!
//! Only [`ControllerError::InvalidFleet`] ends [`crate::run`]; the others concern one
//! server or one reconcile, are logged (with their [`metric_label`](ControllerError::metric_label))
//! and retried by the next reconcile.

use gaia_api::fleet::SpecError;
use gaia_registry::RegistryError;

#[derive(Debug, thiserror::Error)]
pub enum ControllerError {
    #[error("invalid fleet spec: {0}")]
    InvalidFleet(#[from] SpecError),
    #[error("registry: {0}")]
    Registry(#[from] RegistryError),
    #[error("cannot start game server {name:?} ({program}): {source}")]
    Spawn {
        name: String,
        program: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot signal game server {name:?}: {source}")]
    Signal {
        name: String,
        #[source]
        source: nix::errno::Errno,
    },
}

impl ControllerError {
    /// Short label for metrics.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Self::InvalidFleet(_) => "invalid_fleet",
            Self::Registry(_) => "registry",
            Self::Spawn { .. } => "spawn",
            Self::Signal { .. } => "signal",
        }
    }
}
