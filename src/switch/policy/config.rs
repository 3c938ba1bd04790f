//! Choosing and configuring a service's policy.

use serde::Deserialize;
use thiserror::Error;

use super::maglev::is_prime;
use super::{
    ByteShare, ByteShareConfig, ExpectedDelay, LeastOutstandingP2c, Maglev, MaglevConfig,
    P2cConfig, Policy, SmoothWrr, MAGLEV_MAX_TABLE_SIZE,
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
#[serde(default, deny_unknown_fields)]
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

/// Why a policy configuration was refused. [`PolicyError::field`] names the setting.
#[derive(Clone, Debug, Error, PartialEq)]
pub enum PolicyError {
    /// The P2C bias is negative or not a number.
    #[error("p2c bias must be a finite number >= 0, got {0}")]
    BadBias(f64),
    /// The Maglev table size is not prime, too small for the backends or too large.
    #[error(
        "maglev table_size {size}: must be a prime, above the service's {backends} backends \
         and at most {MAGLEV_MAX_TABLE_SIZE}; the default {} suits up to a few hundred backends",
        super::MAGLEV_TABLE_SIZE
    )]
    BadTableSize {
        /// Configured size.
        size: u32,
        /// Backends of the service.
        backends: usize,
    },
    /// Maglev cannot index this many backends (at most 65534).
    #[error("maglev serves at most 65534 backends, got {0}; split the service")]
    TooManyBackends(usize),
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
    /// A byte-share class lists more shares than the service has backends, or none that is
    /// positive.
    #[error(
        "byte_share class {class}: {shares} shares for {backends} backends; give one share per \
         backend, at least one of them > 0"
    )]
    ShareCount {
        /// Request class.
        class: u8,
        /// Shares given.
        shares: usize,
        /// Backends of the service.
        backends: usize,
    },
    /// A request class is listed twice.
    #[error("byte_share class {0} is listed twice; give each class one entry")]
    DuplicateClass(u8),
    /// The byte-share tolerance or correction bound is out of range.
    #[error(
        "byte_share tolerance must be a finite number >= 0 and max_correction a finite number >= 1"
    )]
    BadCorrection,
}

impl PolicyError {
    /// The setting at fault, as named in a configuration file (`p2c.bias`, ...).
    pub fn field(&self) -> &'static str {
        match self {
            Self::BadBias(_) => "p2c.bias",
            Self::BadTableSize { .. } => "maglev.table_size",
            Self::TooManyBackends(_) => "members",
            Self::BadShare { .. } | Self::ShareCount { .. } | Self::DuplicateClass(_) => {
                "byte_share.classes"
            }
            Self::BadCorrection => "byte_share.tolerance",
        }
    }
}

