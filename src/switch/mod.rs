//! The switch: router, health, balancing policies, failover, in-flight table, stats.
