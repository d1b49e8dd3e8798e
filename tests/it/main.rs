//! The integration suite: one test binary (linked once) whose modules run
//! the real `rsvisor` and `demo` binaries on loopback and Unix sockets.
//! The servers are asked about their state through the control socket
//! (`util::Server::status`); their logs are read only where the log
//! itself is the feature under test.

mod util;

mod apps;
mod bad_files;
mod canary;
mod config_check;
mod exec;
mod forensics;
mod hardening;
mod http3;
mod http_edge;
mod idle_conns;
mod layers;
mod monitoring;
mod observability;
mod proxy_mode;
mod python_forensics;
mod recipes;
mod slow_readers;
mod static_files;
mod supervisor;
mod systemd;
mod tls_flood;
mod tls_resume;
mod zero_downtime;
