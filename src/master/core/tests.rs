//! The core's decisions on a fake clock: every test drives [`Core::step`]
//! with events and a made-up fleet, and checks the effects. No process is
//! forked and nothing sleeps.

use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use nix::unistd::Pid;

use super::lifecycle::{Lifecycle, RELOAD_MAX_BOOT_FAILURES};
use super::*;
use crate::config::{Config, WorkerCount};
use crate::master::control_socket::ClientId;
use crate::proto::outcome::ReloadResult;

const MS: Duration = Duration::from_millis(1);

fn loaded(workers: usize, edit: impl FnOnce(&mut Config)) -> Loaded {
    let mut c = Config::default();
    c.server.workers = WorkerCount::Fixed(workers);
    edit(&mut c);
    Loaded::from_config(c).expect("a valid config")
}

/// A worker as a tick describes it.
fn member(pid: i32, generation: u32, serving: bool) -> Member {
    Member {
        pid: Pid::from_raw(pid),
        generation,
        booting: !serving,
        awaiting_ready: !serving,
        serving,
        retiring: None,
        leaving: false,
        connections: 0,
        exec: false,
        since_spawn: Duration::from_secs(1),
        silent: Some(Duration::ZERO),
        timeout: Duration::from_secs(30),
        stalled: false,
    }
}

fn tick(core: &mut Core, members: &[Member], now: Instant) -> Vec<Effect> {
    core.step(
        Event::Tick(World {
            members: members.to_vec(),
            ..World::default()
        }),
        now,
    )
}

fn spawns(fx: &[Effect]) -> usize {
    fx.iter()
        .map(|e| match e {
            Effect::Spawn(n) => *n,
            _ => 0,
        })
        .sum()
}

/// What `f` picks out of the effects, in order.
fn pick<T>(fx: &[Effect], f: impl Fn(&Effect) -> Option<T>) -> Vec<T> {
    fx.iter().filter_map(f).collect()
}

fn drains(fx: &[Effect]) -> Vec<(i32, ExitReason)> {
    pick(fx, |e| match e {
        Effect::Drain { pid, reason } => Some((pid.as_raw(), *reason)),
        _ => None,
    })
}

/// The replies to control clients: (client, ok, error text).
fn replies(fx: &[Effect]) -> Vec<(ClientId, bool, String)> {
    fx.iter()
        .filter_map(|e| match e {
            Effect::Reply { to, response } => {
                Some((*to, response.ok, response.error.clone().unwrap_or_default()))
            }
            _ => None,
        })
        .collect()
}

fn counted(fx: &[Effect]) -> Option<ReloadResult> {
    fx.iter().find_map(|e| match e {
        Effect::CountReload(r) => Some(*r),
        _ => None,
    })
}

fn exit(fx: &[Effect]) -> Option<Exit> {
    fx.iter().find_map(|e| match e {
        Effect::Exit(code) => Some(*code),
        _ => None,
    })
}

fn has(fx: &[Effect], f: impl Fn(&Effect) -> bool) -> bool {
    fx.iter().any(f)
}

/// Asks for a reload with a waiting client and answers the core's
/// `LoadConfig` with `new`.
fn reload(
    core: &mut Core,
    client: u64,
    new: Result<Loaded, ReloadError>,
    now: Instant,
) -> Vec<Effect> {
    let fx = core.step(
        Event::Control {
            client: ClientId::for_test(client),
            ask: Ask::Reload,
        },
        now,
    );
    let Some(Effect::LoadConfig { waiters, started }) = fx
        .into_iter()
        .find(|e| matches!(e, Effect::LoadConfig { .. }))
    else {
        panic!("a reload asks for the configuration");
    };
    core.step(
        Event::ConfigLoaded {
            waiters,
            started,
            result: new,
        },
        now,
    )
}

fn exited(pid: i32, generation: u32, reason: ExitReason, in_app_startup: bool) -> Event<'static> {
    Event::Exited(Exited {
        pid: Pid::from_raw(pid),
        generation,
        reason,
        settled: false,
        said_ready: false,
        in_app_startup,
        ended: Ended::Code(1),
    })
}

