//! Fleet-autoscaler specs as operators write them, the status the autoscaler explains
//! itself with (`GET /v1/fleets/{fleet}/autoscaler`), and Agones' `FleetAutoscaleReview`,
//! the JSON a webhook policy exchanges.
//!
//! A policy is written as Agones writes it: `{type: Buffer, buffer: {...}}`, where `type`
//! may be left out when exactly one policy block is given (`{buffer: {...}}`). Policies:
//! [`BufferPolicy`], [`WebhookPolicy`], [`AdaptivePolicy`], [`SchedulePolicy`] and a chain
//! of them ([`ChainEntry`]), the first applicable entry winning.

use std::collections::BTreeMap;
use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, Utc};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::fleet::{FleetSpec, SpecError, invalid};

// kube's derive takes one `printcolumn(...)` per column.
#[allow(clippy::duplicated_attributes)]
/// Scales one fleet, each of its regions on its own (in embedded YAML, an entry of
/// `autoscalers`; on Kubernetes, the spec of a FleetAutoscaler).
#[derive(CustomResource, Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "gaia.dev",
    version = "v1alpha1",
    kind = "FleetAutoscaler",
    namespaced,
    status = "FleetAutoscalerResourceStatus",
    shortname = "gfas",
    category = "gaia",
    doc = "Scales a Fleet, each of its regions on its own.",
    printcolumn(name = "Fleet", type_ = "string", json_path = ".spec.fleetName"),
    printcolumn(name = "Current", type_ = "integer", json_path = ".status.currentReplicas"),
    printcolumn(name = "Desired", type_ = "integer", json_path = ".status.desiredReplicas"),
    printcolumn(name = "Able", type_ = "boolean", json_path = ".status.ableToScale"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FleetAutoscalerSpec {
    /// The fleet scaled (`fleetName` as Agones writes it; `fleet` is accepted too).
    #[serde(rename = "fleetName", alias = "fleet")]
    pub fleet: String,
    /// The policy of every region not named in `regions`.
    pub policy: AutoscalerPolicy,
    /// Regions that scale by a policy of their own.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub regions: BTreeMap<String, AutoscalerPolicy>,
    /// Scale-down waits until no higher need was seen for this long (stabilisation window).
    #[serde(default = "defaults::scale_down_delay", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub scale_down_delay: Duration,
    /// At most this many servers, or this percentage of the region's desired replicas
    /// (rounded up, at least 1), are taken away per `scaleDownPeriod`.
    #[serde(default = "defaults::scale_down_step")]
    pub scale_down_step: IntOrPercent,
    #[serde(default = "defaults::scale_down_period", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub scale_down_period: Duration,
}

/// What the autoscaler last decided, written to a `FleetAutoscaler`'s status (the full
/// explanation, with the recent decisions, is at `GET /v1/fleets/{fleet}/autoscaler`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct FleetAutoscalerResourceStatus {
    /// Live servers of the fleet, all regions together.
    pub current_replicas: u32,
    pub desired_replicas: u32,
    /// Whether the autoscaler could act on the fleet (false: the spec is invalid or the
    /// fleet is missing; see `message`).
    pub able_to_scale: bool,
    /// Whether a region wanted more (or fewer) than its min/max allows.
    pub scaling_limited: bool,
    /// When desired replicas last changed (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_scale_time: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub regions: Vec<RegionScaleStatus>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RegionScaleStatus {
    pub region: String,
    /// The policy in force, e.g. `Buffer` or `Chain/december/Schedule/Buffer`.
    pub policy: String,
    pub current_replicas: u32,
    pub desired_replicas: u32,
    /// The buffer the policy wants and what is free, in its unit.
    pub buffer_target: u32,
    pub buffer_free: u32,
}

impl FleetAutoscalerSpec {
    /// The policy `region` scales by.
    pub fn policy_for(&self, region: &str) -> &AutoscalerPolicy {
        self.regions.get(region).unwrap_or(&self.policy)
    }

    /// Checks the spec against the fleet it scales; `field` is its path (`autoscalers[0]`).
    pub fn validate(&self, field: &str, fleet: &FleetSpec) -> Result<(), SpecError> {
        self.policy.validate(&format!("{field}.policy"))?;
        for (region, policy) in &self.regions {
            if !fleet.regions.iter().any(|r| r.name == *region) {
                return Err(invalid(
                    format!("{field}.regions.{region}"),
                    format!("fleet {:?} has no region {region:?}", fleet.name),
                ));
            }
            policy.validate(&format!("{field}.regions.{region}"))?;
        }
        if let IntOrPercent::Percent(p) = self.scale_down_step
            && !(1..=100).contains(&p)
        {
            return Err(invalid(format!("{field}.scaleDownStep"), "a percentage must be 1% to 100%"));
        }
        if self.scale_down_step == IntOrPercent::Int(0) {
            return Err(invalid(format!("{field}.scaleDownStep"), "must be at least 1"));
        }
        Ok(())
    }
}

