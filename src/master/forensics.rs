//! Hang forensics: before a worker that stopped beating is aborted (and on
//! request, `rsvisor dump`), the master learns what it was doing.
//!
//! 1. Capture: each thread of the worker (up to
//!    [`MAX_DUMP_THREADS`](crate::shm::inflight::MAX_DUMP_THREADS), the one that
//!    ran the heartbeat last first) gets the dump signal; its handler
//!    writes raw return addresses into the slot's dump area. The master
//!    does not wait: it polls the area every [`DUMP_POLL`] and gives up
//!    after [`DUMP_TIMEOUT`] (a stopped or wedged worker answers nothing).
//!    Meanwhile it reads what needs nothing from the worker: the in-flight
//!    table, RSS, open descriptors, connections, time since the heartbeat.
//! 2. The worker is aborted at once (SIGABRT, SIGKILL [`ABORT_GRACE`]
//!    later), whether or not it answered.
//! 3. Symbolize: a helper forked from the master (same binary, same
//!    layout) resolves the addresses and writes the text to a memfd; the
//!    master reads it when the helper exits, or after
//!    [`SYMBOLIZE_TIMEOUT`] kills it. The master itself never loads debug
//!    information.
//! 4. One structured log event, and the report under the worker's exit in
//!    `rsvisor status` (or the answer to `rsvisor dump`).
//!
//! [`ABORT_GRACE`]: super::worker_handle::ABORT_GRACE

use std::collections::VecDeque;
use std::ffi::OsStr;
use std::fs::File;
use std::io::{Read, Seek, Write};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tracing::{error, info, warn};

use super::control_socket::ClientId;
use super::python_stacks::{self, Method, PY_SPY_TIMEOUT};
use super::worker_handle::ABORT_GRACE;
use super::Fleet;
use crate::os::{self, Fork};
use crate::proto::control::{ExitReport, Forensics, InFlightRequest, Response, ThreadDump};
use crate::shm::inflight::{CapturedThread, MAX_DUMP_THREADS};

/// Longest the master waits for a worker's threads to record their stacks.
pub const DUMP_TIMEOUT: Duration = Duration::from_secs(1);
/// How often the dump area is looked at while threads answer.
pub const DUMP_POLL: Duration = Duration::from_millis(5);
/// Longest the helper may take to symbolize; then raw addresses are shown.
pub const SYMBOLIZE_TIMEOUT: Duration = Duration::from_secs(10);
/// Exits `rsvisor status` remembers.
pub const RECENT_EXITS: usize = 8;
/// How the dump signal handler is named in a symbolized stack.
const HANDLER_NAME: &str = "rsvisor::os::stacks::on_dump_signal";
/// Most symbolized text read back from the helper.
const MAX_SYMBOLIZED_BYTES: u64 = 512 * 1024;

/// Why a dump is taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    /// Serving, but its heartbeat stopped for `lifecycle.timeout`.
    Heartbeat,
    /// Not ready within `lifecycle.timeout` of its fork.
    Boot,
    /// `rsvisor dump`: the worker is not stopped.
    Request,
    /// Proxy mode: a request to the app process got no answer within
    /// `lifecycle.timeout`.
    Stalled,
}

impl Trigger {
    fn as_str(self) -> &'static str {
        match self {
            Trigger::Heartbeat => "heartbeat",
            Trigger::Boot => "boot",
            Trigger::Request => "request",
            Trigger::Stalled => "stalled",
        }
    }

    /// The worker is aborted once its stacks are in.
    fn aborts(self) -> bool {
        self != Trigger::Request
    }
}

/// One dump in progress.
struct Job {
    pid: Pid,
    slot: usize,
    trigger: Trigger,
    waiters: Vec<ClientId>,
    started: Instant,
    request: u64,
    /// Threads signalled: (tid, name).
    sent: Vec<(u32, String)>,
    heartbeat_tid: u32,
    /// Threads left out, and why.
    notes: Vec<String>,
    step: Step,
}