#[test]
fn the_first_tick_starts_every_worker_and_ready_is_said_once() {
    let t = Instant::now();
    let mut core = Core::new(loaded(3, |_| {}), t);
    assert_eq!(spawns(&tick(&mut core, &[], t)), 3);
    let booting = [
        member(10, 1, false),
        member(11, 1, false),
        member(12, 1, false),
    ];
    let fx = tick(&mut core, &booting, t);
    assert_eq!(spawns(&fx), 0);
    assert!(!has(&fx, |e| matches!(e, Effect::InitialReady)));
    let ready = [
        member(10, 1, true),
        member(11, 1, true),
        member(12, 1, true),
    ];
    assert!(has(&tick(&mut core, &ready, t), |e| matches!(
        e,
        Effect::InitialReady
    )));
    assert!(!has(&tick(&mut core, &ready, t), |e| matches!(
        e,
        Effect::InitialReady
    )));
}

#[test]
fn a_reload_replaces_old_workers_one_at_a_time_and_answers_when_the_last_has_left() {
    let t = Instant::now();
    let mut core = Core::new(loaded(2, |_| {}), t);
    let fx = reload(&mut core, 1, Ok(loaded(2, |_| {})), t);
    assert!(has(&fx, |e| matches!(e, Effect::SetGeneration(2))));
    assert_eq!(
        core.lifecycle().phase(),
        crate::proto::state::Phase::Reloading
    );

    // Capacity never drops: one new worker first, no old one drains yet.
    let old = [member(10, 1, true), member(11, 1, true)];
    let fx = tick(&mut core, &old, t);
    assert_eq!((spawns(&fx), drains(&fx)), (1, vec![]));
    let fx = tick(&mut core, &[old[0], old[1], member(20, 2, false)], t);
    assert_eq!((spawns(&fx), drains(&fx)), (0, vec![]));
    // Ready: the oldest makes way for it, and the next replacement starts.
    let fx = tick(&mut core, &[old[0], old[1], member(20, 2, true)], t);
    assert_eq!(drains(&fx), vec![(10, ExitReason::Reload)]);
    assert_eq!(spawns(&fx), 1);
    let mut leaving = old;
    leaving[0].leaving = true;
    leaving[0].serving = false;
    let new = [member(20, 2, true), member(21, 2, true)];
    let fleet = [leaving[0], old[1], new[0], new[1]];
    // The last old worker is told to drain; an old program that still
    // accepts on a listening socket holds the reload's end.
    let fx = core.step(
        Event::Tick(World {
            members: fleet.to_vec(),
            old_program_accepts: true,
            ..World::default()
        }),
        t + 50 * MS,
    );
    assert_eq!(drains(&fx), vec![(11, ExitReason::Reload)]);
    assert!(replies(&fx).is_empty());
    // Once every old worker has been told to leave (they stop accepting
    // at once), the reload is done and its client hears so.
    leaving[1].leaving = true;
    leaving[1].serving = false;
    let fx = tick(
        &mut core,
        &[leaving[0], leaving[1], new[0], new[1]],
        t + 80 * MS,
    );
    assert_eq!(
        replies(&fx),
        vec![(ClientId::for_test(1), true, String::new())]
    );
    assert_eq!(counted(&fx), Some(ReloadResult::Success));
    assert!(has(&fx, |e| matches!(e, Effect::ReplaceHelpers)));
    // Not while they still run: the memory of the cycle goes back once
    // they are gone.
    assert!(!has(&fx, |e| matches!(e, Effect::ReturnMemory)));
    let fx = tick(&mut core, &new, t + 90 * MS);
    let last = core.last_reload().expect("a result");
    assert_eq!((last.generation, last.duration), (2, 80 * MS));
    assert!(matches!(core.lifecycle(), Lifecycle::Running));
    // The cycle is over: its memory goes back, once.
    assert!(has(&fx, |e| matches!(e, Effect::ReturnMemory)));
    assert!(!has(&tick(&mut core, &new, t), |e| matches!(
        e,
        Effect::ReturnMemory
    )));
}