/// How a region's desired replicas are decided.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "PolicyDoc", into = "PolicyDoc")]
pub enum AutoscalerPolicy {
    Buffer(BufferPolicy),
    Webhook(WebhookPolicy),
    Adaptive(AdaptivePolicy),
    Schedule(Box<SchedulePolicy>),
    Chain(Vec<ChainEntry>),
}

/// One entry of a chain: the first entry that applies decides (a Schedule applies only
/// while active; any other policy always applies).
#[derive(Debug, Clone, PartialEq)]
pub struct ChainEntry {
    pub id: String,
    pub policy: AutoscalerPolicy,
}

impl JsonSchema for AutoscalerPolicy {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "AutoscalerPolicy".into()
    }

    fn json_schema(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
        PolicyDoc::json_schema(generator)
    }
}

impl AutoscalerPolicy {
    /// Agones' name of the policy type.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Buffer(_) => "Buffer",
            Self::Webhook(_) => "Webhook",
            Self::Adaptive(_) => "Adaptive",
            Self::Schedule(_) => "Schedule",
            Self::Chain(_) => "Chain",
        }
    }

    pub fn validate(&self, field: &str) -> Result<(), SpecError> {
        match self {
            Self::Buffer(b) => b.validate(&format!("{field}.buffer")),
            Self::Webhook(w) => w.validate(&format!("{field}.webhook")),
            Self::Adaptive(a) => a.validate(&format!("{field}.adaptive")),
            Self::Schedule(s) => s.validate(&format!("{field}.schedule")),
            Self::Chain(entries) => {
                if entries.is_empty() {
                    return Err(invalid(format!("{field}.chain"), "needs at least one entry"));
                }
                let mut ids = std::collections::BTreeSet::new();
                for (i, entry) in entries.iter().enumerate() {
                    let at = format!("{field}.chain[{i}]");
                    if !ids.insert(entry.id.as_str()) {
                        return Err(invalid(format!("{at}.id"), format!("duplicate id {:?}", entry.id)));
                    }
                    if matches!(entry.policy, Self::Chain(_)) {
                        return Err(invalid(at, "a chain cannot hold a chain"));
                    }
                    entry.policy.validate(&at)?;
                }
                Ok(())
            }
        }
    }
}

/// An absolute count or a percentage, written `5` or `"20%"` (Kubernetes' IntOrString).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "IntOrString", into = "IntOrString")]
pub enum IntOrPercent {
    Int(u32),
    Percent(u32),
}

impl JsonSchema for IntOrPercent {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "IntOrPercent".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        // Kubernetes' own IntOrString schema; the number or percentage is checked on read.
        schemars::json_schema!({ "x-kubernetes-int-or-string": true })
    }
}

#[derive(Serialize, Deserialize)]
#[serde(untagged)]
enum IntOrString {
    Int(i64),
    String(String),
}

impl TryFrom<IntOrString> for IntOrPercent {
    type Error = String;

    fn try_from(value: IntOrString) -> Result<Self, String> {
        match value {
            IntOrString::Int(n) => {
                u32::try_from(n).map(Self::Int).map_err(|_| format!("{n} is not a whole number from 0 to {}", u32::MAX))
            }
            IntOrString::String(s) => s.parse(),
        }
    }
}

impl FromStr for IntOrPercent {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("{s:?} is neither a whole number nor a percentage such as \"20%\"");
        match s.trim().strip_suffix('%') {
            Some(p) => p.trim().parse().map(Self::Percent).map_err(|_| bad()),
            None => s.trim().parse().map(Self::Int).map_err(|_| bad()),
        }
    }
}

impl From<IntOrPercent> for IntOrString {
    fn from(value: IntOrPercent) -> Self {
        match value {
            IntOrPercent::Int(n) => Self::Int(i64::from(n)),
            IntOrPercent::Percent(p) => Self::String(format!("{p}%")),
        }
    }
}

impl std::fmt::Display for IntOrPercent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Int(n) => write!(f, "{n}"),
            Self::Percent(p) => write!(f, "{p}%"),
        }
    }
}

/// What a buffer counts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum BufferUnit {
    /// Free world slots (on Scheduled, Ready and Allocated servers).
    #[default]
    Worlds,
    /// Servers that host no world (Scheduled or Ready), as Agones' Ready replicas.
    Servers,
}

/// Keep `bufferSize` free in every region, within min/max replicas. A percentage is the
/// share of the region's capacity that is free: `20%` of worlds keeps one slot in five
/// free (rounded up).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BufferPolicy {
    /// `freeWorldSlots` is accepted as another name (with the default unit, worlds).
    #[serde(alias = "freeWorldSlots")]
    pub buffer_size: IntOrPercent,
    #[serde(default)]
    pub unit: BufferUnit,
    #[serde(default)]
    pub min_replicas: u32,
    pub max_replicas: u32,
}

