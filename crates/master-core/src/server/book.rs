//! The master's book of jobs, without I/O: the jobs in memory (load, expected minions,
//! returns in the order they came), the job tracker that settles them, the `find_job` jids
//! asked about them, and the minions present. One value owns all four, so they change
//! together under one lock and no lock order exists between them.
//!
//! Inputs take the time: [`JobBook::publish`], [`JobBook::take_return`],
//! [`JobBook::handle_find_job_answer`], [`JobBook::handle_syndic_report`],
//! [`JobBook::handle_timeout`] (whose output is what to ask and what finished). Queries answer
//! from memory only; the job cache is the caller's.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant};

use brine_proto::Value;

use super::{ActiveJob, JobSince, JobView};
use crate::jobs::{Finished, JobTracker, Missing};

/// How long a finished job stays in memory (late returns, `find_job` answers, the API).
pub(super) const KEEP_FINISHED: Duration = Duration::from_secs(120);
/// How long a minion given up on only because this master's wait ran out still counts as
/// running (see [`JobBook::running`]).
pub(super) const TIMED_OUT_GRACE: Duration = Duration::from_secs(60);
/// The grace holds only for a minion heard from this recently: one that went silent here (it
/// failed over to another master, or is gone) is not running anything here.
pub(super) const HEARD_GRACE: Duration = Duration::from_secs(15);

/// What became of a return offered to [`JobBook::take_return`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Taken {
    /// Recorded; `complete` when it was the last one the job waited for.
    New { complete: bool },
    /// The same return again (a resend).
    Again,
    /// A different return from a minion that already returned: the first stands.
    Conflict,
    /// The job is not in memory (finished long ago, or never here): the caller checks the
    /// cache.
    NotInMemory,
}

/// What a timeout produced.
#[derive(Debug, Default)]
pub(super) struct Due {
    /// Jobs with silent minions to ask about (`saltutil.find_job`), and whom.
    pub asks: Vec<(String, Vec<String>)>,
    /// Jobs that became final.
    pub finished: Vec<Finished>,
}

/// The jobs in memory, their tracker, `find_job` jids and presence.
#[derive(Debug)]
pub(super) struct JobBook {
    jobs: BTreeMap<String, ActiveJob>,
    tracker: JobTracker,
    /// `find_job` jid → the jid it asks about.
    find_jobs: HashMap<String, String>,
    present: BTreeSet<String>,
    /// When each minion last sent an authenticated request here.
    heard: HashMap<String, Instant>,
}

impl JobBook {
    /// An empty book; `gather_job_timeout` paces `find_job`.
    pub(super) fn new(gather_job_timeout: Duration) -> Self {
        Self {
            jobs: BTreeMap::new(),
            tracker: JobTracker::new(gather_job_timeout),
            find_jobs: HashMap::new(),
            present: BTreeSet::new(),
            heard: HashMap::new(),
        }
    }

    /// `syndics` are known alive (brine syndics whose heartbeat is fresh): `jid` waits for
    /// their reports up to `wait` from `now` rather than `syndic_wait`.
    pub(super) fn wait_for_live_syndics(
        &mut self,
        jid: &str,
        syndics: &[String],
        wait: Duration,
        now: Instant,
    ) {
        self.tracker
            .handle_syndics(jid, syndics.iter().cloned(), now, wait);
    }

    /// `syndic`'s heartbeat stopped: no job waits for its report any longer.
    pub(super) fn syndic_lost(&mut self, syndic: &str) {
        self.tracker.handle_syndic_lost(syndic);
    }

