//! What a minion does with each publish it receives, without I/O: the envelope, the master's
//! signature (`sign_pub_messages`), AES, the serial (replays), the job load, the target as this
//! minion evaluates it, and the jid (Salt's `minion_jid_queue_hwm` de-duplication).
//!
//! Shared by brine's minion and syndic links (brine-minion-side), the simulated minion of the
//! tests and the swarm. Nothing is logged here: a skipped publish says why ([`Skip`]), and the
//! caller decides what is worth a log line.

use std::collections::VecDeque;

use crate::Value;
use crate::crypt::{Crypticle, CrypticleError, PublicKey, SerialCheck, SerialGuard};
use crate::envelope::Publish;
use crate::loads::JobLoad;
use crate::target::{self, Facts, NoNodegroups, TargetError};

/// Salt's `minion_jid_queue_hwm`: how many recent jids are remembered for de-duplication.
pub const JID_QUEUE: usize = 100;

/// The outcome of [`PublishDecoder::decode`].
#[derive(Debug)]
pub enum Feed {
    /// A job for this minion.
    Job(Box<JobLoad>),
    /// Nothing to run, and why.
    Skip(Skip),
    /// The publish did not verify with the current AES key: re-authenticate and decode this
    /// payload again.
    Rekey(Vec<u8>),
}

/// Why a publish was not run.
#[derive(Debug, Clone, PartialEq)]
pub enum Skip {
    /// Not an `aes` publish envelope.
    NotEnvelope,
    /// `sign_pub_messages` is on and the master's signature is missing or wrong.
    BadSignature,
    /// The payload could not be decrypted or unpacked (other than a failing MAC).
    Undecryptable(String),
    /// A serial at or below the last one accepted.
    Replayed {
        /// The serial received.
        got: i64,
        /// The last serial accepted.
        last: i64,
    },
    /// The load lacks `tgt`, `jid`, `fun` or `arg`.
    NotAJob,
    /// The target does not match this minion.
    NotTargeted,
    /// The target cannot be evaluated here (the minion ignores the job, as Salt's does).
    TargetNotEvaluable(TargetError),
    /// The jid was seen recently.
    Duplicate,
}

impl Skip {
    /// Whether the publish failed a check a genuine master's publish passes (signature,
    /// decryption, replay): worth a warning and a count, where the others are routine.
    pub fn is_rejection(&self) -> bool {
        matches!(
            self,
            Self::NotEnvelope | Self::BadSignature | Self::Undecryptable(_) | Self::Replayed { .. }
        )
    }
}

impl std::fmt::Display for Skip {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::NotEnvelope => f.write_str("not an aes publish envelope"),
            Self::BadSignature => f.write_str("no valid master signature (sign_pub_messages)"),
            Self::Undecryptable(e) => write!(f, "undecryptable: {e}"),
            Self::Replayed { got, last } => write!(f, "replayed (serial {got}, last {last})"),
            Self::NotAJob => f.write_str("no tgt/jid/fun/arg"),
            Self::NotTargeted => f.write_str("not targeted at this minion"),
            Self::TargetNotEvaluable(e) => write!(f, "target not evaluable here: {e}"),
            Self::Duplicate => f.write_str("jid seen recently"),
        }
    }
}

/// Decodes one minion's publishes (see the module docs for the checks, in order).
#[derive(Debug)]
pub struct PublishDecoder {
    serials: SerialGuard,
    seen: VecDeque<String>,
    id: String,
    /// `sign_pub_messages`: the master key every publish must be signed with.
    pub verify_with: Option<PublicKey>,
    /// Pass every job on whatever its target (a syndic relays jobs for the minions below).
    pub relay: bool,
}

impl PublishDecoder {
    /// A decoder for minion `id`.
    pub fn new(id: &str) -> Self {
        Self {
            serials: SerialGuard::default(),
            seen: VecDeque::new(),
            id: id.to_owned(),
            verify_with: None,
            relay: false,
        }
    }

    /// Forget serials (a new AES key after re-authentication).
    pub fn reset_serials(&mut self) {
        self.serials.reset();
    }

    /// Decode one publish payload with the current AES key, for a minion with these grains
    /// and pillar.
    pub fn decode(
        &mut self,
        payload: &[u8],
        aes: &Crypticle,
        grains: &Value,
        pillar: &Value,
    ) -> Feed {
        let Ok(p) = Publish::decode(payload) else {
            return Feed::Skip(Skip::NotEnvelope);
        };
        if let Some(master) = &self.verify_with
            && !p.verify(master)
        {
            return Feed::Skip(Skip::BadSignature);
        }
        let mut load = match p.open(aes) {
            Ok(l) => l,
            Err(CrypticleError::BadMac) => return Feed::Rekey(payload.to_vec()),
            Err(e) => return Feed::Skip(Skip::Undecryptable(e.to_string())),
        };
        if let SerialCheck::Replayed { got, last } = self.serials.check(&mut load) {
            return Feed::Skip(Skip::Replayed { got, last });
        }
        let Ok(job) = JobLoad::from_value(&load) else {
            return Feed::Skip(Skip::NotAJob);
        };
        if !self.relay {
            let facts = Facts {
                id: &self.id,
                grains,
                pillar,
            };
            let delim = job.delimiter.clone().unwrap_or_else(|| ":".into());
            match target::matches(&job.tgt, job.tgt_type(), &delim, &facts, &NoNodegroups) {
                Ok(true) => {}
                Ok(false) => return Feed::Skip(Skip::NotTargeted),
                Err(e) => return Feed::Skip(Skip::TargetNotEvaluable(e)),
            }
        }
        if self.seen.contains(&job.jid) {
            return Feed::Skip(Skip::Duplicate);
        }
        if self.seen.len() >= JID_QUEUE {
            self.seen.pop_front();
        }
        self.seen.push_back(job.jid.clone());
        Feed::Job(Box::new(job))
    }
}

