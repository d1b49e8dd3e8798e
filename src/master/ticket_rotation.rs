//! The master's one duty for TLS resumption: a new session-ticket key every
//! `tls.session_ticket_lifetime` (workers pick it up from shared memory).

use std::time::{Duration, Instant};

use tracing::{info, warn};

use super::Schedule;

impl Schedule {
    /// `lifetime`: the current generation's `tls.session_ticket_lifetime`.
    pub(super) fn rotate_ticket_keys(&mut self, lifetime: Duration, now: Instant) {
        if now < self.next_ticket_rotation {
            return;
        }
        self.next_ticket_rotation = now + lifetime;
        match crate::tls::rotate_ticket_keys() {
            Ok(true) => info!(
                next_in_s = lifetime.as_secs(),
                "new TLS session-ticket key; the previous one still opens tickets"
            ),
            Ok(false) => {}
            Err(e) => {
                warn!(error = %e, "cannot make a new TLS session-ticket key; keeping the current one")
            }
        }
    }
}
