//! Job completion without `find_job` storms.
//!
//! Salt's CLI waits `timeout`, then publishes `saltutil.find_job` to every minion that has not
//! returned, again and again, from every CLI process waiting on the fleet. The tracker here
//! keeps, per jid, the expected minions, who returned, and who is still connected; a minion that
//! is connected but silent is asked at most once per `gather_job_timeout`, never the fleet, and
//! a job is final as soon as every expected minion has returned or is known gone.
//!
//! Sans-IO: the caller feeds returns, connectivity and `find_job` answers in, and drains
//! [`JobTracker::poll_find_jobs`] and [`JobTracker::poll_done`] with the current time.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant};

/// Salt's `gather_job_timeout` default.
pub const DEFAULT_GATHER_JOB_TIMEOUT: Duration = Duration::from_secs(10);

/// `now + d`, where a `d` too large for the clock means "a year from now": durations come from
/// the network (API callers, upper masters) and must never panic the tracker.
fn later(now: Instant, d: Duration) -> Instant {
    now.checked_add(d)
        .or_else(|| now.checked_add(Duration::from_secs(365 * 86_400)))
        .unwrap_or(now)
}

/// Why an expected minion will not return.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Missing {
    /// Not connected (or it went away while the job ran).
    Gone,
    /// Asked with `find_job` and did not answer within `gather_job_timeout`.
    NoResponse,
    /// Connected, but `find_job` says it is not running the job and no return came.
    NotRunning,
    /// Still running when the caller's deadline passed.
    TimedOut,
}

/// The outcome of a finished job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finished {
    /// Job id.
    pub jid: String,
    /// Minions that returned.
    pub returned: BTreeSet<String>,
    /// Minions that did not, and why.
    pub missing: BTreeMap<String, Missing>,
}

#[derive(Debug)]
struct Job {
    expected: BTreeSet<String>,
    returned: BTreeSet<String>,
    missing: BTreeMap<String, Missing>,
    /// When the next `find_job` may be sent to a silent minion, and whether the last one was
    /// answered.
    asked: HashMap<String, (Instant, bool)>,
    /// The job's own timeout (`-t`): silent minions are first asked after it.
    first_ask: Instant,
    /// After this, still-running minions are reported as timed out.
    deadline: Option<Instant>,
    /// Syndics that have not reported this job's minions yet, each with the instant until
    /// which the job waits for it (`syndic_wait`, or longer for a syndic known alive).
    waiting_syndics: BTreeMap<String, Instant>,
}

/// Tracks every running job of a master.
#[derive(Debug)]
pub struct JobTracker {
    jobs: BTreeMap<String, Job>,
    connected: BTreeSet<String>,
    gather_job_timeout: Duration,
}

impl JobTracker {
    /// A tracker asking silent minions at most once per `gather_job_timeout`.
    pub fn new(gather_job_timeout: Duration) -> Self {
        Self {
            jobs: BTreeMap::new(),
            connected: BTreeSet::new(),
            gather_job_timeout,
        }
    }

    /// A minion is connected (authenticated, link up).
    pub fn handle_connected(&mut self, id: &str) {
        self.connected.insert(id.to_owned());
    }

    /// A minion went away: its pending jobs will not get its return.
    pub fn handle_disconnected(&mut self, id: &str) {
        self.connected.remove(id);
        for job in self.jobs.values_mut() {
            if job.expected.contains(id) && !job.returned.contains(id) {
                job.missing.insert(id.to_owned(), Missing::Gone);
            }
        }
    }

    /// A job was published to `expected`; silent minions are first asked after `timeout`, and
    /// given up on after `deadline` (if any).
    pub fn handle_published(
        &mut self,
        jid: &str,
        expected: impl IntoIterator<Item = String>,
        now: Instant,
        timeout: Duration,
        deadline: Option<Duration>,
    ) {
        let expected: BTreeSet<String> = expected.into_iter().collect();
        let missing = expected
            .iter()
            .filter(|id| !self.connected.contains(*id))
            .map(|id| (id.clone(), Missing::Gone))
            .collect();
        self.jobs.insert(
            jid.to_owned(),
            Job {
                expected,
                returned: BTreeSet::new(),
                missing,
                asked: HashMap::new(),
                first_ask: later(now, timeout),
                deadline: deadline.map(|d| later(now, d)),
                waiting_syndics: BTreeMap::new(),
            },
        );
    }

