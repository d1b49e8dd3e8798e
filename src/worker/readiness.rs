//! `/ready`: the app's readiness checks, run concurrently with a bound
//! each, their results reused for a short while, so that a probe storm
//! costs the dependencies one round of checks per [`READY_CACHE_FOR`].

use std::time::Duration;

use tokio::sync::Mutex;
use tokio::time::Instant;

use crate::app::ReadinessCheck;

/// A check that has not answered after this long counts as failed.
pub const READY_CHECK_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a round of check results is reused.
pub const READY_CACHE_FOR: Duration = Duration::from_secs(1);

/// The result of one round: `(name, None)` for a check that passed,
/// `(name, Some(why))` for one that failed.
pub type Round = Vec<(String, Option<String>)>;

pub struct Readiness {
    checks: Vec<ReadinessCheck>,
    /// The last round and when it ended. Holding the lock while checking
    /// makes concurrent probes wait for one round instead of each starting
    /// their own.
    last: Mutex<Option<(Instant, Round)>>,
}

impl Readiness {
    pub fn new(checks: Vec<ReadinessCheck>) -> Readiness {
        Readiness {
            checks,
            last: Mutex::new(None),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.checks.is_empty()
    }

    /// The current results (a fresh round if the last one is too old).
    pub async fn round(&self) -> Round {
        let mut last = self.last.lock().await;
        if let Some((at, round)) = last.as_ref() {
            if at.elapsed() < READY_CACHE_FOR {
                return round.clone();
            }
        }
        let runs = self.checks.iter().map(|c| async move {
            let outcome = match tokio::time::timeout(READY_CHECK_TIMEOUT, (c.check)()).await {
                Ok(Ok(())) => None,
                Ok(Err(e)) => Some(e.to_string()),
                Err(_) => Some(format!("no answer within {READY_CHECK_TIMEOUT:?}")),
            };
            (c.name.clone(), outcome)
        });
        let round: Round = futures_util::future::join_all(runs).await;
        *last = Some((Instant::now(), round.clone()));
        round
    }
}

/// The JSON `/ready` answers: `{"status": …, "checks": {NAME: "ok" |
/// "error: …"}}`.
pub fn json(status: &str, round: &Round) -> String {
    let checks: serde_json::Map<String, serde_json::Value> = round
        .iter()
        .map(|(name, failed)| {
            let v = match failed {
                None => "ok".to_string(),
                Some(why) => format!("error: {why}"),
            };
            (name.clone(), serde_json::Value::String(v))
        })
        .collect();
    serde_json::json!({ "status": status, "checks": checks }).to_string()
}
