//! What health weighs and when a backend leaves and rejoins rotation: [`HealthConfig`], its
//! weights and its checks.

use serde::Deserialize;

/// Highest value of a load report (saturated).
pub const LOAD_MAX: u16 = 1000;

/// Weights of the health metrics in the score. Zero drops a metric.
#[derive(Clone, Copy, Debug, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HealthWeights {
    /// Free rx buffers the backend has posted (room to deliver). Default 1.0.
    pub free_rx: f64,
    /// Drain rate against the backlog waiting in its rx queue. Default 1.0.
    pub drain: f64,
    /// Reply latency (EWMA) against the target. Default 1.0.
    pub latency: f64,
    /// Error replies (EWMA of the error fraction). Default 2.0.
    pub errors: f64,
    /// Requests in flight against the in-flight limit. Default 0.5.
    pub in_flight: f64,
    /// The backend's own load report (or the switch's view when the report is suspect). Default 1.0.
    pub load: f64,
}

impl Default for HealthWeights {
    fn default() -> Self {
        Self {
            free_rx: 1.0,
            drain: 1.0,
            latency: 1.0,
            errors: 2.0,
            in_flight: 0.5,
            load: 1.0,
        }
    }
}

/// How the normalised metrics are combined into one score.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Combine {
    /// Weighted arithmetic mean. A backend failing every request but with an idle queue keeps a
    /// score of about 1/3 with the default weights, so it stays in rotation.
    Arithmetic,
    /// Weighted geometric mean (each metric floored at 0.01): one metric near zero (all errors,
    /// no free buffer) pulls the score down however good the others are. The default.
    #[default]
    Geometric,
}

/// Health scoring parameters, shared by the backends of a service.
#[derive(Clone, Copy, Debug, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HealthConfig {
    /// Metric weights.
    pub weights: HealthWeights,
    /// How metrics combine. Default [`Combine::Geometric`].
    pub combine: Combine,
    /// A backend whose score falls below this leaves rotation. Default 0.2.
    pub threshold: f64,
    /// A backend out of rotation rejoins at or above this score (hysteresis). Default 0.3.
    pub rejoin_threshold: f64,
    /// Half-life of the drain, latency and error EWMAs. Default 20 ms.
    pub ewma_half_life_ns: u64,
    /// Reply latency at or under which the latency metric is perfect. Default 100 us.
    pub latency_target_ns: u64,
    /// Requests in flight at which the in-flight metric reaches 0. Default 256.
    pub in_flight_limit: u32,
    /// Fraction of the rx ring free at which the free-rx metric is perfect. Default 0.5.
    pub free_rx_ok_fraction: f64,
    /// A load report older than this is ignored. Default 100 ms.
    pub load_report_ttl_ns: u64,
    /// Reports at or under this load (0..=1000) claim "idle / low". Default 300.
    pub load_low: u16,
    /// Reports at or over this load claim "saturated". Default 800.
    pub load_high: u16,
    /// A contradiction between report and observation must last this long to mark the report
    /// suspect. Default 2 ms.
    pub suspect_after_ns: u64,
    /// Agreement must last this long to trust the report again. Default 20 ms.
    pub suspect_clear_ns: u64,
}

impl Default for HealthConfig {
    fn default() -> Self {
        Self {
            weights: HealthWeights::default(),
            combine: Combine::Geometric,
            threshold: 0.2,
            rejoin_threshold: 0.3,
            ewma_half_life_ns: 20_000_000,
            latency_target_ns: 100_000,
            in_flight_limit: 256,
            free_rx_ok_fraction: 0.5,
            load_report_ttl_ns: 100_000_000,
            load_low: 300,
            load_high: 800,
            suspect_after_ns: 2_000_000,
            suspect_clear_ns: 20_000_000,
        }
    }
}