    /// The job went to `syndics` too: it is not final until each reported the minions below it
    /// that the job targets, or `wait` passed (`syndic_wait`). Given again for a syndic, the
    /// later instant stands.
    pub fn handle_syndics(
        &mut self,
        jid: &str,
        syndics: impl IntoIterator<Item = String>,
        now: Instant,
        wait: Duration,
    ) {
        if let Some(job) = self.jobs.get_mut(jid) {
            let until = later(now, wait);
            for s in syndics {
                let e = job.waiting_syndics.entry(s).or_insert(until);
                *e = (*e).max(until);
            }
        }
    }

    /// `syndic` is gone (its heartbeat stopped): no job waits for its report any longer.
    pub fn handle_syndic_lost(&mut self, syndic: &str) {
        for job in self.jobs.values_mut() {
            job.waiting_syndics.remove(syndic);
        }
    }

    /// A syndic reported on `jid` (its minions were added with [`Self::handle_expected`]); it is
    /// not itself a minion that returns.
    pub fn handle_syndic_reported(&mut self, jid: &str, syndic: &str) {
        if let Some(job) = self.jobs.get_mut(jid) {
            job.waiting_syndics.remove(syndic);
            job.expected.remove(syndic);
            job.missing.remove(syndic);
        }
    }

    /// More minions are expected (a syndic reported the ones below it).
    pub fn handle_expected(&mut self, jid: &str, more: impl IntoIterator<Item = String>) {
        if let Some(job) = self.jobs.get_mut(jid) {
            job.expected.extend(more);
        }
    }

    /// Whether `jid` still waits for syndics to report (`None` for an unknown job).
    pub fn waiting_on_syndics(&self, jid: &str, now: Instant) -> Option<bool> {
        self.jobs
            .get(jid)
            .map(|j| j.waiting_syndics.values().any(|h| now < *h))
    }

    /// Whether `id` still runs `jid`: expected, not returned, not given up on, job not final.
    pub fn is_running(&self, jid: &str, id: &str) -> bool {
        self.jobs.get(jid).is_some_and(|j| {
            j.expected.contains(id) && !j.returned.contains(id) && !j.missing.contains_key(id)
        })
    }

    /// A return arrived.
    ///
    /// Returns whether `jid` now has a return from every minion expected and waits on no
    /// syndic: [`Self::poll_done`] will settle it (the driver need not wait for its timer).
    pub fn handle_return(&mut self, jid: &str, id: &str) -> bool {
        let Some(job) = self.jobs.get_mut(jid) else {
            return false;
        };
        job.returned.insert(id.to_owned());
        job.missing.remove(id);
        job.waiting_syndics.is_empty()
            && job.returned.len() >= job.expected.len()
            && job.expected.iter().all(|m| job.returned.contains(m))
    }

    /// A `find_job` answer: `running` is whether the minion still runs `jid`.
    pub fn handle_find_job(&mut self, jid: &str, id: &str, running: bool) {
        if let Some(job) = self.jobs.get_mut(jid)
            && !job.returned.contains(id)
        {
            if let Some(a) = job.asked.get_mut(id) {
                a.1 = true;
            }
            if running {
                job.missing.remove(id);
            } else {
                job.missing.insert(id.to_owned(), Missing::NotRunning);
            }
        }
    }

