//! What rsvisor says to the outside: the control-socket protocol, the
//! typed outcomes (exit reasons, reload results) it reports, the states it
//! shows, and its exit codes.

pub mod control;
pub mod exit;
pub mod outcome;
pub mod state;