enum Step {
    Capturing {
        deadline: Instant,
    },
    /// An `app.command` worker: `py-spy dump` runs.
    Spying {
        helper: Pid,
        out: File,
        deadline: Instant,
        exited: bool,
        report: Box<Forensics>,
    },
    /// An `app.command` worker was sent SIGABRT: what it writes until it
    /// exits (handed over when it is reaped) is its faulthandler's stacks.
    Listening {
        deadline: Instant,
        report: Box<Forensics>,
        lines: Option<Vec<String>>,
    },
    Symbolizing {
        helper: Pid,
        out: File,
        deadline: Instant,
        exited: bool,
        report: Box<Forensics>,
        captured: Vec<CapturedThread>,
    },
}

/// The dumps in progress and what was learnt about workers that left.
#[derive(Default)]
pub struct Inspections {
    jobs: Vec<Job>,
    recent_exits: VecDeque<(Instant, ExitReport)>,
    /// Reports whose worker has not been reaped yet.
    unclaimed: Vec<Forensics>,
}

impl Inspections {
    /// When the loop must look again.
    pub fn next_deadline(&self, now: Instant) -> Option<Instant> {
        self.jobs
            .iter()
            .map(|j| match &j.step {
                Step::Capturing { .. } => now + DUMP_POLL,
                Step::Symbolizing { deadline, .. }
                | Step::Spying { deadline, .. }
                | Step::Listening { deadline, .. } => *deadline,
            })
            .min()
    }

    /// Whether `pid` is a helper (symbolizer, py-spy) the master started.
    pub fn is_helper(&self, pid: Pid) -> bool {
        self.jobs.iter().any(|j| match &j.step {
            Step::Symbolizing { helper, .. } | Step::Spying { helper, .. } => *helper == pid,
            _ => false,
        })
    }

    /// A child was reaped: true if it was a helper.
    pub fn helper_exited(&mut self, pid: Pid) -> bool {
        for j in &mut self.jobs {
            if let Step::Symbolizing { helper, exited, .. } | Step::Spying { helper, exited, .. } =
                &mut j.step
            {
                if *helper == pid {
                    *exited = true;
                    return true;
                }
            }
        }
        false
    }

    /// An `app.command` worker was reaped: the output it left, if its
    /// stacks were being listened for.
    pub fn program_output(&mut self, pid: Pid, output: Vec<String>) {
        for j in &mut self.jobs {
            if let (true, Step::Listening { lines, .. }) = (j.pid == pid, &mut j.step) {
                *lines = Some(output);
                return;
            }
        }
    }

    /// A worker was reaped: remembered, with its forensics if there are.
    pub fn worker_exited(&mut self, mut report: ExitReport) {
        if let Some(i) = self.unclaimed.iter().position(|f| f.pid == report.pid) {
            report.forensics = Some(self.unclaimed.remove(i));
        }
        self.recent_exits.push_front((Instant::now(), report));
        self.recent_exits.truncate(RECENT_EXITS);
    }

    pub fn recent_exits(&self) -> Vec<ExitReport> {
        self.recent_exits
            .iter()
            .map(|(at, r)| ExitReport {
                seconds_ago: at.elapsed().as_secs_f64(),
                ..r.clone()
            })
            .collect()
    }

    /// A finished report: under its worker's exit if it was reaped
    /// already, kept for it otherwise (a requested dump of a live worker is
    /// not kept).
    fn file(&mut self, f: Forensics, trigger: Trigger) {
        let pid = f.pid;
        if let Some((_, r)) = self.recent_exits.iter_mut().find(|(_, r)| r.pid == pid) {
            r.forensics = Some(f);
        } else if trigger.aborts() {
            self.unclaimed.push(f);
            // Bounded: a report whose worker is never reaped is dropped.
            if self.unclaimed.len() > RECENT_EXITS {
                self.unclaimed.remove(0);
            }
        }
    }
}

