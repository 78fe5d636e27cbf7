//! The minion side of Salt's protocol, shared by brine's minion and its syndic (which is a
//! minion to the masters above it): `_auth` with re-authentication, the publish feed with
//! envelope, signature, replay and target checks, the request channel, the liveness probe, the
//! minion pki directory and the on-disk return spool, and the minion configuration (Salt's
//! `minion` file, `config`) both read.

#![forbid(unsafe_code)]
#![warn(missing_docs, clippy::print_stdout, clippy::dbg_macro)]

pub mod config;
pub mod host;
pub mod link;
pub mod pki;
pub mod spool;

use std::path::PathBuf;
use std::time::Duration;

pub use link::{
    Feed, JobFeed, LinkError, Prober, PublishDecoder, ReqChannel, Rng, unix_micros, unix_secs,
};

/// One master to connect to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MasterAddr {
    /// Host or address as configured.
    pub host: String,
    /// Request (ret) port.
    pub ret_port: u16,
}

/// What a link needs to know about the minion side (a subset of Salt's minion options).
#[derive(Debug, Clone)]
pub struct LinkConfig {
    /// Minion id.
    pub id: String,
    /// `pki_dir` (`minion.pem`, `minion_master.pub`).
    pub pki_dir: PathBuf,
    /// `publish_port` to subscribe to, unless the master advertises one.
    pub publish_port: u16,
    /// `zmq_filtering`.
    pub zmq_filtering: bool,
    /// `auth_timeout`.
    pub auth_timeout: Duration,
    /// `auth_tries`: sends of one `_auth` request before a new one.
    pub auth_tries: u32,
    /// `acceptance_wait_time`.
    pub acceptance_wait_time: Duration,
    /// `acceptance_wait_time_max`.
    pub acceptance_wait_time_max: Duration,
    /// `rejected_retry`.
    pub rejected_retry: bool,
    /// `verify_master_pubkey_sign`.
    pub verify_master_pubkey_sign: bool,
    /// `master_sign_key_name`.
    pub master_sign_key_name: String,
    /// Give up on a master after one unanswered auth attempt (failover walks on).
    pub give_up_on_timeout: bool,
}

/// `time.asctime()` for a unix time, in UTC: `Fri Nov 27 01:56:30 2026`.
pub fn asctime(unix: i64) -> String {
    const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let jid = brine_proto::jid::Jid::from_unix_micros((unix.max(0) as u64) * 1_000_000);
    let s = jid.as_str();
    let month: usize = s[4..6].parse().unwrap_or(1);
    let day: u32 = s[6..8].parse().unwrap_or(1);
    format!(
        "{} {} {day:>2} {}:{}:{} {}",
        DAYS[(unix.div_euclid(86_400)).rem_euclid(7) as usize],
        MONTHS[month - 1],
        &s[8..10],
        &s[10..12],
        &s[12..14],
        &s[0..4]
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn asctime_like_python() {
        assert_eq!(super::asctime(1_795_744_590), "Fri Nov 27 01:56:30 2026");
        assert_eq!(super::asctime(0), "Thu Jan  1 00:00:00 1970");
    }
}
