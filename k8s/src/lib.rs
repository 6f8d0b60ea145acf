//! Gaia Fleet on Kubernetes.
//!
//! The kinds themselves (`Fleet`, `FleetAutoscaler`, `GameServer`) are plain types in
//! [`gaia_api::k8s`]; this crate owns what talks to the API server:
//! - [`crds`]: the CRDs as `manifests/crds/` holds them (`gaia crdgen` writes them).
//! - [`controller`]: the kube-runtime controller that turns each Fleet into game-server
//!   Pods (through [`gaia_controller::plan`], the same decision embedded mode makes),
//!   and mirrors the registry into GameServer and Fleet statuses. Start with
//!   [`controller::reconcile`].
//! - [`autoscaler`]: the fleet autoscaler's Kubernetes side: Fleets and FleetAutoscalers
//!   in, each region's replicas out (written to the Fleet), status back.
//! - [`leader`]: leader election on a Lease, so two replicas of either can run.
//!
//! The registry (Redis, shared with the allocators) stays the source of truth for
//! servers and worlds: no allocation waits on the Kubernetes API.

pub mod autoscaler;
pub mod controller;
pub mod crds;
mod error;
pub mod leader;
pub mod pods;

pub use error::{Error, is_conflict, is_not_found, status_code};