impl Fleet {
    /// `rsvisor dump SLOT`: the stacks and requests in flight of one
    /// worker, answered when the dump is done; an error now if no worker
    /// is in that slot.
    pub(super) fn dump(&mut self, client: ClientId, slot: usize) -> Result<(), NoWorker> {
        let worker = self
            .workers
            .iter()
            .position(|w| w.slot == slot && !w.leaving())
            .ok_or(NoWorker(slot))?;
        self.inspect(worker, Trigger::Request, Some(client));
        Ok(())
    }

    /// Starts a dump of `self.workers[index]`; a heartbeat or boot trigger
    /// also aborts it (once its stacks are in, or after [`DUMP_TIMEOUT`]).
    pub(super) fn inspect(&mut self, index: usize, trigger: Trigger, waiter: Option<ClientId>) {
        let now = Instant::now();
        let Some(w) = self.workers.get_mut(index) else {
            return;
        };
        let pid = w.pid;
        if let Some(job) = self.inspections.jobs.iter_mut().find(|j| j.pid == pid) {
            // Already being dumped (on request): it now ends in an abort.
            job.waiters.extend(waiter);
            if trigger.aborts() && !job.trigger.aborts() {
                job.trigger = trigger;
                let at = match &job.step {
                    Step::Spying { deadline, .. } => *deadline,
                    _ => now + DUMP_TIMEOUT,
                };
                w.abort_after(at);
            }
            return;
        }
        if w.exec.is_some() {
            // Another program: it has no dump handler (the signal would
            // kill it) and no in-flight table.
            return self.inspect_program(index, trigger, waiter.into_iter().collect(), now);
        }
        if trigger.aborts() {
            w.abort_after(now + DUMP_TIMEOUT);
        }
        let slot = w.slot;
        let area = &self.board.dumps[slot];
        let request = area.begin();
        let heartbeat_tid = self.board.slot(slot).heartbeat_tid();
        let signal = os::dump_signal();
        let mut threads = crate::os::procfs::threads(pid.as_raw(), signal);
        // The heartbeat's thread, then the main thread, then the rest.
        threads.sort_by_key(|t| (t.tid as u32 != heartbeat_tid, t.tid != pid.as_raw(), t.tid));
        let mut sent = Vec::new();
        let mut notes = Vec::new();
        for t in threads {
            if t.blocks {
                notes.push(format!(
                    "thread {} {:?} blocks the dump signal",
                    t.tid, t.name
                ));
            } else if sent.len() >= MAX_DUMP_THREADS {
                notes.push(format!("thread {} {:?} not dumped (limit)", t.tid, t.name));
            } else if os::tgkill(pid.as_raw(), t.tid, signal).is_ok() {
                sent.push((t.tid as u32, t.name));
            }
        }
        self.inspections.jobs.push(Job {
            pid,
            slot,
            trigger,
            waiters: waiter.into_iter().collect(),
            started: now,
            request,
            sent,
            heartbeat_tid,
            notes,
            step: Step::Capturing {
                deadline: now + DUMP_TIMEOUT,
            },
        });
    }

    /// Loop step: collects stacks, starts symbolizing, finishes reports.
    pub(super) fn progress_inspections(&mut self) {
        let now = Instant::now();
        let mut i = 0;
        while i < self.inspections.jobs.len() {
            let job = &self.inspections.jobs[i];
            let gone = !self.workers.iter().any(|w| w.pid == job.pid);
            let done = match &job.step {
                Step::Capturing { deadline } => {
                    let answered = self.board.dumps[job.slot].answers(job.request).len();
                    answered >= job.sent.len() || now >= *deadline || gone
                }
                Step::Symbolizing {
                    exited, deadline, ..
                }
                | Step::Spying {
                    exited, deadline, ..
                } => *exited || now >= *deadline,
                Step::Listening {
                    deadline, lines, ..
                } => lines.is_some() || gone || now >= *deadline,
            };
            if !done {
                i += 1;
                continue;
            }
            let job = self.inspections.jobs.remove(i);
            match job.step {
                Step::Capturing { .. } => self.captured(job, now),
                Step::Symbolizing { .. } => self.symbolized(job),
                Step::Spying { .. } => self.spied(job, now),
                Step::Listening { .. } => self.listened(job),
            }
        }
    }

