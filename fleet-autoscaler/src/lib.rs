//! The fleet autoscaler: how many game servers each fleet needs in each region.
//!
//! This crate owns the *desired replicas* of every fleet that has an autoscaler. It
//! publishes them as a [`DesiredReplicas`](gaia_api::fleet::DesiredReplicas) map on a
//! `tokio::sync::watch` channel, which the controller realises. It never starts or stops a
//! server itself, and it never picks which server goes: the controller stops idle ones
//! and drains (migrates the worlds off) the ones that host worlds.
//!
//! Start with [`decide`]: every policy (Buffer, Adaptive, Webhook, and Schedules and
//! Chains of them, see [`gaia_api::autoscaler`]) as a pure function of a
//! [`RegionStatus`] and the measured [`Signals`]. Then [`Stabiliser`] (scale up at once,
//! scale down after `scaleDownDelay`, in bounded steps), then [`Autoscaler`], the
//! synchronous state machine that measures allocation rates, server start times and
//! waiting requests from registry events and keeps the last decisions and why. [`run`]
//! is the async shell around it; the simulator (`gaia-sim`) drives the same
//! [`Autoscaler`] on a virtual clock.

mod core;
mod error;
mod metrics;
mod policy;
mod shell;
mod signals;
mod stabiliser;
mod webhook;

pub use core::{Autoscaler, Change, REGION_LABEL, WebhookAnswers, WebhookCall};
pub use error::AutoscalerError;
pub use metrics::{DecisionLabels, ErrorLabels, FleetLabels, Metrics, RegionLabels};
pub use policy::{Decision, Leaf, Reason, RegionStatus, Resolved, Signals, clamp, decide, initial_desired, resolve};
pub use shell::{Settings, Statuses, run};
pub use signals::{RateMeter, StartTimes, WAIT_LIMIT, Waiting};
pub use stabiliser::Stabiliser;
pub use webhook::{WebhookError, Webhooks};