impl PolicyConfig {
    /// Checks what does not depend on the service's backends: the P2C bias finite and >= 0,
    /// byte shares finite and >= 0 with each class listed once, tolerance and correction bound
    /// in range, and the Maglev table size a prime within [`MAGLEV_MAX_TABLE_SIZE`] (whichever
    /// policy is chosen). [`PolicyConfig::validate_for`] adds the checks against a backend
    /// count.
    pub fn validate(&self) -> Result<(), PolicyError> {
        let b = self.p2c.bias;
        if !(b >= 0.0 && b.is_finite()) {
            return Err(PolicyError::BadBias(b));
        }
        let bs = &self.byte_share;
        if !(bs.tolerance >= 0.0
            && bs.tolerance.is_finite()
            && bs.max_correction >= 1.0
            && bs.max_correction.is_finite())
        {
            return Err(PolicyError::BadCorrection);
        }
        for (i, cs) in bs.classes.iter().enumerate() {
            if bs.classes[..i].iter().any(|o| o.class == cs.class) {
                return Err(PolicyError::DuplicateClass(cs.class));
            }
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
        let size = self.maglev.table_size;
        if !is_prime(size) || size > MAGLEV_MAX_TABLE_SIZE {
            return Err(PolicyError::BadTableSize { size, backends: 0 });
        }
        Ok(())
    }

    /// [`PolicyConfig::validate`], then the checks against the service's `n_backends`: a
    /// Maglev table larger than the backend count (at most 65534 backends), byte-share classes
    /// with at most one share per backend and one share above 0.
    pub fn validate_for(&self, n_backends: usize) -> Result<(), PolicyError> {
        self.validate().map_err(|e| match e {
            PolicyError::BadTableSize { size, .. } => PolicyError::BadTableSize {
                size,
                backends: n_backends,
            },
            e => e,
        })?;
        match self.kind {
            PolicyKind::Maglev => {
                if n_backends >= u16::MAX as usize {
                    return Err(PolicyError::TooManyBackends(n_backends));
                }
                let size = self.maglev.table_size;
                if size as usize <= n_backends {
                    return Err(PolicyError::BadTableSize {
                        size,
                        backends: n_backends,
                    });
                }
            }
            PolicyKind::ByteShare => {
                for cs in &self.byte_share.classes {
                    if cs.shares.len() > n_backends || !cs.shares.iter().any(|v| *v > 0.0) {
                        return Err(PolicyError::ShareCount {
                            class: cs.class,
                            shares: cs.shares.len(),
                            backends: n_backends,
                        });
                    }
                }
            }
            _ => {}
        }
        Ok(())
    }
}

/// Builds the policy `cfg` describes for a service of `n_backends`, after
/// [`PolicyConfig::validate_for`].
pub fn new_policy(cfg: &PolicyConfig, n_backends: usize) -> Result<Box<dyn Policy>, PolicyError> {
    cfg.validate_for(n_backends)?;
    Ok(match cfg.kind {
        PolicyKind::Wrr => Box::new(SmoothWrr::new()),
        PolicyKind::P2c => Box::new(LeastOutstandingP2c::new(cfg.p2c, cfg.seed)),
        PolicyKind::ExpectedDelay => Box::new(ExpectedDelay::new()),
        PolicyKind::ByteShare => Box::new(ByteShare::new(cfg.byte_share.clone(), n_backends)),
        PolicyKind::Maglev => Box::new(Maglev::new(cfg.maglev)),
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

    #[test]
    fn refuses_unknown_keys_at_every_level() {
        for text in [
            "kind = \"p2c\"\nsede = 1",
            "p2c = { bais = 1.0 }",
            "maglev = { size = 7 }",
            "byte_share = { tolerence = 0.1 }",
            "byte_share.classes = [{ class = 1, share = [1.0] }]",
        ] {
            assert!(toml::from_str::<PolicyConfig>(text).is_err(), "{text}");
        }
    }

    #[test]
    fn refuses_huge_or_bad_maglev_tables_whatever_the_kind() {
        let mut cfg = PolicyConfig::default();
        // 2^31 - 1 is prime: it used to be accepted and to abort on a 4 GiB table.
        cfg.maglev.table_size = 2_147_483_647;
        let e = cfg.validate().unwrap_err();
        assert_eq!(e.field(), "maglev.table_size");
        assert!(e.to_string().contains("at most 1000003"), "{e}");
        cfg.kind = PolicyKind::Maglev;
        assert!(new_policy(&cfg, 3).is_err());
        cfg.maglev.table_size = 7;
        assert!(matches!(
            new_policy(&cfg, 7),
            Err(PolicyError::BadTableSize {
                size: 7,
                backends: 7
            })
        ));
        cfg.maglev.table_size = super::super::MAGLEV_MAX_TABLE_SIZE;
        assert!(cfg.validate_for(3).is_ok());
    }

    #[test]
    fn refuses_bad_byte_shares() {
        let mut cfg: PolicyConfig = toml::from_str(
            "kind = \"byte_share\"\nbyte_share.classes = [{ class = 1, shares = [3.0, 1.0, 1.0] }]",
        )
        .unwrap();
        assert!(matches!(
            cfg.validate_for(2),
            Err(PolicyError::ShareCount { class: 1, .. })
        ));
        cfg.byte_share.classes[0].shares = vec![0.0, 0.0];
        assert!(cfg.validate_for(2).is_err());
        cfg.byte_share.classes[0].shares = vec![1.0, 1.0];
        cfg.byte_share
            .classes
            .push(cfg.byte_share.classes[0].clone());
        assert_eq!(cfg.validate(), Err(PolicyError::DuplicateClass(1)));
        cfg.byte_share.classes.pop();
        cfg.byte_share.max_correction = f64::INFINITY;
        assert_eq!(cfg.validate(), Err(PolicyError::BadCorrection));
    }
}