    /// The stacks are in (or will not come): the worker is aborted, the
    /// helper started.
    fn captured(&mut self, job: Job, now: Instant) {
        let captured = self.board.dumps[job.slot].answers(job.request);
        let mut report = self.facts(job.pid, job.slot, job.trigger, job.started, now);
        report.capture_ms = now.duration_since(job.started).as_millis() as u64;
        if captured.len() < job.sent.len() {
            let state = crate::os::procfs::state(job.pid.as_raw());
            report.dump_error = Some(format!(
                "dump not obtained from {} of {} threads within {} ms (process state {})",
                job.sent.len() - captured.len(),
                job.sent.len(),
                DUMP_TIMEOUT.as_millis(),
                describe_state(state)
            ));
        }
        if job.trigger.aborts() {
            if let Some(w) = self.workers.iter_mut().find(|w| w.pid == job.pid) {
                w.abort_now();
            }
        }
        if captured.is_empty() {
            let text = threads_text(&[], &job.notes);
            return self.finish(report, job.trigger, job.waiters, &text);
        }
        match spawn_symbolizer(&captured) {
            Ok((helper, out)) => self.inspections.jobs.push(Job {
                step: Step::Symbolizing {
                    helper,
                    out,
                    deadline: now + SYMBOLIZE_TIMEOUT,
                    exited: false,
                    report: Box::new(report),
                    captured,
                },
                ..job
            }),
            Err(e) => {
                warn!(error = %e, "cannot start the symbolizer; showing raw addresses");
                let threads = raw_threads(&captured, &job.sent, job.heartbeat_tid);
                report.threads = threads;
                report.stacks = Some(Method::SignalHandler.as_str().into());
                let text = threads_text(&report.threads, &job.notes);
                self.finish(report, job.trigger, job.waiters, &text);
            }
        }
    }

    /// The helper is done (or late, and killed): the report is complete.
    fn symbolized(&mut self, job: Job) {
        let Step::Symbolizing {
            helper,
            mut out,
            exited,
            mut report,
            captured,
            ..
        } = job.step
        else {
            return;
        };
        if !exited {
            // Reaped by the reap step like any other child.
            let _ = kill(helper, Signal::SIGKILL);
        }
        let mut text = String::new();
        let read = out.rewind().and_then(|_| {
            (&mut out)
                .take(MAX_SYMBOLIZED_BYTES)
                .read_to_string(&mut text)
        });
        let mut threads = if exited && read.is_ok() {
            parse_symbolized(&text)
        } else {
            Vec::new()
        };
        if threads.len() != captured.len() {
            threads = raw_threads(&captured, &job.sent, job.heartbeat_tid);
            let why = "symbolization failed or timed out: raw addresses";
            report.dump_error = Some(match report.dump_error.take() {
                Some(e) => format!("{e}; {why}"),
                None => why.into(),
            });
        } else {
            for t in &mut threads {
                t.name = name_of(&job.sent, t.tid);
                t.heartbeat = t.tid == job.heartbeat_tid;
            }
        }
        // In the order they were signalled: the heartbeat's thread first.
        threads.sort_by_key(|t| job.sent.iter().position(|(tid, _)| *tid == t.tid));
        report.threads = threads;
        report.stacks = Some(Method::SignalHandler.as_str().into());
        let text = threads_text(&report.threads, &job.notes);
        self.finish(*report, job.trigger, job.waiters, &text);
    }