/// Why a [`HealthConfig`] was refused. [`HealthConfigError::field`] names the setting.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum HealthConfigError {
    /// A fraction is outside [0, 1] or not a number.
    #[error("health {field} = {value}: must be a number in [0, 1]")]
    NotAFraction {
        /// The setting.
        field: &'static str,
        /// The value given.
        value: f64,
    },
    /// A metric weight is negative, infinite or not a number.
    #[error("health weights.{field} = {value}: must be a finite number >= 0 (0 drops the metric)")]
    BadWeight {
        /// The metric.
        field: &'static str,
        /// The value given.
        value: f64,
    },
    /// The rejoin threshold is below the leave threshold (no hysteresis, flapping).
    #[error(
        "health rejoin_threshold {rejoin} is below threshold {threshold}: set rejoin_threshold \
         >= threshold so a backend that left rotation must recover before it returns"
    )]
    RejoinBelowThreshold {
        /// The leave threshold.
        threshold: f64,
        /// The rejoin threshold.
        rejoin: f64,
    },
    /// A duration or limit that must be positive is 0.
    #[error("health {field} must be greater than 0")]
    Zero {
        /// The setting.
        field: &'static str,
    },
    /// The load bounds are not `load_low <= load_high <= 1000`.
    #[error(
        "health load_low {low} and load_high {high}: need load_low <= load_high <= {LOAD_MAX}"
    )]
    LoadBounds {
        /// `load_low`.
        low: u16,
        /// `load_high`.
        high: u16,
    },
}

impl HealthConfigError {
    /// The setting at fault, as named in a configuration file (`threshold`, `weights.errors`).
    pub fn field(&self) -> &'static str {
        match self {
            Self::NotAFraction { field, .. } | Self::Zero { field } => field,
            Self::BadWeight { field, .. } => match *field {
                "free_rx" => "weights.free_rx",
                "drain" => "weights.drain",
                "latency" => "weights.latency",
                "errors" => "weights.errors",
                "in_flight" => "weights.in_flight",
                _ => "weights.load",
            },
            Self::RejoinBelowThreshold { .. } => "rejoin_threshold",
            Self::LoadBounds { low, .. } => {
                if *low > LOAD_MAX {
                    "load_low"
                } else {
                    "load_high"
                }
            }
        }
    }
}

impl HealthConfig {
    /// Checks every setting: thresholds and fractions in [0, 1] (not NaN), weights finite and
    /// not negative, the EWMA half-life, latency target, in-flight limit and report lifetime above 0,
    /// and `load_low <= load_high <= 1000`.
    pub fn validate(&self) -> Result<(), HealthConfigError> {
        for (field, value) in [
            ("threshold", self.threshold),
            ("rejoin_threshold", self.rejoin_threshold),
            ("free_rx_ok_fraction", self.free_rx_ok_fraction),
        ] {
            if !(0.0..=1.0).contains(&value) {
                return Err(HealthConfigError::NotAFraction { field, value });
            }
        }
        if self.rejoin_threshold < self.threshold {
            return Err(HealthConfigError::RejoinBelowThreshold {
                threshold: self.threshold,
                rejoin: self.rejoin_threshold,
            });
        }
        let w = &self.weights;
        for (field, value) in [
            ("free_rx", w.free_rx),
            ("drain", w.drain),
            ("latency", w.latency),
            ("errors", w.errors),
            ("in_flight", w.in_flight),
            ("load", w.load),
        ] {
            if !(value.is_finite() && value >= 0.0) {
                return Err(HealthConfigError::BadWeight { field, value });
            }
        }
        for (field, zero) in [
            ("ewma_half_life_ns", self.ewma_half_life_ns == 0),
            ("latency_target_ns", self.latency_target_ns == 0),
            ("in_flight_limit", self.in_flight_limit == 0),
            ("free_rx_ok_fraction", self.free_rx_ok_fraction == 0.0),
            ("load_report_ttl_ns", self.load_report_ttl_ns == 0),
        ] {
            if zero {
                return Err(HealthConfigError::Zero { field });
            }
        }
        if self.load_low > self.load_high || self.load_high > LOAD_MAX {
            return Err(HealthConfigError::LoadBounds {
                low: self.load_low,
                high: self.load_high,
            });
        }
        Ok(())
    }
}