    /// `(jid, minions)` to send `saltutil.find_job` to now. Each silent, connected minion of a
    /// job appears at most once per `gather_job_timeout`.
    pub fn poll_find_jobs(&mut self, now: Instant) -> Vec<(String, Vec<String>)> {
        let mut out = Vec::new();
        for (jid, job) in &mut self.jobs {
            if now < job.first_ask {
                continue;
            }
            let mut ask = Vec::new();
            for id in &job.expected {
                if job.returned.contains(id)
                    || job.missing.contains_key(id)
                    || !self.connected.contains(id)
                {
                    continue;
                }
                match job.asked.get(id) {
                    Some((next, _)) if now < *next => {}
                    // Asked a whole gather_job_timeout ago and never answered: given up on.
                    Some((_, false)) => {
                        job.missing.insert(id.clone(), Missing::NoResponse);
                    }
                    _ => {
                        job.asked
                            .insert(id.clone(), (later(now, self.gather_job_timeout), false));
                        ask.push(id.clone());
                    }
                }
            }
            if !ask.is_empty() {
                out.push((jid.clone(), ask));
            }
        }
        out
    }

    /// Jobs that are final now: every expected minion returned or is known missing, or the
    /// deadline passed (the rest are reported as timed out). Finished jobs are forgotten.
    pub fn poll_done(&mut self, now: Instant) -> Vec<Finished> {
        let mut done = Vec::new();
        self.jobs.retain(|jid, job| {
            let settled = job
                .expected
                .iter()
                .all(|id| job.returned.contains(id) || job.missing.contains_key(id));
            let held = job.waiting_syndics.values().any(|h| now < *h);
            let expired = job.deadline.is_some_and(|d| now >= d);
            if (!settled || held) && !expired {
                return true;
            }
            let mut missing = job.missing.clone();
            for id in &job.expected {
                if !job.returned.contains(id) && !missing.contains_key(id) {
                    missing.insert(id.clone(), Missing::TimedOut);
                }
            }
            done.push(Finished {
                jid: jid.clone(),
                returned: job.returned.clone(),
                missing,
            });
            false
        });
        done
    }

    /// The next instant at which `poll_*` may have something new, as of `now` (an instant at
    /// or before `now`: something is due). Only what can still change counts: a first ask not
    /// made yet, the next ask of a silent connected minion, a deadline, a syndic hold.
    pub fn poll_timeout(&self, now: Instant) -> Option<Instant> {
        self.jobs
            .values()
            .flat_map(|j| {
                let first = (now < j.first_ask).then_some(j.first_ask);
                let asks = j
                    .asked
                    .iter()
                    .filter(|(id, _)| {
                        !j.returned.contains(*id)
                            && !j.missing.contains_key(*id)
                            && self.connected.contains(*id)
                    })
                    .map(|(_, a)| a.0);
                let hold = j
                    .waiting_syndics
                    .values()
                    .copied()
                    .filter(|h| *h > now)
                    .min();
                first.into_iter().chain(asks).chain(j.deadline).chain(hold)
            })
            .min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[allow(clippy::disallowed_methods)]
    fn origin() -> Instant {
        Instant::now()
    }

    /// A tracker (`gather_job_timeout` 10 s) with job "j" (timeout 5 s) for connected `id`.
    fn one_job(id: &str, t0: Instant) -> JobTracker {
        let mut jt = JobTracker::new(Duration::from_secs(10));
        jt.handle_connected(id);
        jt.handle_published("j", [id.to_owned()], t0, Duration::from_secs(5), None);
        jt
    }

    fn ids(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("m{i:04}")).collect()
    }

    #[test]
    fn durations_from_the_network_never_overflow_a_deadline() {
        // An API caller's timeout or an upper master's `to` can be any number.
        let mut jt = JobTracker::new(Duration::MAX);
        let t0 = Instant::now();
        jt.handle_published("j", ids(2), t0, Duration::MAX, Some(Duration::MAX));
        jt.handle_syndics("j", ["s1".to_owned()], t0, Duration::MAX);
        assert!(jt.poll_find_jobs(t0 + Duration::from_secs(3600)).is_empty());
        assert!(jt.poll_done(t0 + Duration::from_secs(3600)).is_empty());
    }