#[test]
fn a_reload_is_not_done_in_the_tick_that_tells_the_last_old_program_to_stop() {
    let t = Instant::now();
    let mut core = Core::new(loaded(1, |_| {}), t);
    reload(&mut core, 1, Ok(loaded(1, |_| {})), t);
    let mut old = member(10, 1, true);
    old.exec = true;
    let mut new = member(20, 2, true);
    new.exec = true;
    // The shell looked at /proc before the drain: nothing held a socket.
    let fx = tick(&mut core, &[old, new], t);
    assert_eq!(drains(&fx), vec![(10, ExitReason::Reload)]);
    assert!(
        replies(&fx).is_empty(),
        "uvicorn accepts for a while after TERM"
    );
    old.leaving = true;
    old.serving = false;
    let fx = tick(&mut core, &[old, new], t);
    assert_eq!(
        replies(&fx),
        vec![(ClientId::for_test(1), true, String::new())]
    );
}

#[test]
fn an_invalid_config_is_refused_and_the_running_generation_stays() {
    let t = Instant::now();
    let mut core = Core::new(loaded(2, |_| {}), t);
    let unreadable = crate::config::ConfigError::Read {
        file: "app.toml".into(),
        source: std::io::Error::other("permission denied"),
    };
    let fx = reload(&mut core, 4, Err(unreadable.into()), t);
    assert_eq!(counted(&fx), Some(ReloadResult::InvalidConfig));
    let r = replies(&fx);
    assert_eq!(r.len(), 1);
    assert!(
        !r[0].1
            && r[0]
                .2
                .contains("app.toml: cannot read the config file: permission denied"),
        "{r:?}"
    );
    assert!(!has(&fx, |e| matches!(e, Effect::SetGeneration(_))));
    assert_eq!(core.current().generation, 1);
    assert!(matches!(core.lifecycle(), Lifecycle::Running));
    // The next reload gets the next number; a refused one used none.
    reload(&mut core, 5, Ok(loaded(2, |_| {})), t);
    assert_eq!(core.current().generation, 2);
}