impl BufferPolicy {
    /// A buffer of `n` free world slots.
    pub fn worlds(n: u32, min_replicas: u32, max_replicas: u32) -> Self {
        Self { buffer_size: IntOrPercent::Int(n), unit: BufferUnit::Worlds, min_replicas, max_replicas }
    }

    fn validate(&self, field: &str) -> Result<(), SpecError> {
        if let IntOrPercent::Percent(p) = self.buffer_size
            && !(1..=99).contains(&p)
        {
            return Err(invalid(format!("{field}.bufferSize"), "a percentage must be 1% to 99%"));
        }
        check_min_max(field, self.min_replicas, self.max_replicas)
    }
}

fn check_min_max(field: &str, min: u32, max: u32) -> Result<(), SpecError> {
    if min > max {
        return Err(invalid(format!("{field}.minReplicas"), "must not exceed maxReplicas"));
    }
    Ok(())
}

/// The buffer follows demand: it holds what allocations take while a new server starts,
/// `buffer = safetyFactor x (net rate x start time + sqrt(allocation rate x start time))`
/// world slots, within `[minBuffer, maxBuffer]`, and replicas within `[minReplicas,
/// maxReplicas]`. The net rate is allocations less released slots per second (at least
/// 0); the square root is the spread of Poisson arrivals over one start. Rates are
/// measured per region over `rateWindow`; the start time is the slowest of the region's
/// last few measured starts (Scheduled to Ready), or `startTime` until one was measured.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AdaptivePolicy {
    #[serde(default = "defaults::safety_factor")]
    pub safety_factor: f64,
    #[serde(default)]
    pub min_buffer: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_buffer: Option<u32>,
    #[serde(default = "defaults::rate_window", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub rate_window: Duration,
    #[serde(default = "defaults::start_time", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub start_time: Duration,
    #[serde(default)]
    pub min_replicas: u32,
    pub max_replicas: u32,
}

impl AdaptivePolicy {
    fn validate(&self, field: &str) -> Result<(), SpecError> {
        if !self.safety_factor.is_finite() || self.safety_factor < 1.0 || self.safety_factor > 100.0 {
            return Err(invalid(format!("{field}.safetyFactor"), "must be from 1 to 100"));
        }
        if self.max_buffer.is_some_and(|max| max < self.min_buffer) {
            return Err(invalid(format!("{field}.minBuffer"), "must not exceed maxBuffer"));
        }
        if self.rate_window < Duration::from_secs(1) || self.rate_window > Duration::from_secs(3600) {
            return Err(invalid(format!("{field}.rateWindow"), "must be from 1s to 1h"));
        }
        if self.start_time > Duration::from_secs(3600) {
            return Err(invalid(format!("{field}.startTime"), "must be at most 1h"));
        }
        check_min_max(field, self.min_replicas, self.max_replicas)
    }
}

/// Ask an HTTP endpoint, as Agones' Webhook policy does: a `FleetAutoscaleReview` is POSTed
/// (once per region) and its `response.replicas` is used when `response.scale` is true.
/// Give `url`, or `service` (called at `http(s)://{name}.{namespace}.svc:{port}{path}`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WebhookPolicy {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<ServiceReference>,
    /// Base64 of the PEM CA certificate(s) that sign the webhook's certificate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_bundle: Option<String>,
    /// How long one call may take; past it the region keeps its replicas.
    #[serde(default = "defaults::webhook_timeout", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub timeout: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServiceReference {
    pub name: String,
    #[serde(default = "defaults::namespace")]
    pub namespace: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// Defaults to 8000, as Agones'.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
}

impl WebhookPolicy {
    /// The URL to POST to.
    pub fn endpoint(&self) -> String {
        if let Some(url) = &self.url {
            return url.clone();
        }
        let scheme = if self.ca_bundle.is_some() { "https" } else { "http" };
        match &self.service {
            Some(s) => {
                let path = s.path.as_deref().unwrap_or("");
                let slash = if path.is_empty() || path.starts_with('/') { "" } else { "/" };
                format!("{scheme}://{}.{}.svc:{}{slash}{path}", s.name, s.namespace, s.port.unwrap_or(8000))
            }
            None => String::new(),
        }
    }

