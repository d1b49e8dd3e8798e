//! Listening sockets (bound, inherited, handed to workers) and the
//! address ranges trusted for forwarded headers.

pub mod app_probe;
pub mod app_socket;
pub mod listen;
pub mod netmask;
pub mod quic_group;
