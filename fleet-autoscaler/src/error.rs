//! Why a recomputation of desired replicas could not be done.

use gaia_registry::RegistryError;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AutoscalerError {
    /// The registry could not list a fleet's servers; the fleet keeps its desired
    /// replicas until the next sync.
    #[error("cannot read fleet {fleet:?} from the registry: {source}")]
    Registry {
        fleet: String,
        #[source]
        source: RegistryError,
    },
}

impl AutoscalerError {
    /// Short label for metrics.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Self::Registry { source, .. } => match source {
                RegistryError::Unavailable(_) => "registry_unavailable",
                _ => "registry",
            },
        }
    }
}