#[test]
fn reloads_asked_for_during_a_reload_run_once_after_it() {
    let t = Instant::now();
    let mut core = Core::new(loaded(1, |_| {}), t);
    reload(&mut core, 1, Ok(loaded(1, |_| {})), t);
    for client in [2, 3] {
        let fx = core.step(
            Event::Control {
                client: ClientId::for_test(client),
                ask: Ask::Reload,
            },
            t,
        );
        assert!(fx.is_empty(), "queued, not started");
    }
    // A HUP joins the queue too.
    assert!(core
        .step(
            Event::Signal {
                sig: Signal::SIGHUP,
                times: 1
            },
            t
        )
        .is_empty());
    let fx = tick(&mut core, &[member(20, 2, true)], t);
    assert_eq!(replies(&fx).len(), 1);
    let waiting: Vec<_> = fx
        .iter()
        .filter_map(|e| match e {
            Effect::LoadConfig { waiters, .. } => Some(waiters.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(
        waiting,
        vec![vec![ClientId::for_test(2), ClientId::for_test(3)]]
    );
}

#[test]
fn a_generation_that_cannot_boot_is_abandoned_and_the_previous_one_restored() {
    let t = Instant::now();
    let mut core = Core::new(loaded(2, |_| {}), t);
    reload(&mut core, 1, Ok(loaded(2, |_| {})), t);
    let old = [member(10, 1, true), member(11, 1, true)];
    let mut now = t;
    for i in 0..RELOAD_MAX_BOOT_FAILURES {
        let fx = tick(&mut core, &old, now);
        assert_eq!(spawns(&fx), 1, "attempt {i}");
        core.step(exited(20 + i as i32, 2, ExitReason::Crash, true), now);
        // Backed off: nothing starts until the delay has passed, and the
        // core asks to be woken then.
        let wake = core.next_deadline(now).expect("a deadline");
        assert!(wake > now);
        if i + 1 < RELOAD_MAX_BOOT_FAILURES {
            assert_eq!(spawns(&tick(&mut core, &old, wake - MS)), 0);
        }
        now = wake;
    }
    let fx = tick(&mut core, &old, now);
    assert_eq!(counted(&fx), Some(ReloadResult::Abandoned));
    assert!(has(&fx, |e| matches!(e, Effect::SetGeneration(1))));
    assert!(has(&fx, |e| matches!(e, Effect::CloseUnusedListeners)));
    let r = replies(&fx);
    assert!(
        !r[0].1 && r[0].2.contains("3 new workers failed to boot"),
        "{r:?}"
    );
    assert_eq!(core.current().generation, 1);
    assert!(drains(&fx).is_empty(), "the old workers keep serving");
    // The restored generation starts with no backoff.
    assert_eq!(core.next_deadline(now), None);
}

#[test]
fn boot_failures_back_off_doubling_and_a_settled_worker_ends_the_run() {
    let t = Instant::now();
    let mut core = Core::new(loaded(1, |_| {}), t);
    let mut delays = Vec::new();
    for pid in 1..=4 {
        core.step(exited(pid, 1, ExitReason::Crash, false), t);
        delays.push(core.next_deadline(t).expect("backed off") - t);
    }
    assert_eq!(delays, vec![100 * MS, 200 * MS, 400 * MS, 800 * MS]);
    // An exit that is not a failed start (a drained worker) adds nothing.
    core.step(exited(5, 1, ExitReason::Reload, false), t);
    assert_eq!(core.next_deadline(t).expect("backed off") - t, 800 * MS);
    // A worker of another generation settling ends nothing.
    core.step(Event::Settled { generation: 7 }, t);
    core.step(exited(6, 1, ExitReason::Crash, false), t);
    assert_eq!(core.next_deadline(t).expect("backed off") - t, 1600 * MS);
    core.step(Event::Settled { generation: 1 }, t);
    core.step(exited(7, 1, ExitReason::Crash, false), t);
    assert_eq!(core.next_deadline(t).expect("backed off") - t, 100 * MS);
    // A start that failed in the OS pauses spawning too.
    let later = t + Duration::from_secs(60);
    core.step(Event::SpawnFailed, later);
    assert_eq!(core.next_deadline(later), Some(later + 100 * MS));
}

#[test]
fn an_app_that_fails_its_startup_in_every_worker_ends_the_master_with_status_3() {
    let t = Instant::now();
    let mut core = Core::new(loaded(2, |_| {}), t);
    core.step(exited(10, 1, ExitReason::Crash, true), t);
    assert_eq!(exit(&tick(&mut core, &[member(11, 1, false)], t)), None);
    core.step(exited(11, 1, ExitReason::Crash, true), t);
    let fx = tick(&mut core, &[], t);
    assert_eq!(exit(&fx), Some(Exit::AppStartupFailed));
    assert!(has(&fx, |e| matches!(e, Effect::CloseListeners)));
    // A crash after the app imported (not in its startup) is not proof.
    let mut core = Core::new(loaded(1, |_| {}), t);
    core.step(exited(10, 1, ExitReason::Crash, false), t);
    assert_eq!(exit(&tick(&mut core, &[], t)), None);
}

#[test]
fn a_canary_runs_alone_and_a_failed_one_is_rolled_back() {
    let t = Instant::now();
    let mut core = Core::new(loaded(3, |_| {}), t);
    let canary = |c: &mut Config| c.lifecycle.canary = Duration::from_secs(10);
    reload(&mut core, 1, Ok(loaded(3, canary)), t);
    let old = [
        member(10, 1, true),
        member(11, 1, true),
        member(12, 1, true),
    ];
    // One new worker, not three.
    assert_eq!(spawns(&tick(&mut core, &old, t)), 1);
    let with_canary = [old[0], old[1], old[2], member(20, 2, true)];
    let fx = tick(&mut core, &with_canary, t);
    assert_eq!(spawns(&fx), 0);
    assert_eq!(drains(&fx).len(), 1, "it takes one old worker's place");
    let mut with_canary = with_canary;
    let taken = with_canary
        .iter_mut()
        .find(|m| m.pid.as_raw() == drains(&fx)[0].0)
        .expect("a drained worker");
    taken.leaving = true;
    taken.serving = false;
    let fx = core.step(
        Event::Tick(World {
            members: with_canary.to_vec(),
            canary_failed: Some("5xx share 40% against 0%".into()),
            ..World::default()
        }),
        t + Duration::from_secs(1),
    );
    assert_eq!(counted(&fx), Some(ReloadResult::RolledBack));
    assert_eq!(drains(&fx), vec![(20, ExitReason::Rollback)]);
    assert!(has(&fx, |e| matches!(e, Effect::SetGeneration(1))));
    let r = replies(&fx);
    assert!(
        r[0].2
            .contains("5xx share 40% against 0%; generation 1 keeps serving"),
        "{r:?}"
    );
    assert_eq!(core.current().generation, 1);
    // The next reload is generation 3: 2 may still be draining.
    reload(&mut core, 2, Ok(loaded(3, |_| {})), t);
    assert_eq!(core.current().generation, 3);
}

#[test]
fn an_app_command_canary_runs_beside_every_old_process() {
    let t = Instant::now();
    let exec = |c: &mut Config| {
        c.app.command = vec!["true".into()];
        c.lifecycle.canary = Duration::from_secs(10);
    };
    let mut core = Core::new(loaded(2, exec), t);
    reload(&mut core, 1, Ok(loaded(2, exec)), t);
    let mut old = [member(10, 1, true), member(11, 1, true)];
    for m in &mut old {
        m.exec = true;
    }
    let fx = tick(&mut core, &[old[0], old[1], member(20, 2, true)], t);
    assert!(drains(&fx).is_empty(), "{:?}", drains(&fx));
}

#[test]
fn a_worker_asking_to_retire_leaves_only_once_its_replacement_serves() {
    let t = Instant::now();
    let mut core = Core::new(loaded(2, |_| {}), t);
    let mut tired = member(10, 1, true);
    tired.retiring = Some(ExitReason::MaxRequests);
    tired.serving = false;
    let other = member(11, 1, true);
    let fx = tick(&mut core, &[tired, other], t);
    assert_eq!((spawns(&fx), drains(&fx)), (1, vec![]));
    let fx = tick(&mut core, &[tired, other, member(12, 1, false)], t);
    assert_eq!((spawns(&fx), drains(&fx)), (0, vec![]));
    let fx = tick(&mut core, &[tired, other, member(12, 1, true)], t);
    assert_eq!(drains(&fx), vec![(10, ExitReason::MaxRequests)]);
    assert_eq!(spawns(&fx), 0);
}

#[test]
fn ttin_and_ttou_scale_within_bounds_and_scale_down_drains() {
    let t = Instant::now();
    let mut core = Core::new(loaded(2, |_| {}), t);
    let sig = |sig, times| Event::Signal { sig, times };
    core.step(sig(Signal::SIGTTIN, 2), t);
    assert_eq!(core.current().desired, 4);
    let two = [member(10, 1, true), member(11, 1, true)];
    assert_eq!(spawns(&tick(&mut core, &two, t)), 2);
    core.step(sig(Signal::SIGTTOU, 10), t);
    assert_eq!(core.current().desired, 1, "never below one");
    assert_eq!(
        drains(&tick(&mut core, &two, t)),
        vec![(10, ExitReason::ScaleDown)]
    );
    let fx = core.step(
        Event::Control {
            client: ClientId::for_test(9),
            ask: Ask::Scale(3),
        },
        t,
    );
    assert_eq!(
        replies(&fx),
        vec![(ClientId::for_test(9), true, String::new())]
    );
    assert_eq!(core.current().desired, 3);
}

#[test]
fn term_closes_the_listeners_after_shutdown_delay_and_exits_when_the_last_worker_left() {
    let t = Instant::now();
    let delay = Duration::from_secs(2);
    let mut core = Core::new(loaded(2, |c| c.lifecycle.shutdown_delay = delay), t);
    let two = [member(10, 1, true), member(11, 1, true)];
    let fx = core.step(
        Event::Signal {
            sig: Signal::SIGTERM,
            times: 1,
        },
        t,
    );
    assert!(has(&fx, |e| matches!(e, Effect::NotifyStopping)));
    assert!(has(&fx, |e| matches!(e, Effect::SetStopping)));
    assert_eq!(core.next_deadline(t), Some(t + delay));
    // Until then the workers serve (and /ready says 503).
    let fx = tick(&mut core, &two, t + delay - MS);
    assert!(fx.is_empty(), "nothing before shutdown_delay");
    let fx = tick(&mut core, &two, t + delay);
    assert!(has(&fx, |e| matches!(e, Effect::CloseListeners)));
    assert!(has(&fx, |e| matches!(
        e,
        Effect::DrainAll(ExitReason::Shutdown)
    )));
    assert_eq!(spawns(&fx), 0);
    // A reload now is refused, and says why.
    let fx = core.step(
        Event::Control {
            client: ClientId::for_test(3),
            ask: Ask::Reload,
        },
        t + delay,
    );
    assert_eq!(
        replies(&fx),
        vec![(
            ClientId::for_test(3),
            false,
            "stopping; not reloading".into()
        )]
    );
    assert_eq!(exit(&tick(&mut core, &[two[1]], t + delay)), None);
    let fx = core.step(
        Event::Tick(World {
            members: Vec::new(),
            strays: true,
            ..World::default()
        }),
        t + delay,
    );
    assert_eq!(exit(&fx), None, "a stray is still being stopped");
    assert_eq!(exit(&tick(&mut core, &[], t + delay)), Some(Exit::Ok));
}

#[test]
fn int_during_a_reload_stops_now_and_its_client_hears_why() {
    let t = Instant::now();
    let mut core = Core::new(loaded(1, |_| {}), t);
    reload(&mut core, 1, Ok(loaded(1, |_| {})), t);
    let fx = core.step(
        Event::Signal {
            sig: Signal::SIGINT,
            times: 1,
        },
        t,
    );
    assert_eq!(
        replies(&fx),
        vec![(
            ClientId::for_test(1),
            false,
            "reload interrupted: stopping".into()
        )]
    );
    assert!(has(&fx, |e| matches!(e, Effect::CloseListeners)));
    assert!(has(&fx, |e| matches!(e, Effect::QuickStopAll)));
    // Stopping and nothing left: exit at once.
    assert_eq!(exit(&tick(&mut core, &[], t)), Some(Exit::Ok));
    // A second INT changes nothing.
    assert!(core
        .step(
            Event::Signal {
                sig: Signal::SIGQUIT,
                times: 1
            },
            t
        )
        .is_empty());
}

fn started(core: &mut Core, now: Instant) -> Vec<Effect> {
    core.step(
        Event::UpgradeStarted {
            pid: Pid::from_raw(i32::MAX - 9),
            deadline: now + Duration::from_secs(30),
        },
        now,
    )
}

fn usr2() -> Event<'static> {
    Event::Signal {
        sig: Signal::SIGUSR2,
        times: 1,
    }
}

#[test]
fn usr2_is_admitted_only_while_running_and_a_failed_upgrade_runs_the_queued_reload() {
    let t = Instant::now();
    let mut core = Core::new(loaded(1, |_| {}), t);
    assert!(has(&core.step(usr2(), t), |e| matches!(
        e,
        Effect::StartUpgrade
    )));
    started(&mut core, t);
    assert_eq!(core.next_deadline(t), Some(t + Duration::from_secs(30)));
    assert!(core.step(usr2(), t).is_empty());
    // A reload waits for the upgrade.
    let fx = core.step(
        Event::Control {
            client: ClientId::for_test(1),
            ask: Ask::Reload,
        },
        t,
    );
    assert!(fx.is_empty());
    let fx = core.step(
        Event::UpgradeExited {
            ended: Ended::Code(2),
        },
        t,
    );
    assert!(has(&fx, |e| matches!(
        e,
        Effect::UpgradeOver { ready: false, .. }
    )));
    let said = core.last_upgrade().expect("a result");
    assert!(!said.ok);
    assert!(
        said.message.contains("the new master exited (exit code 2"),
        "{}",
        said.message
    );
    assert!(has(&fx, |e| matches!(e, Effect::LoadConfig { waiters, .. }
        if waiters == &[ClientId::for_test(1)])));
    assert!(matches!(core.lifecycle(), Lifecycle::Running));
}

#[test]
fn a_new_master_that_stays_silent_past_its_deadline_or_closes_its_pipe_fails() {
    let t = Instant::now();
    let mut core = Core::new(loaded(1, |_| {}), t);
    started(&mut core, t);
    // Half a word, then nothing: still waiting until the deadline.
    let fx = core.step(
        Event::UpgradeSaid {
            bytes: b"rea".to_vec(),
            closed: false,
        },
        t,
    );
    assert!(fx.is_empty());
    let fx = tick(
        &mut core,
        &[member(10, 1, true)],
        t + Duration::from_secs(29),
    );
    assert!(!has(&fx, |e| matches!(e, Effect::UpgradeOver { .. })));
    assert!(matches!(core.lifecycle(), Lifecycle::Upgrading(_)));
    let fx = tick(
        &mut core,
        &[member(10, 1, true)],
        t + Duration::from_secs(30),
    );
    assert!(has(&fx, |e| matches!(
        e,
        Effect::UpgradeOver { ready: false, .. }
    )));
    assert!(core
        .last_upgrade()
        .is_some_and(|r| r.message.contains("not ready within lifecycle.timeout")));
    // A pipe closed before "ready" fails at once.
    started(&mut core, t);
    let fx = core.step(
        Event::UpgradeSaid {
            bytes: Vec::new(),
            closed: true,
        },
        t,
    );
    assert!(has(&fx, |e| matches!(
        e,
        Effect::UpgradeOver { ready: false, .. }
    )));
    assert!(core
        .last_upgrade()
        .is_some_and(|r| r.message.contains("closed its pipe")));
}

#[test]
fn a_ready_new_master_takes_over_and_this_one_drains_without_telling_systemd() {
    let t = Instant::now();
    let mut core = Core::new(loaded(1, |_| {}), t);
    started(&mut core, t);
    let fx = core.step(
        Event::UpgradeSaid {
            bytes: b"ready\n".to_vec(),
            closed: false,
        },
        t,
    );
    assert!(has(&fx, |e| matches!(
        e,
        Effect::UpgradeOver { ready: true, .. }
    )));
    assert!(has(&fx, |e| matches!(e, Effect::SetStopping)));
    assert!(!has(&fx, |e| matches!(e, Effect::NotifyStopping)));
    assert!(core.lifecycle().handed_over());
    assert!(core.last_upgrade().is_some_and(|r| r.ok));
    // A TERM or INT afterwards does not speak for the new master either.
    let fx = core.step(
        Event::Signal {
            sig: Signal::SIGINT,
            times: 1,
        },
        t,
    );
    assert!(!has(&fx, |e| matches!(e, Effect::NotifyStopping)));
}

#[test]
fn a_master_taking_over_from_an_upgrade_starts_none_until_its_fleet_is_ready() {
    let t = Instant::now();
    let mut core = Core::new(loaded(1, |_| {}), t).taking_over();
    assert!(core.step(usr2(), t).is_empty());
    let fx = tick(&mut core, &[member(10, 1, true)], t);
    assert!(has(&fx, |e| matches!(e, Effect::InitialReady)));
    assert!(has(&core.step(usr2(), t), |e| matches!(
        e,
        Effect::StartUpgrade
    )));
}

#[test]
fn a_stop_during_an_upgrade_kills_the_new_master() {
    let t = Instant::now();
    let mut core = Core::new(loaded(1, |_| {}), t);
    started(&mut core, t);
    let fx = core.step(
        Event::Signal {
            sig: Signal::SIGTERM,
            times: 1,
        },
        t,
    );
    assert!(has(
        &fx,
        |e| matches!(e, Effect::KillUpgrade(p) if p.as_raw() == i32::MAX - 9)
    ));
}

fn inspected(fx: &[Effect]) -> Vec<(i32, Hung)> {
    pick(fx, |e| match e {
        Effect::Inspect { pid, hung } => Some((pid.as_raw(), *hung)),
        _ => None,
    })
}

#[test]
fn a_silent_or_late_worker_is_dumped_and_replaced_in_the_same_tick() {
    let t = Instant::now();
    let mut core = Core::new(loaded(3, |_| {}), t);
    let mut blocked = member(10, 1, true);
    blocked.silent = Some(Duration::from_secs(31));
    let mut slow_but_beating = member(11, 1, true);
    slow_but_beating.silent = Some(Duration::from_secs(29));
    let mut never_ready = member(12, 1, false);
    never_ready.since_spawn = Duration::from_secs(31);
    let fx = tick(&mut core, &[blocked, slow_but_beating, never_ready], t);
    assert_eq!(
        inspected(&fx),
        vec![(10, Hung::Heartbeat), (12, Hung::Boot)]
    );
    assert_eq!(spawns(&fx), 2, "both are replaced at once");
    // Already leaving (being dumped): not judged again.
    blocked.leaving = true;
    blocked.serving = false;
    let fx = tick(&mut core, &[blocked, slow_but_beating], t);
    assert!(inspected(&fx).is_empty());
}

#[test]
fn a_worker_without_a_heartbeat_is_never_silent_but_an_unanswered_request_counts() {
    let t = Instant::now();
    let mut core = Core::new(loaded(2, |_| {}), t);
    // An exec worker that never sent WATCHDOG=1: nothing to be late with.
    let mut quiet = member(10, 1, true);
    quiet.exec = true;
    quiet.silent = None;
    quiet.since_spawn = Duration::from_secs(3600);
    let mut stuck = member(11, 1, true);
    stuck.exec = true;
    stuck.silent = None;
    stuck.stalled = true;
    let fx = tick(&mut core, &[quiet, stuck], t);
    assert_eq!(inspected(&fx), vec![(11, Hung::Stalled)]);
    // Each is judged by its own generation's timeout.
    let mut patient = member(12, 1, true);
    patient.silent = Some(Duration::from_secs(45));
    patient.timeout = Duration::from_secs(60);
    assert!(inspected(&tick(&mut core, &[quiet, patient], t)).is_empty());
}

fn usage(pid: i32, rss: u64) -> Usage {
    Usage {
        pid: Pid::from_raw(pid),
        serving: true,
        rss,
        limit: Some(100),
        lifetime_over: false,
        lived: Duration::from_secs(60),
    }
}

fn retired(fx: &[Effect]) -> Vec<(i32, ExitReason)> {
    pick(fx, |e| match e {
        Effect::Retire { pid, reason } => Some((pid.as_raw(), *reason)),
        _ => None,
    })
}

#[test]
fn memory_above_the_limit_twice_in_a_row_or_a_long_life_retires_a_worker() {
    let t = Instant::now();
    let mut core = Core::new(loaded(2, |_| {}), t);
    let measured = |core: &mut Core, u: &[Usage]| core.step(Event::Measured(u), t);
    // One high reading may be a burst: not yet.
    assert!(retired(&measured(&mut core, &[usage(10, 150), usage(11, 50)])).is_empty());
    // Back under the limit: the count starts again.
    assert!(retired(&measured(&mut core, &[usage(10, 90)])).is_empty());
    assert!(retired(&measured(&mut core, &[usage(10, 150)])).is_empty());
    assert_eq!(
        retired(&measured(&mut core, &[usage(10, 150)])),
        vec![(10, ExitReason::Memory)]
    );
    let mut old = usage(11, 50);
    old.lifetime_over = true;
    assert_eq!(
        retired(&measured(&mut core, &[old])),
        vec![(11, ExitReason::Lifetime)]
    );
    // Booting or leaving workers are not retired; no limit, no strikes.
    let mut booting = usage(12, 500);
    booting.serving = false;
    booting.lifetime_over = true;
    let mut unlimited = usage(13, u64::MAX);
    unlimited.limit = None;
    for _ in 0..3 {
        assert!(retired(&measured(&mut core, &[booting, unlimited])).is_empty());
    }
}

#[test]
fn only_unready_workers_of_the_current_generation_fail_to_boot() {
    assert!(boot_failure(false, true, ExitReason::Crash));
    assert!(boot_failure(false, true, ExitReason::Timeout));
    assert!(!boot_failure(true, true, ExitReason::Crash));
    assert!(!boot_failure(false, false, ExitReason::Crash));
    assert!(!boot_failure(false, true, ExitReason::Reload));
    assert!(!boot_failure(false, true, ExitReason::ScaleDown));
}
