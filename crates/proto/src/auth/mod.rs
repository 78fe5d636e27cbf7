//! The `_auth` handshake and the authenticated request channel, for both sides.
//!
//! * [`minion`]: [`MinionAuth`] (a state machine: request, reply, pending retries, timeouts),
//!   and [`MinionSession`] for sealing requests once accepted.
//! * [`master`]: [`decide_auth`] (accept, pend, reject, deny, full, from the pki state and
//!   policy the caller supplies), [`open_request`] and [`seal_reply`] for the request channel,
//!   and [`pillar_reply`].

pub mod master;
pub mod minion;

pub use master::{
    AuthDecision, AuthPolicy, KeyAction, KeyState, MasterIdentity, OpenedRequest, Verdict,
    clear_signed, decide_auth, open_request, open_request_with, pillar_reply, seal_reply,
    valid_minion_id,
};
pub use minion::{
    AuthEvent, Credentials, KnownMaster, MinionAuth, MinionAuthConfig, MinionIdentity,
    MinionSession, SealedRequest,
};

use crate::codec::DecodeError;
use crate::crypt::{CrypticleError, RsaError};

/// Why an auth exchange or an authenticated request failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AuthError {
    /// The message is not msgpack.
    #[error("malformed msgpack: {0}")]
    Decode(#[from] DecodeError),
    /// A field is missing or of the wrong type.
    #[error("malformed auth message: {0}")]
    Malformed(&'static str),
    /// An RSA operation failed (unreadable key, undecryptable field).
    #[error("rsa: {0}")]
    Rsa(#[from] RsaError),
    /// A Crypticle operation failed (wrong session key, tampering, nonce).
    #[error("crypticle: {0}")]
    Crypticle(#[from] CrypticleError),
    /// A signature (PKCS#1 v1.5 or X9.31) does not verify.
    #[error("signature verification failed")]
    BadSignature,
    /// The reply's nonce is not the request's.
    #[error("nonce verification error")]
    NonceMismatch,
    /// `tok` or `token` missing or wrong.
    #[error("token verification failed")]
    BadToken,
    /// The envelope's id and the load's id differ.
    #[error("envelope id {envelope:?} differs from load id {load:?}")]
    IdMismatch {
        /// Id in the envelope.
        envelope: String,
        /// Id in the load.
        load: String,
    },
}

#[cfg(test)]
mod tests;
