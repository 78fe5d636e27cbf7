//! Job ids in Salt's format: `YYYYMMDDhhmmssffffff` in UTC (`salt/utils/jid.py:gen_jid`),
//! optionally followed by `_<pid>` (`unique_jid: True`).

use std::fmt;

/// A validated job id.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Jid(String);

impl Jid {
    /// Parse and validate (`salt.utils.jid.is_jid`: 20 digits, optionally `_suffix`).
    pub fn parse(s: &str) -> Option<Self> {
        let (digits, suffix) = match s.split_once('_') {
            Some((d, sfx)) => (d, Some(sfx)),
            None => (s, None),
        };
        if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        if suffix.is_some_and(|x| x.is_empty() || !x.bytes().all(|b| b.is_ascii_alphanumeric())) {
            return None;
        }
        Some(Self(s.to_owned()))
    }

    /// The jid for `unix_micros` microseconds since the epoch, in UTC.
    pub fn from_unix_micros(unix_micros: u64) -> Self {
        let secs = unix_micros / 1_000_000;
        let micros = unix_micros % 1_000_000;
        let days = (secs / 86_400) as i64;
        let rem = secs % 86_400;
        let (y, m, d) = civil_from_days(days);
        Self(format!(
            "{y:04}{m:02}{d:02}{:02}{:02}{:02}{micros:06}",
            rem / 3600,
            (rem / 60) % 60,
            rem % 60
        ))
    }

    /// The jid text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Jid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Hands out strictly increasing jids even when the clock does not move (or moves back), as
/// Salt's `gen_jid` does with its `LAST_JID_DATETIME`.
#[derive(Debug, Clone, Default)]
pub struct JidGenerator {
    last_micros: u64,
    suffix: Option<String>,
}

impl JidGenerator {
    /// A generator whose jids end in `_<suffix>` (Salt's `unique_jid` uses the process id).
    ///
    /// # Panics
    /// If `suffix` is empty or not ASCII alphanumeric (it would not parse as a jid).
    pub fn with_suffix(suffix: &str) -> Self {
        assert!(
            !suffix.is_empty() && suffix.bytes().all(|b| b.is_ascii_alphanumeric()),
            "a jid suffix is ASCII letters and digits"
        );
        Self {
            last_micros: 0,
            suffix: Some(suffix.to_owned()),
        }
    }

    /// The next jid for the wall-clock time `unix_micros`.
    pub fn next_jid(&mut self, unix_micros: u64) -> Jid {
        let t = unix_micros.max(self.last_micros + 1);
        self.last_micros = t;
        let jid = Jid::from_unix_micros(t);
        match &self.suffix {
            Some(s) => Jid(format!("{}_{s}", jid.0)),
            None => jid,
        }
    }
}

/// The time a jid was made, in microseconds since the epoch (UTC); `None` for text that is not
/// a jid (a suffix after `_` is ignored).
pub fn unix_micros(jid: &str) -> Option<u64> {
    let digits = jid.split_once('_').map_or(jid, |(d, _)| d);
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let num = |a: usize, b: usize| digits[a..b].parse::<u64>().ok();
    let (y, m, d) = (num(0, 4)?, num(4, 6)?, num(6, 8)?);
    let (hh, mm, ss, us) = (num(8, 10)?, num(10, 12)?, num(12, 14)?, num(14, 20)?);
    if !(1..=12).contains(&m) || !(1..=31).contains(&d) || hh > 23 || mm > 59 || ss > 60 {
        return None;
    }
    let days = u64::try_from(days_from_civil(i64::try_from(y).ok()?, m as u32, d as u32)).ok()?;
    Some(((days * 86_400 + hh * 3600 + mm * 60 + ss) * 1_000_000) + us)
}

/// (year, month, day) to days since 1970-01-01, proleptic Gregorian: the inverse of
/// [`civil_from_days`].
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = i64::from(if m > 2 { m - 3 } else { m + 9 });
    let doy = (153 * mp + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian (H. Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// `2026-11-27T01:56:51.112705`: the naive ISO timestamp Salt puts in `_stamp` (3006/3007).
pub fn iso_stamp(unix_micros: u64) -> String {
    let j = Jid::from_unix_micros(unix_micros);
    let s = j.as_str();
    format!(
        "{}-{}-{}T{}:{}:{}.{}",
        &s[0..4],
        &s[4..6],
        &s[6..8],
        &s[8..10],
        &s[10..12],
        &s[12..14],
        &s[14..20]
    )
}

/// Salt's `jid_to_time`: `2026, Nov 27 06:09:28.860244`.
pub fn start_time(jid: &str) -> String {
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    if jid.len() < 20 || !jid.as_bytes()[..20].iter().all(u8::is_ascii_digit) {
        return String::new();
    }
    let month = jid[4..6].parse::<usize>().unwrap_or(1).clamp(1, 12);
    format!(
        "{}, {} {} {}:{}:{}.{}",
        &jid[0..4],
        MONTHS[month - 1],
        &jid[6..8],
        &jid[8..10],
        &jid[10..12],
        &jid[12..14],
        &jid[14..20]
    )
}

/// A jid is valid job id text.
pub fn valid_jid(jid: &str) -> bool {
    Jid::parse(jid).is_some()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_jid_gives_back_its_time() {
        for t in [
            0u64,
            1_700_000_000_123_456,
            1_796_668_812_161_342,
            951_782_400_000_001, // 2000-02-29
            4_102_444_799_999_999,
        ] {
            let jid = Jid::from_unix_micros(t);
            assert_eq!(unix_micros(jid.as_str()), Some(t), "{jid}");
            assert_eq!(unix_micros(&format!("{jid}_4242")), Some(t));
        }
        assert_eq!(unix_micros("2026120718"), None);
        assert_eq!(unix_micros("20261307184124847145"), None);
        assert_eq!(unix_micros("2026120718412484714x"), None);
    }

    #[test]
    fn formats_like_salt() {
        // 2026-11-27T01:56:50.747396Z, the jid of the captured 3007 test.ping.
        let micros = 1_795_744_610_747_396;
        assert_eq!(
            Jid::from_unix_micros(micros).as_str(),
            "20261127015650747396"
        );
        assert_eq!(iso_stamp(micros), "2026-11-27T01:56:50.747396");
        assert_eq!(Jid::from_unix_micros(0).as_str(), "19700101000000000000");
        assert_eq!(
            Jid::from_unix_micros(951_782_400_000_000).as_str(),
            "20000229000000000000"
        );
    }

    #[test]
    fn validates() {
        assert!(Jid::parse("20261127015650747396").is_some());
        assert!(Jid::parse("20261127015650747396_1234").is_some());
        assert!(Jid::parse("2026112701565074739").is_none());
        assert!(Jid::parse("../../etc/passwd0000").is_none());
        assert!(Jid::parse("20261127015650747396_../x").is_none());
        assert!(Jid::parse("req").is_none());
    }

    #[test]
    fn generator_is_strictly_increasing() {
        let mut g = JidGenerator::default();
        let a = g.next_jid(1_000_000);
        let b = g.next_jid(1_000_000);
        let c = g.next_jid(999_999);
        assert!(a < b && b < c);
        let mut u = JidGenerator::with_suffix("4242");
        let j = u.next_jid(1_795_744_610_747_396);
        assert_eq!(j.as_str(), "20261127015650747396_4242");
        assert_eq!(Jid::parse(j.as_str()), Some(j));
    }
}
