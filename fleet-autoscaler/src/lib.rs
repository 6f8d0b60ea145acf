//! The fleet autoscaler: how many game servers each fleet needs in each region.
//!
//! This crate owns the *desired replicas* of every fleet that has an autoscaler. It
//! publishes them as a [`DesiredReplicas`](gaia_api::fleet::DesiredReplicas) map on a
//! `tokio::sync::watch` channel, which the controller realises. It never starts or stops a
//! server itself, and it never picks which server goes: the controller only stops idle
//! ones.
//!
//! Start with [`desired`]: the buffer policy as a pure function of a [`RegionStatus`]
//! (keep `freeWorldSlots` world slots free, within min/max replicas). Then
//! [`Stabiliser`] (scale up at once, scale down only after `scaleDownDelay`), then
//! [`run`], the async shell that feeds both from the [`Registry`](gaia_registry::Registry)
//! on allocation events and on a timer. [`initial_desired`] gives the map to start the
//! watch channel with.

mod error;
mod metrics;
mod policy;
mod shell;
mod stabiliser;

pub use error::AutoscalerError;
pub use metrics::{DecisionLabels, ErrorLabels, Metrics, RegionLabels};
pub use policy::{RegionStatus, buffer_policy, desired, initial_desired};
pub use shell::{Settings, run};
pub use stabiliser::Stabiliser;
