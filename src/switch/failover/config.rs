//! Failover parameters of a service, checked.

use serde::Deserialize;

/// Failover parameters of a service.
#[derive(Clone, Copy, Debug, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FailoverConfig {
    /// A backend with pending work whose consumer index has not moved for this long is stalled.
    /// Default 5 ms.
    pub stall_window_ns: u64,
    /// Ejection time of the first ejection; the n-th lasts n times this. Default 30 ms.
    pub base_ejection_ns: u64,
    /// Longest ejection. Default 300 ms.
    pub max_ejection_ns: u64,
    /// Most backends ejected at once, in percent of the service; at least one may always be
    /// ejected. Default 10.
    pub max_ejection_percent: u32,
    /// Duration of the linear weight ramp after a return. Default 50 ms; 0 disables slow start.
    pub slow_start_ns: u64,
    /// Weight factor at the start of the ramp. Default 0.1.
    pub slow_start_min: f64,
    /// Below this fraction of usable backends, all backends are used. Default 0.5.
    pub panic_threshold: f64,
}

impl Default for FailoverConfig {
    fn default() -> Self {
        Self {
            stall_window_ns: 5_000_000,
            base_ejection_ns: 30_000_000,
            max_ejection_ns: 300_000_000,
            max_ejection_percent: 10,
            slow_start_ns: 50_000_000,
            slow_start_min: 0.1,
            panic_threshold: 0.5,
        }
    }
}

/// Why a [`FailoverConfig`] was refused. [`FailoverConfigError::field`] names the setting.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum FailoverConfigError {
    /// A window or duration that must be positive is 0.
    #[error("failover {field} must be greater than 0")]
    Zero {
        /// The setting.
        field: &'static str,
    },
    /// The longest ejection is shorter than the first one.
    #[error(
        "failover max_ejection_ns {max} is below base_ejection_ns {base}: raise max_ejection_ns \
         or lower base_ejection_ns"
    )]
    MaxBelowBase {
        /// `base_ejection_ns`.
        base: u64,
        /// `max_ejection_ns`.
        max: u64,
    },
    /// The ejection cap is not a percentage.
    #[error("failover max_ejection_percent {0} must be in 0..=100")]
    Percent(u32),
    /// A fraction is outside [0, 1] or not a number.
    #[error("failover {field} = {value}: must be a number in [0, 1]")]
    NotAFraction {
        /// The setting.
        field: &'static str,
        /// The value given.
        value: f64,
    },
}

impl FailoverConfigError {
    /// The setting at fault, as named in a configuration file.
    pub fn field(&self) -> &'static str {
        match self {
            Self::Zero { field } | Self::NotAFraction { field, .. } => field,
            Self::MaxBelowBase { .. } => "max_ejection_ns",
            Self::Percent(_) => "max_ejection_percent",
        }
    }
}

impl FailoverConfig {
    /// Checks every setting: the stall window and the base ejection time above 0, the longest
    /// ejection at least the first, the ejection cap a percentage, and the slow-start minimum
    /// and the panic threshold in [0, 1] (not NaN).
    pub fn validate(&self) -> Result<(), FailoverConfigError> {
        for (field, zero) in [
            ("stall_window_ns", self.stall_window_ns == 0),
            ("base_ejection_ns", self.base_ejection_ns == 0),
        ] {
            if zero {
                return Err(FailoverConfigError::Zero { field });
            }
        }
        if self.max_ejection_ns < self.base_ejection_ns {
            return Err(FailoverConfigError::MaxBelowBase {
                base: self.base_ejection_ns,
                max: self.max_ejection_ns,
            });
        }
        if self.max_ejection_percent > 100 {
            return Err(FailoverConfigError::Percent(self.max_ejection_percent));
        }
        for (field, value) in [
            ("slow_start_min", self.slow_start_min),
            ("panic_threshold", self.panic_threshold),
        ] {
            if !(0.0..=1.0).contains(&value) {
                return Err(FailoverConfigError::NotAFraction { field, value });
            }
        }
        Ok(())
    }
}