    /// What can be read without the worker's help.
    fn facts(
        &self,
        pid: Pid,
        slot_index: usize,
        trigger: Trigger,
        started: Instant,
        now: Instant,
    ) -> Forensics {
        let slot = self.board.slot(slot_index);
        let now_ms = os::monotonic_ms();
        let (requests, not_shown) = self.board.in_flight[slot_index].snapshot();
        let stats = crate::os::procfs::stats(pid.as_raw());
        Forensics {
            pid: pid.as_raw() as u32,
            slot: slot_index,
            trigger: trigger.as_str().into(),
            silent_ms: slot.heartbeat_age_ms(now_ms),
            rss_bytes: stats.as_ref().map_or(0, |s| s.rss_bytes),
            open_fds: stats.as_ref().map_or(0, |s| s.open_fds),
            active_connections: slot.active_connections(),
            in_flight: requests
                .into_iter()
                .map(|r| InFlightRequest {
                    method: r.method,
                    path: r.path,
                    running_ms: now_ms.saturating_sub(r.start_ms),
                    peer: r.peer.to_string(),
                })
                .collect(),
            in_flight_not_shown: not_shown,
            threads: Vec::new(),
            stacks: None,
            dump_error: None,
            capture_ms: 0,
            total_ms: now.duration_since(started).as_millis() as u64,
        }
    }

    /// An `app.command` worker: py-spy from the outside if it is
    /// installed; if the worker is aborted, what its faulthandler prints
    /// after the SIGABRT.
    fn inspect_program(
        &mut self,
        index: usize,
        trigger: Trigger,
        waiters: Vec<ClientId>,
        now: Instant,
    ) {
        let Some(w) = self.workers.get(index) else {
            return;
        };
        let (pid, slot) = (w.pid, w.slot);
        let app = &w.config.app;
        let path = app.env.get("PATH").map(OsStr::new);
        let py_spy = python_stacks::find_py_spy(&app.command, app.cwd.as_deref(), path);
        let mut report = self.facts(pid, slot, trigger, now, now);
        if !w.has_heartbeat() {
            // It never sent WATCHDOG=1: there is no heartbeat to be late.
            report.silent_ms = 0;
        }
        let mut job = Job {
            pid,
            slot,
            trigger,
            waiters,
            started: now,
            request: 0,
            sent: Vec::new(),
            heartbeat_tid: 0,
            notes: Vec::new(),
            step: Step::Capturing { deadline: now },
        };
        let spying = match &py_spy {
            Some(p) => python_stacks::spawn_py_spy(p, pid.as_raw())
                .map_err(|e| format!("cannot run {}: {e}", p.display())),
            None => Err(
                "py-spy is not installed (pip install py-spy in the app's environment \
                         gives Python stacks of a live worker)"
                    .into(),
            ),
        };
        match spying {
            Ok((helper, out)) => {
                if trigger.aborts() {
                    if let Some(w) = self.workers.get_mut(index) {
                        w.abort_after(now + PY_SPY_TIMEOUT);
                    }
                }
                job.step = Step::Spying {
                    helper,
                    out,
                    deadline: now + PY_SPY_TIMEOUT,
                    exited: false,
                    report: Box::new(report),
                };
                self.inspections.jobs.push(job);
            }
            Err(why) if trigger.aborts() => {
                job.notes.push(why);
                if let Some(w) = self.workers.get_mut(index) {
                    w.abort();
                }
                self.listen(job, report, now);
            }
            Err(why) => {
                report.dump_error = Some(why);
                self.finish(report, trigger, job.waiters, "");
            }
        }
    }

    /// py-spy is done (or late, and killed): its stacks are in the report;
    /// a worker that is aborted gets its SIGABRT now.
    fn spied(&mut self, mut job: Job, now: Instant) {
        let step = std::mem::replace(&mut job.step, Step::Capturing { deadline: now });
        let Step::Spying {
            helper,
            out,
            exited,
            mut report,
            ..
        } = step
        else {
            return;
        };
        if !exited {
            // Reaped by the reap step like any other child.
            let _ = kill(helper, Signal::SIGKILL);
        }
        let text = python_stacks::read_output(out);
        let threads = python_stacks::parse_py_spy(&text);
        report.capture_ms = now.duration_since(job.started).as_millis() as u64;
        if threads.is_empty() {
            let said = text.lines().find(|l| !l.trim().is_empty());
            job.notes.push(match (exited, said) {
                (false, _) => format!(
                    "py-spy dump did not finish within {} ms",
                    PY_SPY_TIMEOUT.as_millis()
                ),
                (true, Some(line)) => format!("py-spy dump: {}", line.trim()),
                (true, None) => "py-spy dump printed nothing".into(),
            });
        } else {
            report.threads = threads;
            report.stacks = Some(Method::PySpy.as_str().into());
        }
        let worker = self.workers.iter_mut().find(|w| w.pid == job.pid);
        match worker {
            Some(w) if job.trigger.aborts() => {
                w.abort_now();
                self.listen(job, *report, now);
            }
            _ => self.conclude_program(job, *report, Vec::new()),
        }
    }

