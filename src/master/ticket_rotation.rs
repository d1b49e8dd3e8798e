//! The master's one duty for TLS resumption: a new session-ticket key every
//! `tls.session_ticket_lifetime` (workers pick it up from shared memory).

use std::time::Instant;

use tracing::{info, warn};

use super::Master;

impl Master {
    pub(super) fn rotate_ticket_keys(&mut self) {
        let now = Instant::now();
        if now < self.schedule.next_ticket_rotation {
            return;
        }
        let lifetime = self
            .core
            .current()
            .loaded
            .config
            .tls
            .session_ticket_lifetime;
        self.schedule.next_ticket_rotation = now + lifetime;
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
