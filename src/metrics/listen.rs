//! Where the metrics endpoint listens: `[metrics] listen` in a config, `--metrics ADDR`.

use std::net::{Ipv4Addr, SocketAddr};

use serde::{Deserialize, Deserializer};

/// The endpoint's address when none is given: localhost only, Prometheus exporters' port
/// range.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:9464";

/// The `[metrics]` table of a config: its presence turns the endpoint on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// `IP:PORT` to listen on (a bare port means `127.0.0.1:PORT`); default
    /// [`DEFAULT_LISTEN`]. Port 0 takes a free port (the daemon logs which).
    #[serde(default = "default_listen", deserialize_with = "de_listen")]
    pub listen: SocketAddr,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        Self {
            listen: default_listen(),
        }
    }
}

fn default_listen() -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, 9464))
}

fn de_listen<'de, D: Deserializer<'de>>(d: D) -> Result<SocketAddr, D::Error> {
    let s = String::deserialize(d)?;
    parse_listen(&s).map_err(serde::de::Error::custom)
}

/// Parses an endpoint address: `IP:PORT` (`[::1]:9464` for IPv6) or a bare `PORT`, which
/// means `127.0.0.1:PORT`. The error says what to write instead.
pub fn parse_listen(s: &str) -> Result<SocketAddr, String> {
    let s = s.trim();
    if let Ok(port) = s.parse::<u16>() {
        return Ok(SocketAddr::from((Ipv4Addr::LOCALHOST, port)));
    }
    s.parse().map_err(|_| {
        format!(
            "{s:?} is not an address to listen on; write IP:PORT (e.g. {DEFAULT_LISTEN}, \
             0.0.0.0:9464 for every interface, [::1]:9464) or a port"
        )
    })
}
