/// What can go wrong talking to Kubernetes or the registry.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A CRD this component needs is not installed in the cluster.
    #[error(
        "the {crd} CRD is not installed in this cluster (the API server answered 404 for {kind}); \
         install the CRDs first: kubectl apply -k manifests/crds"
    )]
    MissingCrd { crd: String, kind: &'static str },
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("registry: {0}")]
    Registry(#[from] gaia_registry::RegistryError),
    /// A spec that cannot be acted on (reported in the resource's status).
    #[error("{0}")]
    Invalid(String),
    #[error("serialising {what}: {source}")]
    Serialise { what: &'static str, source: serde_json::Error },
}

impl Error {
    /// A short label for metrics.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Self::MissingCrd { .. } => "missing_crd",
            Self::Kube(e) if is_conflict(e) => "conflict",
            Self::Kube(_) => "kube",
            Self::Registry(_) => "registry",
            Self::Invalid(_) => "invalid",
            Self::Serialise { .. } => "serialise",
        }
    }
}

/// The API server's status code for a failed call, if it answered one.
pub fn status_code(error: &kube::Error) -> Option<u16> {
    match error {
        kube::Error::Api(status) => Some(status.code),
        _ => None,
    }
}

/// 409: the object changed since it was read (or already exists).
pub fn is_conflict(error: &kube::Error) -> bool {
    status_code(error) == Some(409)
}

pub fn is_not_found(error: &kube::Error) -> bool {
    status_code(error) == Some(404)
}