    #[test]
    fn finishes_when_everyone_returned_without_asking_anyone() {
        let t0 = origin();
        let mut jt = JobTracker::new(DEFAULT_GATHER_JOB_TIMEOUT);
        for id in ids(1000) {
            jt.handle_connected(&id);
        }
        jt.handle_published("j1", ids(1000), t0, Duration::from_secs(5), None);
        for id in ids(1000) {
            jt.handle_return("j1", &id);
        }
        assert!(jt.poll_find_jobs(t0 + Duration::from_secs(6)).is_empty());
        let done = jt.poll_done(t0 + Duration::from_millis(1));
        assert_eq!(done.len(), 1);
        assert_eq!(done[0].returned.len(), 1000);
        assert!(done[0].missing.is_empty());
    }

    #[test]
    fn a_silent_minion_is_asked_once_per_gather_job_timeout_never_the_fleet() {
        let t0 = origin();
        let mut jt = JobTracker::new(Duration::from_secs(10));
        for id in ids(10_000) {
            jt.handle_connected(&id);
        }
        jt.handle_published(
            "j1",
            ids(10_000),
            t0,
            Duration::from_secs(5),
            Some(Duration::from_secs(60)),
        );
        for id in ids(10_000).into_iter().skip(1) {
            jt.handle_return("j1", &id);
        }
        // Before the job's timeout: nobody is asked.
        assert!(jt.poll_find_jobs(t0 + Duration::from_secs(4)).is_empty());
        // Then only the one silent minion, once per gather_job_timeout, however often we poll.
        let mut asked = 0;
        let mut t = t0 + Duration::from_secs(5);
        while t < t0 + Duration::from_secs(35) {
            for (_, who) in jt.poll_find_jobs(t) {
                assert_eq!(who, vec!["m0000".to_owned()]);
                asked += 1;
                jt.handle_find_job("j1", "m0000", true);
            }
            t += Duration::from_millis(250);
        }
        assert_eq!(asked, 3, "asked at 5 s, 15 s and 25 s");
        assert!(jt.poll_done(t).is_empty(), "still running");
        jt.handle_find_job("j1", "m0000", false);
        let done = jt.poll_done(t);
        assert_eq!(done[0].missing.get("m0000"), Some(&Missing::NotRunning));
    }

    #[test]
    fn a_minion_that_never_answers_find_job_is_given_up_after_one_gather_job_timeout() {
        let t0 = origin();
        let mut jt = one_job("dead", t0);
        assert_eq!(jt.poll_find_jobs(t0 + Duration::from_secs(5)).len(), 1);
        assert!(jt.poll_find_jobs(t0 + Duration::from_secs(14)).is_empty());
        assert!(jt.poll_done(t0 + Duration::from_secs(14)).is_empty());
        assert!(
            jt.poll_find_jobs(t0 + Duration::from_secs(15)).is_empty(),
            "not asked twice"
        );
        let done = jt.poll_done(t0 + Duration::from_secs(15));
        assert_eq!(done[0].missing.get("dead"), Some(&Missing::NoResponse));
    }

