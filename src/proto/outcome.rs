//! Outcomes the master counts and reports, as enums: the metrics labels,
//! the scoreboard's counter indexes and the control protocol's values all
//! come from these, so a misspelt outcome cannot silently go uncounted.

use serde::{Deserialize, Serialize};

/// Declares an outcome enum: `as_str()` (the metrics label and the JSON
/// value), `ALL` (every variant, in index order) and `index()`.
macro_rules! outcome {
    ($(#[$m:meta])* pub enum $name:ident { $($(#[$vm:meta])* $variant:ident = $text:literal),+ $(,)? }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(rename_all = "snake_case")]
        #[non_exhaustive]
        #[allow(missing_docs)] // a variant without a comment is its label
        pub enum $name {
            $($(#[$vm])* $variant),+
        }

        impl $name {
            /// Every value, in index order.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// The metrics label and the JSON value.
            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text),+
                }
            }

            /// Position in [`Self::ALL`] (the scoreboard's counter index).
            pub fn index(self) -> usize {
                self as usize
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}
pub(crate) use outcome as labelled;

outcome! {
    /// Why a worker left (`rsvisor_worker_exits_total{reason}`).
    pub enum ExitReason {
        /// It died without being asked to.
        Crash = "crash",
        /// It missed its heartbeat, or did not become ready in time.
        Timeout = "timeout",
        /// It reached `lifecycle.max_requests`.
        MaxRequests = "max_requests",
        /// Its RSS stayed above `lifecycle.max_worker_memory`.
        Memory = "memory",
        /// It lived `lifecycle.max_worker_lifetime`.
        Lifetime = "lifetime",
        /// A newer generation replaced it.
        Reload = "reload",
        /// It was the canary of a reload that was rolled back.
        Rollback = "rollback",
        /// The fleet was scaled down (TTOU, `scale`).
        ScaleDown = "scale_down",
        /// The master stopped.
        Shutdown = "shutdown",
    }
}

outcome! {
    /// How a reload ended (`rsvisor_reloads_total{result}`).
    pub enum ReloadResult {
        /// Every worker is of the new generation.
        Success = "success",
        /// The new configuration was refused; nothing changed.
        InvalidConfig = "invalid_config",
        /// New workers could not boot; the previous generation serves on.
        Abandoned = "abandoned",
        /// The canary failed (it exited, answered too many 5xx or was too
        /// slow); the previous generation serves on.
        RolledBack = "rolled_back",
    }
}

outcome! {
    /// Why accepting a connection failed (`rsvisor_accept_errors_total{reason}`).
    pub enum AcceptError {
        /// Out of file descriptors (EMFILE, ENFILE): raise `LimitNOFILE`.
        Descriptors = "descriptors",
        /// Out of kernel memory or buffers (ENOMEM, ENOBUFS).
        Memory = "memory",
        Other = "other",
    }
}

outcome! {
    /// Why a TLS handshake failed (`rsvisor_tls_handshake_failures_total{reason}`).
    pub enum TlsFailure {
        /// Not done within `http.header_read_timeout`.
        Timeout = "timeout",
        /// `client_auth = "required"` and the client sent no certificate.
        NoCertificate = "no_certificate",
        /// The client's certificate was refused (unknown issuer, expired,
        /// X.509 v1…).
        BadCertificate = "bad_certificate",
        /// No protocol version, cipher or ALPN in common; a bad message.
        Protocol = "protocol",
        /// The connection failed or closed during the handshake.
        Io = "io",
    }
}

outcome! {
    /// Connections that ended with a protocol error
    /// (`rsvisor_connection_errors_total{kind}`).
    pub enum ConnError {
        /// A malformed HTTP/1.1 request (answered 400 and closed).
        Http1 = "http1",
        /// An HTTP/2 protocol error, our GOAWAY included (a reset flood
        /// gets `ENHANCE_YOUR_CALM`).
        Http2 = "http2",
        /// An HTTP/3 protocol error, ours or the client's.
        Http3 = "http3",
        /// The connection failed under us (reset, broken pipe).
        Io = "io",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn indexes_follow_all() {
        for (i, r) in ExitReason::ALL.iter().enumerate() {
            assert_eq!(r.index(), i);
        }
        for (i, r) in ReloadResult::ALL.iter().enumerate() {
            assert_eq!(r.index(), i);
        }
    }

    #[test]
    fn json_values_are_the_labels() {
        for r in ExitReason::ALL {
            let json = serde_json::to_string(r).expect("serializes");
            assert_eq!(json, format!("\"{}\"", r.as_str()));
        }
        let back: ReloadResult = serde_json::from_str("\"invalid_config\"").expect("parses");
        assert_eq!(back, ReloadResult::InvalidConfig);
    }
}