    /// A job published (or relayed) now: `minions` expected, `syndics` to wait for up to
    /// `syndic_wait`, silent minions asked about after `timeout`.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn publish(
        &mut self,
        jid: &str,
        load: Value,
        minions: &[String],
        syndics: &[String],
        timeout: Duration,
        syndic_wait: Duration,
        now: Instant,
    ) {
        for id in minions {
            self.tracker.handle_connected(id);
        }
        self.tracker
            .handle_published(jid, minions.iter().cloned(), now, timeout, None);
        self.tracker
            .handle_syndics(jid, syndics.iter().cloned(), now, syndic_wait);
        self.jobs.insert(
            jid.to_owned(),
            ActiveJob {
                load,
                expected: minions.iter().cloned().collect(),
                returns: BTreeMap::new(),
                arrived: Vec::new(),
                missing: None,
                finished_at: None,
            },
        );
    }

    /// A minion authenticated or was heard from.
    pub(super) fn handle_present(&mut self, id: &str, now: Instant) {
        if !self.present.contains(id) {
            self.present.insert(id.to_owned());
        }
        match self.heard.get_mut(id) {
            Some(t) => *t = now,
            None => {
                self.heard.insert(id.to_owned(), now);
            }
        }
    }

    /// Minions present: heard from since start and not given up on since.
    pub(super) fn present(&self) -> &BTreeSet<String> {
        &self.present
    }

    /// Remember that `fj` is a `find_job` asking about `orig`.
    pub(super) fn handle_find_job_sent(&mut self, fj: &str, orig: &str) {
        self.find_jobs.insert(fj.to_owned(), orig.to_owned());
    }

    /// Whether `jid` is a `find_job` this master sent.
    pub(super) fn is_find_job(&self, jid: &str) -> bool {
        self.find_jobs.contains_key(jid)
    }

    /// A return for `jid` that may answer a `find_job`: recorded with the tracker and `true`
    /// when it does (`running` when the minion said it still runs the job).
    pub(super) fn handle_find_job_answer(&mut self, jid: &str, id: &str, running: bool) -> bool {
        let Some(orig) = self.find_jobs.get(jid) else {
            return false;
        };
        self.tracker.handle_find_job(orig, id, running);
        true
    }

    /// Offer minion `id`'s return `data` for `jid` (checked and recorded at once: a resent
    /// copy can be in another handler already).
    pub(super) fn take_return(&mut self, jid: &str, id: &str, data: &Value) -> Taken {
        let Some(j) = self.jobs.get_mut(jid) else {
            return Taken::NotInMemory;
        };
        if let Some(taken) = j.returns.get(id) {
            return if taken == data {
                Taken::Again
            } else {
                Taken::Conflict
            };
        }
        // A minion that was not expected (it attached after the job was published) is
        // expected now, so syndics report it upward.
        if !j.expected.contains(id) {
            j.expected.insert(id.to_owned());
        }
        j.returns.insert(id.to_owned(), data.clone());
        j.arrived.push(id.to_owned());
        Taken::New {
            complete: self.tracker.handle_return(jid, id),
        }
    }

    /// The tracker's part of a return for a job no longer in memory (nothing to settle, but
    /// the tracker forgets the minion's wait).
    pub(super) fn handle_late_return(&mut self, jid: &str, id: &str) {
        self.tracker.handle_return(jid, id);
    }

    /// A syndic reported the minions below it for `jid`.
    pub(super) fn handle_syndic_report(&mut self, jid: &str, syndic: &str, minions: &[String]) {
        for m in minions {
            self.tracker.handle_connected(m);
        }
        self.tracker.handle_expected(jid, minions.iter().cloned());
        self.tracker.handle_syndic_reported(jid, syndic);
        if let Some(j) = self.jobs.get_mut(jid) {
            j.expected.retain(|id| id != syndic);
            for m in minions {
                if !j.expected.contains(m) {
                    j.expected.insert(m.clone());
                }
            }
        }
    }

    /// Time passed: silent minions to ask about, jobs made final (kept in memory for
    /// [`KEEP_FINISHED`], minions that did not answer no longer present).
    pub(super) fn handle_timeout(&mut self, now: Instant) -> Due {
        let asks = self.tracker.poll_find_jobs(now);
        let finished = self.tracker.poll_done(now);
        for f in &finished {
            if let Some(j) = self.jobs.get_mut(&f.jid) {
                j.missing = Some(f.missing.clone());
                j.finished_at = Some(now);
            }
            for (id, why) in &f.missing {
                if matches!(why, Missing::NoResponse | Missing::Gone) {
                    self.present.remove(id);
                }
            }
        }
        let before = self.jobs.len();
        self.jobs.retain(|_, j| {
            j.finished_at
                .is_none_or(|t| now.duration_since(t) < KEEP_FINISHED)
        });
        // find_job jids live as long as the job they ask about stays in memory.
        if self.jobs.len() != before {
            let jobs = &self.jobs;
            self.find_jobs.retain(|_, orig| jobs.contains_key(orig));
        }
        Due { asks, finished }
    }

    /// Whether the tracker still follows `jid` (not final yet).
    pub(super) fn is_tracking(&self, jid: &str, now: Instant) -> bool {
        self.tracker.waiting_on_syndics(jid, now).is_some()
    }

    /// The minions expected for `jid` once every syndic below has reported them (or
    /// `syndic_wait` passed); `None` while waiting, or for a job not in memory.
    pub(super) fn settled_expected(&self, jid: &str, now: Instant) -> Option<Vec<String>> {
        if self.tracker.waiting_on_syndics(jid, now) == Some(true) {
            return None;
        }
        self.jobs
            .get(jid)
            .map(|j| j.expected.iter().cloned().collect())
    }

    /// Whether each of `ids` still runs `jid` here: `Some(true)` running, `Some(false)` done or
    /// given up on, `None` for a minion not expected for that job (or a job not in memory).
    ///
    /// A minion this master gave up on only because its own wait ran out (no answer to
    /// `find_job` in time, or the job's deadline) still counts as running for
    /// [`TIMED_OUT_GRACE`] after that: for a relayed job the master above decides how long to
    /// wait, and a syndic on a saturated host would otherwise tell it to stop waiting for
    /// returns that are still coming. Only while the minion was heard from within
    /// [`HEARD_GRACE`]: a minion that left this master (failed over) is not running here.
    pub(super) fn running(
        &self,
        jid: &str,
        ids: &[String],
        now: Instant,
    ) -> Vec<(String, Option<bool>)> {
        let Some(job) = self.jobs.get(jid) else {
            return ids.iter().map(|id| (id.clone(), None)).collect();
        };
        ids.iter()
            .map(|id| {
                if !job.expected.contains(id) {
                    return (id.clone(), None);
                }
                let timed_out = job.missing.as_ref().is_some_and(|m| {
                    matches!(m.get(id), Some(Missing::NoResponse | Missing::TimedOut))
                });
                let recent = job
                    .finished_at
                    .is_some_and(|t| now.duration_since(t) < TIMED_OUT_GRACE);
                let heard = self
                    .heard
                    .get(id)
                    .is_some_and(|t| now.saturating_duration_since(*t) < HEARD_GRACE);
                let running = self.tracker.is_running(jid, id)
                    || (timed_out && recent && heard && !job.returns.contains_key(id));
                (id.clone(), Some(running))
            })
            .collect()
    }

    /// The job's load, when in memory.
    pub(super) fn load(&self, jid: &str) -> Option<&Value> {
        self.jobs.get(jid).map(|j| &j.load)
    }

    /// Whether `jid` is in memory and not final yet.
    pub(super) fn is_running(&self, jid: &str) -> bool {
        self.jobs.get(jid).is_some_and(|j| j.missing.is_none())
    }

    /// Whether `jid` is in memory, final or not.
    #[cfg(test)]
    fn contains(&self, jid: &str) -> bool {
        self.jobs.contains_key(jid)
    }

    /// Returns so far of `jid` in memory (`None` when it is not in memory).
    pub(super) fn returned(&self, jid: &str) -> Option<usize> {
        self.jobs.get(jid).map(|j| j.arrived.len())
    }

    /// A job in memory as the API shows it: `(load with minions, returns, missing-if-final)`.
    pub(super) fn view(&self, jid: &str) -> Option<JobView> {
        let j = self.jobs.get(jid)?;
        let mut load = j.load.clone();
        load.insert("minions", ids(&j.expected));
        Some((load, j.returns.clone(), j.missing.clone()))
    }

    /// The returns of `jid` after the first `since`, in arrival order, with the cursor for the
    /// next call; the expected minions (the load's largest part) only when `since` is 0.
    pub(super) fn since(&self, jid: &str, since: usize) -> Option<JobSince> {
        let j = self.jobs.get(jid)?;
        let new = j
            .arrived
            .iter()
            .skip(since)
            .filter_map(|id| Some((id.clone(), j.returns.get(id)?.clone())))
            .collect();
        // The load without its largest part, the expected minions, unless asked from the start.
        let mut load = match &j.load {
            Value::Map(e) => Value::Map(
                e.iter()
                    .filter(|(k, _)| !k.is_str("minions"))
                    .cloned()
                    .collect(),
            ),
            other => other.clone(),
        };
        if since == 0 {
            load.insert("minions", ids(&j.expected));
        }
        Some(JobSince {
            load,
            new,
            cursor: j.arrived.len(),
            missing: j.missing.clone(),
        })
    }

    /// Running jobs (not final yet), in jid order.
    pub(super) fn active(&self) -> Vec<(String, ActiveJob)> {
        self.jobs
            .iter()
            .filter(|(_, j)| j.missing.is_none())
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    /// When [`Self::handle_timeout`] next has something to do, as of `now`.
    pub(super) fn poll_timeout(&self, now: Instant) -> Option<Instant> {
        self.tracker.poll_timeout(now)
    }
}

