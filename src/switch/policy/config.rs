//! Choosing and configuring a service's policy.

use serde::Deserialize;
use thiserror::Error;

use super::maglev::is_prime;
use super::{
    ByteShare, ByteShareConfig, ExpectedDelay, LeastOutstandingP2c, Maglev, MaglevConfig,
    P2cConfig, Policy, SmoothWrr,
};

/// The balancing policies, by configuration name.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PolicyKind {
    /// `"wrr"`: [`SmoothWrr`].
    Wrr,
    /// `"p2c"`: [`LeastOutstandingP2c`]. The default.
    #[default]
    P2c,
    /// `"expected_delay"`: [`ExpectedDelay`].
    ExpectedDelay,
    /// `"byte_share"`: [`ByteShare`].
    ByteShare,
    /// `"maglev"`: [`Maglev`].
    Maglev,
}

impl PolicyKind {
    /// Every kind, for benches and listings.
    pub const ALL: [PolicyKind; 5] = [
        Self::Wrr,
        Self::P2c,
        Self::ExpectedDelay,
        Self::ByteShare,
        Self::Maglev,
    ];

    /// The configuration name.
    pub fn name(self) -> &'static str {
        match self {
            Self::Wrr => "wrr",
            Self::P2c => "p2c",
            Self::ExpectedDelay => "expected_delay",
            Self::ByteShare => "byte_share",
            Self::Maglev => "maglev",
        }
    }
}

/// A service's balancing configuration, e.g. in TOML:
///
/// ```toml
/// kind = "byte_share"
/// byte_share.classes = [{ class = 1, shares = [3.0, 1.0] }]
/// ```
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(default)]
pub struct PolicyConfig {
    /// Which policy. Default `"p2c"`.
    #[serde(alias = "policy")]
    pub kind: PolicyKind,
    /// Seed of the random source of sampling policies (deterministic runs). Default 0.
    pub seed: u64,
    /// P2C parameters.
    pub p2c: P2cConfig,
    /// Byte-share parameters.
    pub byte_share: ByteShareConfig,
    /// Maglev parameters.
    pub maglev: MaglevConfig,
}

/// Why a policy configuration was refused.
#[derive(Debug, Error, PartialEq)]
pub enum PolicyError {
    /// The P2C bias is negative or not a number.
    #[error("p2c bias must be a finite number >= 0, got {0}")]
    BadBias(f64),
    /// The Maglev table size is not prime or too small for the backends.
    #[error("maglev table_size must be a prime larger than the {backends} backends (and below 65536 backends), got {size}")]
    BadTableSize {
        /// Configured size.
        size: u32,
        /// Backends of the service.
        backends: usize,
    },
    /// A byte share is negative or not a number.
    #[error(
        "byte_share class {class}: share {value} of backend {backend} must be a finite number >= 0"
    )]
    BadShare {
        /// Request class.
        class: u8,
        /// Backend index.
        backend: usize,
        /// Configured value.
        value: f64,
    },
    /// The byte-share tolerance or correction bound is out of range.
    #[error("byte_share tolerance must be >= 0 and max_correction >= 1")]
    BadCorrection,
}

/// Builds the policy `cfg` describes for a service of `n_backends`.
pub fn new_policy(cfg: &PolicyConfig, n_backends: usize) -> Result<Box<dyn Policy>, PolicyError> {
    Ok(match cfg.kind {
        PolicyKind::Wrr => Box::new(SmoothWrr::new()),
        PolicyKind::P2c => {
            let b = cfg.p2c.bias;
            if !(b >= 0.0 && b.is_finite()) {
                return Err(PolicyError::BadBias(b));
            }
            Box::new(LeastOutstandingP2c::new(cfg.p2c, cfg.seed))
        }
        PolicyKind::ExpectedDelay => Box::new(ExpectedDelay::new()),
        PolicyKind::ByteShare => {
            let bs = &cfg.byte_share;
            if !(bs.tolerance >= 0.0 && bs.max_correction >= 1.0) {
                return Err(PolicyError::BadCorrection);
            }
            for cs in &bs.classes {
                if let Some((backend, &value)) = cs
                    .shares
                    .iter()
                    .enumerate()
                    .find(|(_, v)| !(**v >= 0.0 && v.is_finite()))
                {
                    return Err(PolicyError::BadShare {
                        class: cs.class,
                        backend,
                        value,
                    });
                }
            }
            Box::new(ByteShare::new(bs.clone(), n_backends))
        }
        PolicyKind::Maglev => {
            let size = cfg.maglev.table_size;
            if !is_prime(size) || size as usize <= n_backends || n_backends >= u16::MAX as usize {
                return Err(PolicyError::BadTableSize {
                    size,
                    backends: n_backends,
                });
            }
            Box::new(Maglev::new(cfg.maglev))
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_lowercase_names_with_defaults() {
        for kind in PolicyKind::ALL {
            let cfg: PolicyConfig = toml::from_str(&format!("kind = \"{}\"", kind.name())).unwrap();
            assert_eq!(cfg.kind, kind);
            let p = new_policy(&cfg, 4).unwrap();
            assert_eq!(p.name(), kind.name());
        }
        let cfg: PolicyConfig = toml::from_str("").unwrap();
        assert_eq!(cfg.kind, PolicyKind::P2c);
        assert_eq!(cfg.p2c.bias, 1.0);
        assert_eq!(cfg.maglev.table_size, 65537);
    }

    #[test]
    fn parses_class_shares() {
        let cfg: PolicyConfig = toml::from_str(
            "policy = \"byte_share\"\nbyte_share.classes = [{ class = 1, shares = [3.0, 1.0] }]",
        )
        .unwrap();
        assert_eq!(cfg.byte_share.classes[0].shares, vec![3.0, 1.0]);
        assert!(toml::from_str::<PolicyConfig>("kind = \"random\"").is_err());
    }

    #[test]
    fn refuses_bad_parameters() {
        let mut cfg = PolicyConfig {
            kind: PolicyKind::Maglev,
            ..PolicyConfig::default()
        };
        cfg.maglev.table_size = 65536;
        assert!(matches!(
            new_policy(&cfg, 4),
            Err(PolicyError::BadTableSize { size: 65536, .. })
        ));
        let mut cfg = PolicyConfig::default();
        cfg.p2c.bias = f64::NAN;
        let err = new_policy(&cfg, 4).err().unwrap();
        assert!(err.to_string().contains("bias"));
    }
}