    /// The worker was sent SIGABRT: its output is kept for the report
    /// until it exits, or until it is killed.
    fn listen(&mut self, job: Job, report: Forensics, now: Instant) {
        if let Some(io) = self
            .workers
            .iter_mut()
            .find(|w| w.pid == job.pid)
            .and_then(|w| w.exec.as_mut())
        {
            io.start_capture();
        }
        self.inspections.jobs.push(Job {
            step: Step::Listening {
                deadline: now + ABORT_GRACE + super::MASTER_TICK,
                report: Box::new(report),
                lines: None,
            },
            ..job
        });
    }

    /// The aborted worker exited (or is about to be killed): what it wrote.
    fn listened(&mut self, mut job: Job) {
        let step = std::mem::replace(
            &mut job.step,
            Step::Capturing {
                deadline: job.started,
            },
        );
        let Step::Listening { report, lines, .. } = step else {
            return;
        };
        let lines = lines.unwrap_or_else(|| {
            self.workers
                .iter_mut()
                .find(|w| w.pid == job.pid)
                .and_then(|w| w.exec.as_mut())
                .map(|io| io.take_capture())
                .unwrap_or_default()
        });
        self.conclude_program(job, *report, lines);
    }

    /// An `app.command` worker's report: py-spy's stacks, else those its
    /// faulthandler printed, else why there are none.
    fn conclude_program(&mut self, job: Job, mut report: Forensics, output: Vec<String>) {
        if report.threads.is_empty() {
            let threads = python_stacks::parse_faulthandler(&output);
            if threads.is_empty() {
                let mut why = job.notes.join("; ");
                if job.trigger.aborts() {
                    why += "; the program printed no Python stacks after SIGABRT (not Python, \
                            PYTHONFAULTHANDLER turned off, or its own SIGABRT handler)";
                }
                report.dump_error = Some(why.trim_start_matches("; ").to_string());
            } else {
                report.threads = threads;
                report.stacks = Some(Method::Faulthandler.as_str().into());
            }
        }
        let text = threads_text(&report.threads, &job.notes);
        self.finish(report, job.trigger, job.waiters, &text);
    }

    /// Logs the report once, answers who asked, and keeps it.
    fn finish(&mut self, mut f: Forensics, trigger: Trigger, waiters: Vec<ClientId>, text: &str) {
        f.total_ms = f.total_ms.max(f.capture_ms);
        let requests = in_flight_text(&f);
        let dump = f.dump_error.as_deref().unwrap_or("obtained");
        let summary = f
            .in_flight
            .first()
            .map(|r| format!("{} {} running for {} ms", r.method, r.path, r.running_ms))
            .unwrap_or_else(|| "no request in flight".into());
        macro_rules! event {
            ($level:ident, $msg:literal) => {
                $level!(
                    pid = f.pid,
                    slot = f.slot,
                    trigger = %f.trigger,
                    silent_ms = f.silent_ms,
                    rss_bytes = f.rss_bytes,
                    open_fds = f.open_fds,
                    active_connections = f.active_connections,
                    in_flight = %requests,
                    dump = %dump,
                    stacks = f.stacks.as_deref().unwrap_or("none"),
                    capture_ms = f.capture_ms,
                    bytes = text.len(),
                    backtrace = %text,
                    "{}: {summary}",
                    $msg
                )
            };
        }
        if trigger.aborts() {
            event!(error, "worker forensics before abort");
        } else {
            event!(info, "worker stack dump");
        }
        let resp = Response {
            forensics: Some(f.clone()),
            ..Response::message(format!("dump of worker {}", f.pid))
        };
        for w in waiters {
            self.replies.push((w, resp.clone()));
        }
        self.inspections.file(f, trigger);
    }
}