    #[test]
    fn jobs_through_syndics_wait_for_their_reports_not_blindly() {
        let t0 = origin();
        let mut jt = one_job("direct", t0);
        jt.handle_syndics(
            "j",
            ["s1".to_owned(), "s2".to_owned()],
            t0,
            Duration::from_secs(5),
        );
        assert!(
            !jt.handle_return("j", "direct"),
            "not complete while syndics have not reported"
        );
        assert!(jt.poll_done(t0).is_empty(), "syndics have not reported");
        // s1 reports two minions below it; s2 reports none (nothing of it matched).
        jt.handle_expected("j", ["m1".to_owned(), "m2".to_owned()]);
        jt.handle_connected("m1");
        jt.handle_connected("m2");
        jt.handle_syndic_reported("j", "s1");
        jt.handle_syndic_reported("j", "s2");
        assert!(!jt.handle_return("j", "m1"));
        assert!(jt.poll_done(t0).is_empty(), "m2 has not returned");
        assert!(
            jt.handle_return("j", "m2"),
            "the last return completes the job"
        );
        let done = jt.poll_done(t0 + Duration::from_millis(10));
        assert_eq!(done[0].returned.len(), 3);
        assert!(done[0].missing.is_empty());
        // A syndic that never reports holds the job only until syndic_wait.
        jt.handle_published("k", Vec::<String>::new(), t0, Duration::from_secs(5), None);
        jt.handle_syndics("k", ["s1".to_owned()], t0, Duration::from_secs(5));
        assert!(jt.poll_done(t0 + Duration::from_secs(4)).is_empty());
        assert_eq!(jt.poll_done(t0 + Duration::from_secs(5)).len(), 1);
        // A syndic known alive is waited for longer than one that is not; once it is lost,
        // nothing holds the job.
        jt.handle_published("l", Vec::<String>::new(), t0, Duration::from_secs(5), None);
        jt.handle_syndics(
            "l",
            ["s1", "s2"].map(String::from),
            t0,
            Duration::from_secs(5),
        );
        jt.handle_syndics("l", ["s2".to_owned()], t0, Duration::from_secs(20));
        jt.handle_syndics("l", ["s2".to_owned()], t0, Duration::from_secs(1));
        assert_eq!(
            jt.poll_timeout(t0 + Duration::from_secs(1)),
            Some(t0 + Duration::from_secs(5))
        );
        assert!(
            jt.poll_done(t0 + Duration::from_secs(6)).is_empty(),
            "s2 holds it"
        );
        assert_eq!(
            jt.poll_timeout(t0 + Duration::from_secs(6)),
            Some(t0 + Duration::from_secs(20))
        );
        jt.handle_syndic_lost("s2");
        assert_eq!(jt.poll_done(t0 + Duration::from_secs(7)).len(), 1);
    }

    #[test]
    fn gone_minions_and_deadlines_settle_jobs() {
        let t0 = origin();
        let mut jt = JobTracker::new(Duration::from_secs(10));
        jt.handle_connected("a");
        jt.handle_connected("b");
        // "c" is expected but not connected: known gone from the start, never asked.
        jt.handle_published(
            "j1",
            ["a", "b", "c"].map(String::from),
            t0,
            Duration::from_secs(5),
            Some(Duration::from_secs(30)),
        );
        jt.handle_return("j1", "a");
        jt.handle_disconnected("b");
        let done = jt.poll_done(t0);
        assert_eq!(done[0].missing.get("b"), Some(&Missing::Gone));
        assert_eq!(done[0].missing.get("c"), Some(&Missing::Gone));
        // A job whose minion keeps running past the deadline is reported as timed out.
        jt.handle_connected("b");
        jt.handle_published(
            "j2",
            ["b".to_owned()],
            t0,
            Duration::from_secs(5),
            Some(Duration::from_secs(30)),
        );
        assert_eq!(
            jt.poll_timeout(t0),
            Some(t0 + Duration::from_secs(5)),
            "the first ask"
        );
        assert!(jt.poll_done(t0 + Duration::from_secs(29)).is_empty());
        let done = jt.poll_done(t0 + Duration::from_secs(30));
        assert_eq!(done[0].missing.get("b"), Some(&Missing::TimedOut));
        assert!(jt.poll_timeout(t0 + Duration::from_secs(30)).is_none());
    }

    /// A driver sleeps until `poll_timeout`: it is never in the past for something already
    /// settled (that would spin), and it names the next ask of a silent minion.
    #[test]
    fn poll_timeout_names_only_what_can_still_change() {
        let t0 = origin();
        let gather = Duration::from_secs(10);
        let mut jt = JobTracker::new(gather);
        jt.handle_connected("quick");
        jt.handle_connected("silent");
        jt.handle_published(
            "j",
            ["quick", "silent"].map(String::from),
            t0,
            Duration::from_secs(5),
            None,
        );
        let ask_at = t0 + Duration::from_secs(5);
        assert_eq!(jt.poll_timeout(t0), Some(ask_at));
        assert_eq!(jt.poll_find_jobs(ask_at).len(), 1);
        jt.handle_return("j", "quick");
        // Past the first ask: only the silent minion's next ask is left.
        assert_eq!(jt.poll_timeout(ask_at), Some(ask_at + gather));
        jt.handle_return("j", "silent");
        assert_eq!(jt.poll_timeout(ask_at), None, "nothing left to wait for");
    }
}