    fn validate(&self, field: &str) -> Result<(), SpecError> {
        match (&self.url, &self.service) {
            (None, None) => return Err(invalid(format!("{field}.url"), "give url or service")),
            (Some(_), Some(_)) => return Err(invalid(format!("{field}.url"), "give url or service, not both")),
            (Some(url), None) => {
                let rest = url.strip_prefix("http://").or_else(|| url.strip_prefix("https://"));
                if rest.is_none_or(|r| r.is_empty() || r.starts_with('/')) {
                    return Err(invalid(format!("{field}.url"), "must be an http:// or https:// URL with a host"));
                }
            }
            (None, Some(s)) => {
                crate::fleet::check_name(&format!("{field}.service.name"), &s.name)?;
                crate::fleet::check_name(&format!("{field}.service.namespace"), &s.namespace)?;
            }
        }
        if let Some(ca) = &self.ca_bundle {
            use base64::Engine;
            let pem = base64::engine::general_purpose::STANDARD
                .decode(ca.trim())
                .map_err(|_| invalid(format!("{field}.caBundle"), "must be base64"))?;
            if !pem.windows(27).any(|w| w == b"-----BEGIN CERTIFICATE-----") {
                return Err(invalid(format!("{field}.caBundle"), "must hold a PEM certificate"));
            }
        }
        if self.timeout.is_zero() || self.timeout > Duration::from_secs(60) {
            return Err(invalid(format!("{field}.timeout"), "must be more than 0 and at most 60s"));
        }
        Ok(())
    }
}

