//! Configurations the switch refuses, through its public API: typed errors, no panic, no abort.

use super::*;

#[test]
fn switch_new_refuses_a_bad_config() {
    let clock = Arc::new(ManualClock::new(0));
    for (cfg, field) in [
        (
            SwitchConfig {
                batch: 0,
                ..SwitchConfig::default()
            },
            "batch",
        ),
        (
            SwitchConfig {
                batch: usize::MAX,
                ..SwitchConfig::default()
            },
            "batch",
        ),
        (
            SwitchConfig {
                sweep_interval_ns: 0,
                ..SwitchConfig::default()
            },
            "sweep_interval_ns",
        ),
        (
            SwitchConfig {
                pool: PoolConfig {
                    max_subpools: u32::MAX,
                    ..PoolConfig::default()
                },
                ..SwitchConfig::default()
            },
            "pool.max_subpools",
        ),
    ] {
        match Switch::<GuestMemoryMmap>::new(cfg, clock.clone()) {
            Err(SwitchError::Config(e)) => assert_eq!(e.field(), field, "{e}"),
            Err(e) => panic!("{field}: wrong error {e}"),
            Ok(_) => panic!("{field}: accepted"),
        }
    }
    let e = toml::from_str::<SwitchConfig>("pool = { subpool = 4 }").unwrap_err();
    assert!(e.to_string().contains("subpool"), "{e}");
}

#[test]
fn add_service_refuses_a_bad_config() {
    let mut n = net(3, 16);
    let mut cfg = ServiceConfig::default();
    cfg.health.threshold = f64::NAN;
    let e = n.sw.add_service("s", cfg, &[(1, 1.0)]).unwrap_err();
    match &e {
        SwitchError::Service { service, source } => {
            assert_eq!(service, "s");
            assert_eq!(source.field(), "health.threshold");
        }
        e => panic!("wrong error {e}"),
    }
    assert!(e.to_string().contains("health threshold"), "{e}");
    let mut cfg = ServiceConfig::default();
    cfg.policy.kind = PolicyKind::Maglev;
    cfg.policy.maglev.table_size = 2_147_483_647;
    let e = n.sw.add_service("s", cfg, &[(1, 1.0)]).unwrap_err();
    assert!(e.to_string().contains("maglev table_size"), "{e}");
    let cfg = ServiceConfig {
        request_timeout_ns: 0,
        ..ServiceConfig::default()
    };
    assert!(n.sw.add_service("s", cfg, &[(1, 1.0)]).is_err());
    let mut cfg = ServiceConfig::default();
    cfg.failover.stall_window_ns = 0;
    assert!(n.sw.add_service("s", cfg, &[(1, 1.0)]).is_err());
    // Nothing was added by the refusals.
    assert!(n.sw.service_id("s").is_none());
    n.sw.add_service("s", ServiceConfig::default(), &[(1, 1.0)])
        .unwrap();
}