#[cfg(test)]
mod tests {
    use crate::codec;
    use crate::crypt::{CountingEntropy, PrivateKey, SigAlgo};
    use crate::jid::Jid;

    use super::*;

    fn publish(job: &JobLoad, aes: &Crypticle, rng: &mut CountingEntropy) -> Vec<u8> {
        let key = PrivateKey::generate(2048).unwrap();
        Publish::seal(
            &job.to_value(),
            aes,
            Some((&key, SigAlgo::Pkcs1v15Sha1)),
            rng,
        )
        .unwrap()
        .encode()
    }

    fn job(tgt: &str, jid_micros: u64, serial: i64) -> JobLoad {
        let mut j = JobLoad::new(
            "test.ping",
            vec![],
            Value::str(tgt),
            "glob",
            &Jid::from_unix_micros(jid_micros),
        );
        j.serial = Some(serial);
        j
    }

    #[test]
    fn hostile_and_stray_publishes_are_dropped() {
        let mut rng = CountingEntropy::default();
        let aes = Crypticle::generate(&mut rng);
        let grains = Value::map();
        let mut d = PublishDecoder::new("m1");
        // Garbage, truncated msgpack, a non-map, a clear envelope: skipped.
        for junk in [
            b"\xc1\xc1".to_vec(),
            vec![0xdf, 0xff, 0xff, 0xff, 0xff],
            codec::encode_wire(&Value::str("hello")),
            codec::encode_wire(&Value::map().with("enc", "clear").with("load", Value::map())),
            vec![0u8; 4096],
        ] {
            assert!(matches!(
                d.decode(&junk, &aes, &grains, &Value::Nil),
                Feed::Skip(_)
            ));
        }
        // Encrypted with another key (rotation, or forgery): ask for a re-auth.
        let other = Crypticle::generate(&mut rng);
        let p = publish(&job("m1", 1, 1), &other, &mut rng);
        assert!(matches!(
            d.decode(&p, &aes, &grains, &Value::Nil),
            Feed::Rekey(_)
        ));
        // A tampered blob fails its MAC the same way.
        let mut env = Publish::decode(&publish(&job("m1", 1, 1), &aes, &mut rng)).unwrap();
        let n = env.load.len();
        env.load[n / 2] ^= 0x55;
        assert!(matches!(
            d.decode(&env.encode(), &aes, &grains, &Value::Nil),
            Feed::Rekey(_)
        ));
        // A valid job for us; then its replay (same serial) and a duplicate jid are dropped.
        assert!(matches!(
            d.decode(
                &publish(&job("m1", 2, 5), &aes, &mut rng),
                &aes,
                &grains,
                &Value::Nil
            ),
            Feed::Job(_)
        ));
        assert!(matches!(
            d.decode(
                &publish(&job("m1", 3, 5), &aes, &mut rng),
                &aes,
                &grains,
                &Value::Nil
            ),
            Feed::Skip(Skip::Replayed { got: 5, last: 5 })
        ));
        assert!(matches!(
            d.decode(
                &publish(&job("m1", 2, 6), &aes, &mut rng),
                &aes,
                &grains,
                &Value::Nil
            ),
            Feed::Skip(Skip::Duplicate)
        ));
        // Not targeted at us; an unknown target type.
        assert!(matches!(
            d.decode(
                &publish(&job("web*", 4, 7), &aes, &mut rng),
                &aes,
                &grains,
                &Value::Nil
            ),
            Feed::Skip(Skip::NotTargeted)
        ));
        let mut weird = job("m1", 5, 8);
        weird.tgt_type = Some("bogus".into());
        assert!(matches!(
            d.decode(&publish(&weird, &aes, &mut rng), &aes, &grains, &Value::Nil),
            Feed::Skip(Skip::TargetNotEvaluable(_))
        ));
        // sign_pub_messages: unsigned or wrongly signed publishes are dropped.
        let master = PrivateKey::generate(2048).unwrap();
        d.verify_with = Some(master.public_key());
        assert!(matches!(
            d.decode(
                &publish(&job("m1", 7, 10), &aes, &mut rng),
                &aes,
                &grains,
                &Value::Nil
            ),
            Feed::Skip(Skip::BadSignature)
        ));
        let signed = Publish::seal(
            &job("m1", 8, 11).to_value(),
            &aes,
            Some((&master, SigAlgo::Pkcs1v15Sha1)),
            &mut rng,
        )
        .unwrap()
        .encode();
        assert!(matches!(
            d.decode(&signed, &aes, &grains, &Value::Nil),
            Feed::Job(_)
        ));
        d.verify_with = None;
        // And a good one still gets through afterwards.
        assert!(matches!(
            d.decode(
                &publish(&job("m*", 6, 12), &aes, &mut rng),
                &aes,
                &grains,
                &Value::Nil
            ),
            Feed::Job(_)
        ));
    }
}
