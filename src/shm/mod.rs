//! What lives in memory shared by the master and its workers: the
//! scoreboard (one slot per worker, fleet counters) and the per-worker
//! tables hang forensics reads (requests in flight, stack-dump areas).

pub mod inflight;
pub mod scoreboard;
