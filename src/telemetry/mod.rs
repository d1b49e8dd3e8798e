//! What rsvisor reports about itself: logs (with the repeated-error
//! throttle) and Prometheus metrics.

pub mod logging;
pub mod metrics;
pub mod throttle;