/// `rsvisor dump SLOT` named a slot without a worker that stays.
#[derive(Debug, thiserror::Error)]
#[error("no worker in slot {0} (rsvisor status lists them)")]
pub struct NoWorker(usize);

/// What `/proc` says the process is doing, for "dump not obtained".
fn describe_state(state: Option<char>) -> String {
    match state {
        Some('T') | Some('t') => "T: stopped".into(),
        Some('D') => "D: uninterruptible sleep (waiting on I/O or the kernel)".into(),
        Some('Z') => "Z: exited".into(),
        Some(c) => c.to_string(),
        None => "gone".into(),
    }
}

fn name_of(sent: &[(u32, String)], tid: u32) -> String {
    sent.iter()
        .find(|(t, _)| *t == tid)
        .map(|(_, n)| n.clone())
        .unwrap_or_default()
}

/// Stacks as addresses, when they could not be symbolized.
fn raw_threads(
    captured: &[CapturedThread],
    sent: &[(u32, String)],
    heartbeat_tid: u32,
) -> Vec<ThreadDump> {
    captured
        .iter()
        .map(|t| ThreadDump {
            tid: t.tid,
            name: name_of(sent, t.tid),
            heartbeat: t.tid == heartbeat_tid,
            frames: t.frames.iter().map(|ip| format!("{ip:#x}")).collect(),
        })
        .collect()
}

/// The stacks as the log shows them.
fn threads_text(threads: &[ThreadDump], notes: &[String]) -> String {
    let mut o = String::new();
    for t in threads {
        let mark = if t.heartbeat {
            " (ran the heartbeat last)"
        } else {
            ""
        };
        o += &format!("thread {} {:?}{mark}:\n", t.tid, t.name);
        for (i, f) in t.frames.iter().enumerate() {
            o += &format!("  {i:>2}: {f}\n");
        }
    }
    for n in notes {
        o += &format!("{n}\n");
    }
    o
}

fn in_flight_text(f: &Forensics) -> String {
    let mut parts: Vec<String> = f
        .in_flight
        .iter()
        .map(|r| {
            format!(
                "{} {} ({} ms, from {})",
                r.method, r.path, r.running_ms, r.peer
            )
        })
        .collect();
    if f.in_flight_not_shown > 0 {
        parts.push(format!("{} more", f.in_flight_not_shown));
    }
    if parts.is_empty() {
        "none".into()
    } else {
        parts.join("; ")
    }
}

/// Forks the helper that symbolizes `captured` into a memfd.
fn spawn_symbolizer(captured: &[CapturedThread]) -> std::io::Result<(Pid, File)> {
    let out = os::memfd("rsvisor-stacks")?;
    let mask = os::block_all_signals()?;
    let forked = os::fork();
    if !matches!(forked, Ok(Fork::Child)) {
        if let Err(e) = os::set_signal_mask(&mask) {
            error!(error = %e, "cannot restore the master's signal mask");
        }
    }
    match forked? {
        Fork::Parent(pid) => Ok((pid, out)),
        Fork::Child => {
            // The master's handlers would write to its self-pipe.
            let _ = os::reset_signal_dispositions();
            let _ = os::unblock_all_signals();
            let mut w = std::io::BufWriter::new(&out);
            let code = match write_symbolized(captured, &mut w).and_then(|_| w.flush()) {
                Ok(()) => 0,
                Err(_) => 1,
            };
            os::exit_child(code)
        }
    }
}

/// In the helper: `T tid` then `F frame` lines per thread.
fn write_symbolized(captured: &[CapturedThread], w: &mut impl Write) -> std::io::Result<()> {
    for t in captured {
        writeln!(w, "T {}", t.tid)?;
        for f in symbolize(&t.frames) {
            writeln!(w, "F {f}")?;
        }
    }
    Ok(())
}

