//! Exit codes, documented in docs/operations.md and the README. The master's codes are what
//! systemd and scripts see; the worker codes are what the master logs.

/// Clean stop (TERM, INT, QUIT) or a successful `check`.
pub const OK: i32 = 0;
/// A runtime failure of the master (an OS call it cannot do without failed).
pub const FAILURE: i32 = 1;
/// The configuration (file, environment or flags) is invalid, or the
/// command line is wrong.
pub const CONFIG_ERROR: i32 = 2;
/// The app's startup failed in every worker before any became ready:
/// restarting would only loop (gunicorn's WORKER_BOOT_ERROR).
pub const APP_STARTUP_FAILED: i32 = 3;
/// A listening address could not be bound (in use, permission, no such
/// address).
pub const BIND_FAILED: i32 = 4;
/// `rsvisor reload` through the control socket: the reload was refused
/// (invalid config) or abandoned (new workers could not start).
pub const RELOAD_FAILED: i32 = 5;

/// Worker: drained and exited normally.
pub const WORKER_OK: i32 = 0;
/// Worker: the app's `startup` returned an error.
pub const WORKER_APP_STARTUP_FAILED: i32 = 3;
/// Worker: setting itself up after fork failed (signals, runtime,
/// privileges, listeners).
pub const WORKER_SETUP_FAILED: i32 = 4;
/// Worker: found its master gone at startup (it never serves orphaned).
pub const WORKER_ORPHANED: i32 = 5;
/// Worker: a panic escaped the worker's main function.
pub const WORKER_PANICKED: i32 = 6;