/// Minion ids as a list value.
fn ids(set: &BTreeSet<String>) -> Value {
    Value::Array(set.iter().map(Value::str).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| (*s).to_owned()).collect()
    }

    /// A book (`gather_job_timeout` in seconds) with job "j" published at `t0` (its timeout
    /// and `syndic_wait` both `secs`).
    fn book(
        gather: u64,
        load: Value,
        minions: &[String],
        syndics: &[String],
        secs: u64,
        t0: Instant,
    ) -> JobBook {
        let mut b = JobBook::new(Duration::from_secs(gather));
        let wait = Duration::from_secs(secs);
        b.publish("j", load, minions, syndics, wait, wait, t0);
        b
    }

    fn ret(v: i64) -> Value {
        Value::map()
            .with("return", v)
            .with("retcode", 0)
            .with("success", true)
    }

    #[test]
    fn returns_are_taken_once_and_complete_the_job() {
        let t0 = Instant::now();
        let mut b = book(
            10,
            Value::map().with("fun", "test.ping"),
            &ids(&["a", "b"]),
            &[],
            5,
            t0,
        );
        assert!(b.is_running("j"));
        assert_eq!(
            b.take_return("j", "a", &ret(1)),
            Taken::New { complete: false }
        );
        assert_eq!(b.take_return("j", "a", &ret(1)), Taken::Again);
        assert_eq!(b.take_return("j", "a", &ret(2)), Taken::Conflict);
        assert_eq!(b.take_return("nope", "a", &ret(1)), Taken::NotInMemory);
        assert_eq!(
            b.take_return("j", "b", &ret(1)),
            Taken::New { complete: true }
        );
        let due = b.handle_timeout(t0);
        assert_eq!(due.finished.len(), 1);
        assert!(!b.is_running("j"));
        // Kept for a while, then forgotten.
        assert!(b.contains("j"));
        b.handle_timeout(t0 + KEEP_FINISHED);
        assert!(!b.contains("j"));
    }

    #[test]
    fn a_follower_sees_each_return_once_in_arrival_order() {
        let t0 = Instant::now();
        let mut b = book(
            10,
            Value::map()
                .with("fun", "test.ping")
                .with("minions", Value::Array(vec![])),
            &ids(&["a", "b", "c"]),
            &[],
            5,
            t0,
        );
        b.take_return("j", "c", &ret(3));
        let first = b.since("j", 0).unwrap();
        assert_eq!(first.cursor, 1);
        assert_eq!(first.new.len(), 1);
        assert_eq!(
            first.load.get("minions"),
            Some(&Value::Array(vec![
                Value::str("a"),
                Value::str("b"),
                Value::str("c")
            ]))
        );
        b.take_return("j", "a", &ret(1));
        b.take_return("j", "b", &ret(2));
        let next = b.since("j", first.cursor).unwrap();
        let got: Vec<&str> = next.new.iter().map(|(id, _)| id.as_str()).collect();
        assert_eq!(got, ["a", "b"]);
        assert!(next.load.get("minions").is_none(), "{:?}", next.load);
        assert_eq!(b.since("j", 3).unwrap().new.len(), 0);
    }

    #[test]
    fn find_job_answers_and_the_grace_after_giving_up() {
        let t0 = Instant::now();
        let mut b = book(1, Value::map(), &ids(&["slow"]), &[], 1, t0);
        b.handle_present("slow", t0);
        let due = b.handle_timeout(t0 + Duration::from_secs(1));
        assert_eq!(due.asks, vec![("j".to_owned(), ids(&["slow"]))]);
        b.handle_find_job_sent("fj1", "j");
        assert!(b.is_find_job("fj1"));
        assert!(!b.handle_find_job_answer("other", "slow", true));
        assert!(b.handle_find_job_answer("fj1", "slow", false));
        // Not running any more: the job is final, the minion missing and no longer present.
        let due = b.handle_timeout(t0 + Duration::from_secs(2));
        assert_eq!(due.finished.len(), 1);
        assert_eq!(
            b.running(
                "j",
                &ids(&["slow", "stranger"]),
                t0 + Duration::from_secs(2)
            ),
            vec![
                ("slow".to_owned(), Some(false)),
                ("stranger".to_owned(), None)
            ]
        );
    }

    #[test]
    fn a_minion_given_up_on_counts_as_running_only_while_it_is_heard_from() {
        let t0 = Instant::now();
        let mut b = book(1, Value::map(), &ids(&["busy", "left"]), &[], 1, t0);
        b.handle_present("busy", t0);
        b.handle_present("left", t0);
        let due = b.handle_timeout(t0 + Duration::from_secs(1));
        b.handle_find_job_sent("fj1", &due.asks[0].0);
        // Neither answers the find_job in time: the job is final, both given up on.
        let t1 = t0 + Duration::from_secs(3);
        let due = b.handle_timeout(t1);
        assert_eq!(due.finished.len(), 1);
        // "busy" is still heard from (late answers, other returns); "left" went silent.
        let t2 = t1 + HEARD_GRACE;
        b.handle_present("busy", t2 - Duration::from_secs(1));
        assert_eq!(
            b.running("j", &ids(&["busy", "left"]), t2),
            vec![
                ("busy".to_owned(), Some(true)),
                ("left".to_owned(), Some(false))
            ]
        );
        // Past the grace, neither.
        assert_eq!(
            b.running("j", &ids(&["busy"]), t1 + TIMED_OUT_GRACE),
            vec![("busy".to_owned(), Some(false))]
        );
    }

    #[test]
    fn syndic_reports_widen_what_is_expected() {
        let t0 = Instant::now();
        let mut b = book(10, Value::map(), &ids(&["syn"]), &ids(&["syn"]), 5, t0);
        assert_eq!(b.settled_expected("j", t0), None, "waiting on the syndic");
        b.handle_syndic_report("j", "syn", &ids(&["m1", "m2"]));
        assert_eq!(b.settled_expected("j", t0), Some(ids(&["m1", "m2"])));
        assert!(b.is_tracking("j", t0));
    }
}