fn parse_symbolized(text: &str) -> Vec<ThreadDump> {
    let mut out: Vec<ThreadDump> = Vec::new();
    for line in text.lines() {
        if let Some(tid) = line.strip_prefix("T ") {
            out.push(ThreadDump {
                tid: tid.parse().unwrap_or(0),
                name: String::new(),
                heartbeat: false,
                frames: Vec::new(),
            });
        } else if let (Some(f), Some(t)) = (line.strip_prefix("F "), out.last_mut()) {
            t.frames.push(f.to_string());
        }
    }
    out
}

/// Names for addresses, innermost first; inlined calls get a line each.
/// The dump handler's own frames and the signal trampoline after them are
/// left out (when the handler can be named: not in a stripped binary).
fn symbolize(ips: &[u64]) -> Vec<String> {
    let per_ip: Vec<Vec<String>> = ips
        .iter()
        .filter(|&&ip| ip != 0)
        .map(|&ip| {
            let mut names = Vec::new();
            backtrace::resolve(ip as usize as *mut std::ffi::c_void, |sym| {
                let name = sym
                    .name()
                    .map(|n| format!("{n:#}"))
                    .unwrap_or_else(|| format!("{ip:#x}"));
                let at = match (sym.filename(), sym.lineno()) {
                    (Some(f), Some(l)) => format!(" ({}:{l})", f.display()),
                    _ => String::new(),
                };
                names.push(format!("{name}{at}"));
            });
            if names.is_empty() {
                names.push(format!("{ip:#x}"));
            }
            names
        })
        .collect();
    let skip = per_ip
        .iter()
        .rposition(|names| names.iter().any(|n| n.contains(HANDLER_NAME)))
        .map_or(0, |i| i + 2);
    per_ip.into_iter().skip(skip).flatten().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[inline(never)]
    fn a_recognisable_function() -> Vec<u64> {
        let mut ips = Vec::new();
        backtrace::trace(|f| {
            ips.push(f.ip() as usize as u64);
            true
        });
        ips
    }

    #[test]
    fn addresses_are_named_and_round_trip_through_the_helper_format() {
        let ips = a_recognisable_function();
        let captured = vec![CapturedThread {
            tid: 42,
            frames: ips,
        }];
        let mut buf = Vec::new();
        write_symbolized(&captured, &mut buf).unwrap();
        let threads = parse_symbolized(&String::from_utf8(buf).unwrap());
        assert_eq!(threads.len(), 1);
        assert_eq!(threads[0].tid, 42);
        assert!(
            threads[0]
                .frames
                .iter()
                .any(|f| f.contains("a_recognisable_function")),
            "{:?}",
            threads[0].frames
        );
    }

    #[test]
    fn the_report_text_names_requests_and_threads() {
        let f = Forensics {
            pid: 1,
            slot: 0,
            trigger: "heartbeat".into(),
            silent_ms: 2500,
            rss_bytes: 0,
            open_fds: 0,
            active_connections: 1,
            in_flight: vec![InFlightRequest {
                method: "GET".into(),
                path: "/block".into(),
                running_ms: 2600,
                peer: "127.0.0.1:5000".into(),
            }],
            in_flight_not_shown: 2,
            threads: vec![],
            stacks: None,
            dump_error: None,
            capture_ms: 1,
            total_ms: 2,
        };
        assert_eq!(
            in_flight_text(&f),
            "GET /block (2600 ms, from 127.0.0.1:5000); 2 more"
        );
        let t = ThreadDump {
            tid: 7,
            name: "demo".into(),
            heartbeat: true,
            frames: vec!["std::thread::sleep".into()],
        };
        let text = threads_text(&[t], &["thread 8 \"x\" blocks the dump signal".into()]);
        assert!(text.starts_with(
            "thread 7 \"demo\" (ran the heartbeat last):\n   0: std::thread::sleep\n"
        ));
        assert!(text.ends_with("blocks the dump signal\n"));
        assert_eq!(describe_state(Some('T')), "T: stopped");
    }
}
