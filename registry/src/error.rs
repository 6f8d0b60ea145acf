use gaia_api::gameserver::IllegalTransition;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegistryError {
    #[error("no game server named {0:?}")]
    NotFound(String),
    #[error("no fleet named {0:?}")]
    FleetNotFound(String),
    #[error("no world {world:?} on game server {server:?}")]
    WorldNotFound { server: String, world: String },
    #[error("game server {0:?} already exists")]
    AlreadyExists(String),
    #[error("{0}")]
    Conflict(String),
    #[error(transparent)]
    IllegalTransition(#[from] IllegalTransition),
    #[error("no capacity: {0}")]
    NoCapacity(String),
    #[error("registry backend unavailable: {0}")]
    Unavailable(String),
    /// A request the registry refuses whatever its state, e.g. a reserved label.
    #[error(transparent)]
    Invalid(#[from] gaia_api::fleet::SpecError),
}

impl RegistryError {
    /// An allocation named region `regions[index]`, which the fleet does not have: it is
    /// neither in the fleet's spec ([`crate::Registry::declare_fleet`]) nor where any of
    /// its servers was scheduled. No capacity can ever appear there, so it is a bad
    /// request, not a wait.
    pub fn unknown_region(fleet: &str, index: usize, region: &str) -> Self {
        Self::Invalid(gaia_api::fleet::SpecError {
            field: format!("regions[{index}]"),
            message: format!("fleet {fleet:?} has no region {region:?}"),
        })
    }

    /// Short label for metrics.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Self::NotFound(_) => "not_found",
            Self::FleetNotFound(_) => "fleet_not_found",
            Self::WorldNotFound { .. } => "world_not_found",
            Self::AlreadyExists(_) => "already_exists",
            Self::Conflict(_) => "conflict",
            Self::IllegalTransition(_) => "illegal_transition",
            Self::NoCapacity(_) => "no_capacity",
            Self::Unavailable(_) => "unavailable",
            Self::Invalid(_) => "invalid",
        }
    }
}