/// Apply `policy` while the schedule is active, as Agones' Schedule policy: within
/// `between` (either end may be open), and, when `activePeriod.startCron` is set, for
/// `activePeriod.duration` (forever when unset) after each time the cron pattern fires
/// in `activePeriod.timezone` (UTC when unset). Outside it, a lone Schedule keeps the
/// replicas as they are; in a chain, the next entry decides.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SchedulePolicy {
    #[serde(default)]
    pub between: Between,
    #[serde(default)]
    pub active_period: ActivePeriod,
    /// A policy (checked by the autoscaler: the schema cannot hold a recursive type).
    #[schemars(schema_with = "crate::k8s::open_object")]
    pub policy: AutoscalerPolicy,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Between {
    /// RFC 3339.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<String>")]
    pub start: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<String>")]
    pub end: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ActivePeriod {
    /// An IANA time zone such as `Europe/Paris`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timezone: Option<String>,
    /// Five-field UNIX cron (`minute hour day-of-month month day-of-week`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_cron: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none", with = "humantime_serde")]
    #[schemars(with = "Option<String>")]
    pub duration: Option<Duration>,
}

impl SchedulePolicy {
    /// Whether the schedule applies at `now`. A pattern or time zone that does not parse
    /// (refused by validation) never applies.
    pub fn is_active(&self, now: DateTime<Utc>) -> bool {
        if self.between.start.is_some_and(|start| now < start) || self.between.end.is_some_and(|end| now >= end) {
            return false;
        }
        let Some(pattern) = &self.active_period.start_cron else {
            return true;
        };
        let (Ok(cron), Ok(tz)) = (parse_cron(pattern), self.timezone()) else {
            return false;
        };
        let local = now.with_timezone(&tz);
        let Ok(fired) = cron.find_previous_occurrence(&local, true) else {
            return false;
        };
        let fired = fired.with_timezone(&Utc);
        match self.active_period.duration {
            Some(d) => chrono::Duration::from_std(d).is_ok_and(|d| now < fired + d),
            None => true,
        }
    }

    fn timezone(&self) -> Result<chrono_tz::Tz, String> {
        match &self.active_period.timezone {
            None => Ok(chrono_tz::UTC),
            Some(name) => name.parse().map_err(|_| format!("unknown time zone {name:?}")),
        }
    }

    fn validate(&self, field: &str) -> Result<(), SpecError> {
        if let (Some(start), Some(end)) = (self.between.start, self.between.end)
            && start >= end
        {
            return Err(invalid(format!("{field}.between.end"), "must be after start"));
        }
        let period = &self.active_period;
        self.timezone().map_err(|e| invalid(format!("{field}.activePeriod.timezone"), e))?;
        if let Some(pattern) = &period.start_cron {
            parse_cron(pattern).map_err(|e| invalid(format!("{field}.activePeriod.startCron"), e))?;
        } else if period.duration.is_some() {
            return Err(invalid(format!("{field}.activePeriod.duration"), "needs a startCron"));
        }
        if period.duration.is_some_and(|d| d.is_zero()) {
            return Err(invalid(format!("{field}.activePeriod.duration"), "must be more than 0"));
        }
        if matches!(self.policy, AutoscalerPolicy::Schedule(_) | AutoscalerPolicy::Chain(_)) {
            return Err(invalid(format!("{field}.policy"), "must be Buffer, Webhook or Adaptive"));
        }
        self.policy.validate(&format!("{field}.policy"))
    }
}

/// Agones takes five-field UNIX cron; so do we (croner also takes six fields and
/// aliases such as `@daily`).
fn parse_cron(pattern: &str) -> Result<croner::Cron, String> {
    if pattern.split_whitespace().count() != 5 && !pattern.trim_start().starts_with('@') {
        return Err(format!("{pattern:?} is not a five-field cron pattern"));
    }
    croner::Cron::from_str(pattern).map_err(|e| format!("{pattern:?}: {e}"))
}

/// The wire form of a policy: Agones' `{type, buffer, webhook, ...}` with one block set.
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct PolicyDoc {
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    kind: Option<String>,
    /// Only chain entries have one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    buffer: Option<BufferPolicy>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    webhook: Option<WebhookPolicy>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    adaptive: Option<AdaptivePolicy>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    schedule: Option<Box<SchedulePolicy>>,
    /// Entries `{id, type?, buffer|webhook|adaptive|schedule}` (checked by the
    /// autoscaler: the schema cannot hold a recursive type).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "crate::k8s::list_of_open_objects")]
    chain: Option<Vec<PolicyDoc>>,
}

impl TryFrom<PolicyDoc> for AutoscalerPolicy {
    type Error = String;

    fn try_from(doc: PolicyDoc) -> Result<Self, String> {
        if doc.id.is_some() {
            return Err("only chain entries have an id".into());
        }
        doc.into_policy()
    }
}

impl PolicyDoc {
    fn into_policy(self) -> Result<AutoscalerPolicy, String> {
        let mut given = Vec::new();
        if let Some(b) = self.buffer {
            given.push(AutoscalerPolicy::Buffer(b));
        }
        if let Some(w) = self.webhook {
            given.push(AutoscalerPolicy::Webhook(w));
        }
        if let Some(a) = self.adaptive {
            given.push(AutoscalerPolicy::Adaptive(a));
        }
        if let Some(s) = self.schedule {
            given.push(AutoscalerPolicy::Schedule(s));
        }
        if let Some(chain) = self.chain {
            let entries = chain
                .into_iter()
                .enumerate()
                .map(|(i, mut doc)| {
                    let id = doc.id.take().unwrap_or_else(|| i.to_string());
                    doc.into_policy().map(|policy| ChainEntry { id, policy }).map_err(|e| format!("chain[{i}]: {e}"))
                })
                .collect::<Result<Vec<_>, _>>()?;
            given.push(AutoscalerPolicy::Chain(entries));
        }
        let policy = match given.len() {
            0 => return Err("a policy needs one of buffer, webhook, adaptive, schedule or chain".into()),
            1 => given.remove(0),
            _ => return Err("a policy takes exactly one of buffer, webhook, adaptive, schedule or chain".into()),
        };
        if let Some(kind) = &self.kind
            && !kind.eq_ignore_ascii_case(policy.kind())
        {
            return Err(format!("type {kind:?} does not match the {} block given", policy.kind()));
        }
        Ok(policy)
    }
}

impl From<AutoscalerPolicy> for PolicyDoc {
    fn from(policy: AutoscalerPolicy) -> Self {
        let mut doc = PolicyDoc { kind: Some(policy.kind().to_string()), ..Default::default() };
        match policy {
            AutoscalerPolicy::Buffer(b) => doc.buffer = Some(b),
            AutoscalerPolicy::Webhook(w) => doc.webhook = Some(w),
            AutoscalerPolicy::Adaptive(a) => doc.adaptive = Some(a),
            AutoscalerPolicy::Schedule(s) => doc.schedule = Some(s),
            AutoscalerPolicy::Chain(entries) => {
                doc.chain = Some(
                    entries.into_iter().map(|e| PolicyDoc { id: Some(e.id), ..PolicyDoc::from(e.policy) }).collect(),
                );
            }
        }
        doc
    }
}

mod defaults {
    use std::time::Duration;

    pub fn scale_down_delay() -> Duration {
        Duration::from_secs(30)
    }
    pub fn scale_down_step() -> super::IntOrPercent {
        super::IntOrPercent::Percent(25)
    }
    pub fn scale_down_period() -> Duration {
        Duration::from_secs(15)
    }
    pub fn safety_factor() -> f64 {
        2.0
    }
    pub fn rate_window() -> Duration {
        Duration::from_secs(60)
    }
    pub fn start_time() -> Duration {
        Duration::from_secs(10)
    }
    pub fn webhook_timeout() -> Duration {
        Duration::from_secs(5)
    }
    pub fn namespace() -> String {
        "default".into()
    }
}

// ---- What the autoscaler shows: GET /v1/fleets/{fleet}/autoscaler ----

/// The autoscaler's view of one fleet, region by region.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct FleetAutoscalerStatus {
    pub fleet: String,
    /// When the fleet was last recomputed (Unix ms).
    pub updated_at_ms: u64,
    pub regions: Vec<RegionAutoscalerStatus>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RegionAutoscalerStatus {
    pub region: String,
    /// The policy in force, e.g. `Adaptive` or `Chain/december/Schedule/Buffer`.
    pub policy: String,
    pub desired_replicas: u32,
    /// Live servers (not Shutdown, Unhealthy or Error), Scheduled ones included.
    pub current_replicas: u32,
    pub buffer: BufferStatus,
    pub inputs: PolicyInputs,
    /// The newest last; at most [`MAX_DECISIONS`].
    pub decisions: Vec<ScaleDecision>,
}

/// How many decisions a region's status keeps.
pub const MAX_DECISIONS: usize = 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct BufferStatus {
    pub unit: BufferUnit,
    /// What the policy keeps free (for a Webhook or an inactive Schedule: what is free).
    pub target: u32,
    /// What is free now.
    pub free: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct PolicyInputs {
    pub used_worlds: u32,
    pub world_capacity: u32,
    /// Servers that host worlds, are Reserved or are Draining.
    pub busy_servers: u32,
    /// Allocation requests that found no free slot and are still waiting.
    pub waiting_requests: u32,
    /// Allocations (and unmet requests) per second over the adaptive rate window (60 s
    /// for other policies).
    pub allocation_rate: f64,
    /// Seconds from Scheduled to Ready: the slowest recent start, or the policy's
    /// assumption until one was measured.
    pub server_start_seconds: f64,
    pub start_measured: bool,
    /// The webhook's last answer, or why there was none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook: Option<String>,
}

/// One change of a region's desired replicas.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ScaleDecision {
    pub at_ms: u64,
    pub from: u32,
    pub to: u32,
    /// A short label (also the metric's `reason`): `buffer`, `unmet_demand`,
    /// `min_replicas`, `max_replicas`, `webhook`, `webhook_error`, `inactive`, ...
    pub reason: String,
    /// The sum behind it, in words.
    pub message: String,
}

// ---- Agones' FleetAutoscaleReview (webhook policy) ----

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct FleetAutoscaleReview {
    #[serde(default)]
    pub request: Option<FleetAutoscaleRequest>,
    #[serde(default)]
    pub response: Option<FleetAutoscaleResponse>,
}

/// Agones' request, for one region of the fleet: `region` and the label
/// `gaia.dev/region` in `metadata` say which (webhooks written for Agones ignore both).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FleetAutoscaleRequest {
    pub uid: String,
    pub name: String,
    pub namespace: String,
    pub status: FleetStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<ObjectMeta>,
    #[serde(default)]
    pub region: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FleetStatus {
    pub replicas: u32,
    pub ready_replicas: u32,
    pub reserved_replicas: u32,
    pub allocated_replicas: u32,
    /// `worlds` and `players`, as Agones' counters.
    #[serde(default)]
    pub counters: BTreeMap<String, AggregatedCounterStatus>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AggregatedCounterStatus {
    pub allocated_count: u64,
    pub allocated_capacity: u64,
    pub count: u64,
    pub capacity: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ObjectMeta {
    pub name: String,
    pub namespace: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FleetAutoscaleResponse {
    #[serde(default)]
    pub uid: String,
    #[serde(default)]
    pub scale: bool,
    #[serde(default)]
    pub replicas: i64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(yaml: &str) -> Result<AutoscalerPolicy, String> {
        serde_norway::from_str::<AutoscalerPolicy>(yaml).map_err(|e| e.to_string())
    }

    #[test]
    fn policies_parse_in_agones_form_and_short_form() {
        let long = policy("{type: Buffer, buffer: {bufferSize: 5, maxReplicas: 9}}").unwrap();
        let short = policy("{buffer: {bufferSize: 5, maxReplicas: 9}}").unwrap();
        let alias = policy("{buffer: {freeWorldSlots: 5, maxReplicas: 9}}").unwrap();
        assert_eq!(long, AutoscalerPolicy::Buffer(BufferPolicy::worlds(5, 0, 9)));
        assert_eq!(short, long);
        assert_eq!(alias, long);
        let pct = policy("{buffer: {bufferSize: '20%', unit: servers, minReplicas: 1, maxReplicas: 9}}").unwrap();
        assert_eq!(
            pct,
            AutoscalerPolicy::Buffer(BufferPolicy {
                buffer_size: IntOrPercent::Percent(20),
                unit: BufferUnit::Servers,
                min_replicas: 1,
                max_replicas: 9
            })
        );
        // Round trip through the wire form.
        let json = serde_json::to_string(&pct).unwrap();
        assert_eq!(serde_json::from_str::<AutoscalerPolicy>(&json).unwrap(), pct);
    }

    #[test]
    fn chains_and_schedules_parse() {
        let yaml = "
type: Chain
chain:
  - id: december
    type: Schedule
    schedule:
      between: { start: '2026-12-01T00:00:00Z', end: '2027-01-01T00:00:00Z' }
      policy: { adaptive: { maxReplicas: 50 } }
  - id: default
    buffer: { bufferSize: 10, maxReplicas: 5 }
";
        let chain = policy(yaml).unwrap();
        let AutoscalerPolicy::Chain(entries) = &chain else { panic!("{chain:?}") };
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[0].id, "december");
        assert!(matches!(entries[0].policy, AutoscalerPolicy::Schedule(_)));
        assert_eq!(entries[1].policy, AutoscalerPolicy::Buffer(BufferPolicy::worlds(10, 0, 5)));
        chain.validate("policy").unwrap();
        let json = serde_json::to_string(&chain).unwrap();
        assert_eq!(serde_json::from_str::<AutoscalerPolicy>(&json).unwrap(), chain);
    }

    #[test]
    fn malformed_policies_say_why() {
        for (yaml, want) in [
            ("{}", "a policy needs one of"),
            ("{buffer: {bufferSize: 1, maxReplicas: 1}, adaptive: {maxReplicas: 1}}", "exactly one of"),
            ("{type: Webhook, buffer: {bufferSize: 1, maxReplicas: 1}}", "does not match the Buffer block"),
            ("{id: x, buffer: {bufferSize: 1, maxReplicas: 1}}", "only chain entries have an id"),
            ("{buffer: {bufferSize: 'lots', maxReplicas: 1}}", "neither a whole number nor a percentage"),
            ("{buffer: {bufferSize: -1, maxReplicas: 1}}", "-1 is not a whole number from 0"),
            ("{buffer: {bufferSize: 1, maxReplica: 1}}", "unknown field"),
        ] {
            let err = policy(yaml).unwrap_err();
            assert!(err.contains(want), "{yaml}: {err}");
        }
    }

    fn invalid_field(yaml: &str) -> String {
        let policy = policy(yaml).unwrap();
        let err = policy.validate("policy").unwrap_err();
        format!("{}: {}", err.field, err.message)
    }

    #[test]
    fn validation_names_the_field() {
        for (yaml, want) in [
            (
                "{buffer: {bufferSize: '100%', maxReplicas: 1}}",
                "policy.buffer.bufferSize: a percentage must be 1% to 99%",
            ),
            (
                "{buffer: {bufferSize: '0%', maxReplicas: 1}}",
                "policy.buffer.bufferSize: a percentage must be 1% to 99%",
            ),
            (
                "{buffer: {bufferSize: 1, minReplicas: 3, maxReplicas: 1}}",
                "policy.buffer.minReplicas: must not exceed maxReplicas",
            ),
            ("{adaptive: {safetyFactor: 0.5, maxReplicas: 1}}", "policy.adaptive.safetyFactor: must be from 1 to 100"),
            (
                "{adaptive: {minBuffer: 9, maxBuffer: 3, maxReplicas: 1}}",
                "policy.adaptive.minBuffer: must not exceed maxBuffer",
            ),
            ("{adaptive: {rateWindow: 0s, maxReplicas: 1}}", "policy.adaptive.rateWindow: must be from 1s to 1h"),
            ("{webhook: {}}", "policy.webhook.url: give url or service"),
            ("{webhook: {url: 'ftp://x'}}", "policy.webhook.url: must be an http:// or https:// URL with a host"),
            ("{webhook: {url: 'http://x', service: {name: s}}}", "policy.webhook.url: give url or service, not both"),
            ("{webhook: {url: 'http://x', caBundle: '!!'}}", "policy.webhook.caBundle: must be base64"),
            (
                "{webhook: {url: 'http://x', timeout: 0s}}",
                "policy.webhook.timeout: must be more than 0 and at most 60s",
            ),
            (
                "{schedule: {between: {start: '2026-12-02T00:00:00Z', end: '2026-12-01T00:00:00Z'}, policy: {buffer: {bufferSize: 1, maxReplicas: 1}}}}",
                "policy.schedule.between.end: must be after start",
            ),
            (
                "{schedule: {activePeriod: {startCron: '0 1 * *'}, policy: {buffer: {bufferSize: 1, maxReplicas: 1}}}}",
                "policy.schedule.activePeriod.startCron: \"0 1 * *\" is not a five-field cron pattern",
            ),
            (
                "{schedule: {activePeriod: {startCron: '0 1 * * *', timezone: Mars/Base}, policy: {buffer: {bufferSize: 1, maxReplicas: 1}}}}",
                "policy.schedule.activePeriod.timezone: unknown time zone \"Mars/Base\"",
            ),
            (
                "{schedule: {activePeriod: {duration: 1h}, policy: {buffer: {bufferSize: 1, maxReplicas: 1}}}}",
                "policy.schedule.activePeriod.duration: needs a startCron",
            ),
            (
                "{schedule: {policy: {schedule: {policy: {buffer: {bufferSize: 1, maxReplicas: 1}}}}}}",
                "policy.schedule.policy: must be Buffer, Webhook or Adaptive",
            ),
            ("{chain: []}", "policy.chain: needs at least one entry"),
            (
                "{chain: [{id: a, buffer: {bufferSize: 1, maxReplicas: 1}}, {id: a, buffer: {bufferSize: 1, maxReplicas: 1}}]}",
                "policy.chain[1].id: duplicate id \"a\"",
            ),
            (
                "{chain: [{id: a, buffer: {bufferSize: 1, minReplicas: 2, maxReplicas: 1}}]}",
                "policy.chain[0].buffer.minReplicas: must not exceed maxReplicas",
            ),
        ] {
            assert_eq!(invalid_field(yaml), want, "{yaml}");
        }
    }

    fn at(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    #[test]
    fn schedules_apply_within_their_windows() {
        let december = "{between: {start: '2026-12-01T00:00:00Z', end: '2027-01-01T00:00:00Z'}, policy: {buffer: {bufferSize: 1, maxReplicas: 1}}}";
        let s: SchedulePolicy = serde_norway::from_str(december).unwrap();
        assert!(!s.is_active(at("2026-11-30T23:59:59Z")));
        assert!(s.is_active(at("2026-12-01T00:00:00Z")));
        assert!(s.is_active(at("2026-12-31T23:59:59Z")));
        assert!(!s.is_active(at("2027-01-01T00:00:00Z")), "the end is not included");

        // Evenings 18:00-23:00 in Paris (UTC+1 in winter).
        let evenings = "{activePeriod: {startCron: '0 18 * * *', duration: 5h, timezone: Europe/Paris}, policy: {buffer: {bufferSize: 1, maxReplicas: 1}}}";
        let s: SchedulePolicy = serde_norway::from_str(evenings).unwrap();
        s.validate("s").unwrap();
        assert!(!s.is_active(at("2026-12-10T16:59:00Z")));
        assert!(s.is_active(at("2026-12-10T17:00:00Z")));
        assert!(s.is_active(at("2026-12-10T21:59:00Z")));
        assert!(!s.is_active(at("2026-12-10T22:00:00Z")));

        // A cron with no duration stays active from its first firing on.
        let from_sunday = "{between: {start: '2026-12-01T00:00:00Z'}, activePeriod: {startCron: '0 0 * * 0'}, policy: {buffer: {bufferSize: 1, maxReplicas: 1}}}";
        let s: SchedulePolicy = serde_norway::from_str(from_sunday).unwrap();
        assert!(s.is_active(at("2026-12-10T12:00:00Z")));
    }

    #[test]
    fn webhook_endpoints() {
        let url: WebhookPolicy = serde_norway::from_str("{url: 'http://scaler:9000/scale'}").unwrap();
        assert_eq!(url.endpoint(), "http://scaler:9000/scale");
        let svc: WebhookPolicy = serde_norway::from_str("{service: {name: scaler, path: scale}}").unwrap();
        assert_eq!(svc.endpoint(), "http://scaler.default.svc:8000/scale");
        assert_eq!(svc.timeout, Duration::from_secs(5));
    }

    #[test]
    fn agones_review_json_round_trips() {
        // As Agones' webhook example (fleetautoscaler webhook) receives and answers it.
        let incoming = r#"{"request":{"uid":"1f3","name":"town","namespace":"default","status":{"replicas":3,"readyReplicas":1,"reservedReplicas":0,"allocatedReplicas":2}}}"#;
        let review: FleetAutoscaleReview = serde_json::from_str(incoming).unwrap();
        let request = review.request.unwrap();
        assert_eq!((request.uid.as_str(), request.status.allocated_replicas), ("1f3", 2));
        let answer = r#"{"request":null,"response":{"uid":"1f3","scale":true,"replicas":5}}"#;
        let review: FleetAutoscaleReview = serde_json::from_str(answer).unwrap();
        assert_eq!(review.response, Some(FleetAutoscaleResponse { uid: "1f3".into(), scale: true, replicas: 5 }));
    }

    #[test]
    fn the_policies_in_the_docs_parse_and_validate() {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Block {
            autoscalers: Option<Vec<FleetAutoscalerSpec>>,
            policy: Option<AutoscalerPolicy>,
        }
        let doc = include_str!("../../docs/autoscaling.md");
        let blocks: Vec<&str> = doc.split("```yaml\n").skip(1).filter_map(|b| b.split("```").next()).collect();
        assert_eq!(blocks.len(), 2, "docs/autoscaling.md's YAML examples");
        for block in blocks {
            let parsed: Block = serde_norway::from_str(block).unwrap_or_else(|e| panic!("{e}: {block}"));
            for scaler in parsed.autoscalers.unwrap_or_default() {
                scaler.policy.validate("policy").unwrap();
                for policy in scaler.regions.values() {
                    policy.validate("region").unwrap();
                }
            }
            if let Some(policy) = parsed.policy {
                policy.validate("policy").unwrap();
                assert_eq!(policy.kind(), "Chain");
            }
        }
    }
}
