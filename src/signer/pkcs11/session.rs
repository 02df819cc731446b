//! One login on one token: the anchor session that holds it, the key handle, and a bounded
//! pool of signing sessions, with the start time of every `C_Sign` in flight.

use std::borrow::Cow;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

use cryptoki::mechanism::Mechanism;
use cryptoki::object::ObjectHandle;
use cryptoki::session::Session;
use cryptoki::slot::Slot;

use super::encoding::{ecdsa_raw_to_der, sha256_digest_info};
use super::module::Instance;
use super::{HsmError, lock, lost};
use crate::signer::SignatureAlgorithm;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum SignMechanism {
    /// `CKM_ECDSA` over a digest made in vigil; `field` is the size of r and s in bytes.
    Ecdsa { field: usize },
    /// `CKM_SHA256_RSA_PKCS` over the message.
    Sha256RsaPkcs,
    /// `CKM_RSA_PKCS` over the SHA-256 DigestInfo.
    RsaPkcsDigestInfo,
}

impl SignMechanism {
    pub(super) fn name(self) -> &'static str {
        match self {
            SignMechanism::Ecdsa { .. } => "CKM_ECDSA",
            SignMechanism::Sha256RsaPkcs => "CKM_SHA256_RSA_PKCS",
            SignMechanism::RsaPkcsDigestInfo => "CKM_RSA_PKCS (DigestInfo)",
        }
    }
}

pub(super) struct SessionSlots {
    pub(super) idle: Vec<Session>,
    pub(super) open: usize,
}

/// One login on one token: the anchor session holding the login, the key handle, and the
/// signing sessions.
pub(super) struct Connection {
    pub(super) instance: Arc<Instance>,
    pub(super) generation: u64,
    pub(super) slot: Slot,
    pub(super) token_label: String,
    pub(super) key: ObjectHandle,
    pub(super) mechanism: SignMechanism,
    pub(super) algorithm: SignatureAlgorithm,
    pub(super) public_key: Vec<u8>,
    pub(super) anchor: Mutex<Option<Session>>,
    pub(super) sessions: Mutex<SessionSlots>,
    pub(super) returned: Condvar,
    pub(super) max_sessions: usize,
    /// A call on this connection reported a lost device, session or connection.
    pub(super) lost: AtomicBool,
    /// Start times ([`micros_now`]) of the `C_Sign` calls in flight, one slot per session;
    /// 0 is a free slot. Lets a caller see that a call has not come back.
    pub(super) calls: Box<[AtomicU64]>,
}

/// Microseconds since the first call, plus one (0 means "no call").
fn micros_now() -> u64 {
    static BASE: OnceLock<Instant> = OnceLock::new();
    BASE.get_or_init(Instant::now).elapsed().as_micros() as u64 + 1
}

/// One `C_Sign` in flight, recorded in a [`Connection::calls`] slot until dropped.
struct CallInFlight<'a>(Option<&'a AtomicU64>);

impl Drop for CallInFlight<'_> {
    fn drop(&mut self) {
        if let Some(slot) = self.0 {
            slot.store(0, Ordering::Release);
        }
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        let lost = self.lost.load(Ordering::Acquire);
        let idle: Vec<Session> = std::mem::take(&mut lock(&self.sessions).idle);
        for s in idle {
            self.instance.discard(self.generation, s, lost);
        }
        if let Some(a) = lock(&self.anchor).take() {
            self.instance.discard(self.generation, a, lost);
        }
    }
}

impl Connection {
    fn checkout(&self, wait: Duration) -> Result<Session, HsmError> {
        let deadline = Instant::now() + wait;
        let mut slots = lock(&self.sessions);
        loop {
            if let Some(s) = slots.idle.pop() {
                return Ok(s);
            }
            if slots.open < self.max_sessions {
                slots.open += 1;
                drop(slots);
                let opened = {
                    let st = self.instance.read();
                    if !st.initialized || st.generation != self.generation {
                        Err(HsmError::Lost("the module was re-initialised".into()))
                    } else {
                        self.instance
                            .context
                            .open_ro_session(self.slot)
                            .map_err(lost)
                    }
                };
                if let Err(e) = &opened {
                    if matches!(e, HsmError::Lost(_)) {
                        self.lost.store(true, Ordering::Release);
                    }
                    lock(&self.sessions).open -= 1;
                    self.returned.notify_one();
                }
                return opened;
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(HsmError::Busy(self.max_sessions));
            }
            slots = self
                .returned
                .wait_timeout(slots, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    fn checkin(&self, session: Session) {
        lock(&self.sessions).idle.push(session);
        self.returned.notify_one();
    }

    fn throw_away(&self, session: Session) {
        self.lost.store(true, Ordering::Release);
        lock(&self.sessions).open -= 1;
        self.returned.notify_one();
        self.instance.discard(self.generation, session, true);
    }

    /// Records a call in a free slot (there is one per session, and a call holds a session).
    fn call_started(&self) -> CallInFlight<'_> {
        let now = micros_now();
        CallInFlight(self.calls.iter().find(|slot| {
            slot.compare_exchange(0, now, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
        }))
    }

    /// How long the oldest call in flight has been waiting for the token.
    pub(super) fn oldest_call(&self) -> Option<Duration> {
        let now = micros_now();
        self.calls
            .iter()
            .map(|slot| slot.load(Ordering::Acquire))
            .filter(|start| *start != 0)
            .min()
            .map(|start| Duration::from_micros(now.saturating_sub(start)))
    }

    pub(super) fn sign(&self, message: &[u8], wait: Duration) -> Result<Vec<u8>, HsmError> {
        let (mechanism, input): (Mechanism<'_>, Cow<'_, [u8]>) = match self.mechanism {
            SignMechanism::Ecdsa { .. } => {
                let alg = match self.algorithm {
                    SignatureAlgorithm::EcdsaP384Sha384 => &ring::digest::SHA384,
                    _ => &ring::digest::SHA256,
                };
                let d = ring::digest::digest(alg, message);
                (Mechanism::Ecdsa, Cow::Owned(d.as_ref().to_vec()))
            }
            SignMechanism::Sha256RsaPkcs => (Mechanism::Sha256RsaPkcs, Cow::Borrowed(message)),
            SignMechanism::RsaPkcsDigestInfo => {
                (Mechanism::RsaPkcs, Cow::Owned(sha256_digest_info(message)))
            }
        };
        let session = self.checkout(wait)?;
        let result = {
            let st = self.instance.read();
            if !st.initialized || st.generation != self.generation {
                Err(HsmError::Lost("the module was re-initialised".into()))
            } else {
                let _call = self.call_started();
                session.sign(&mechanism, self.key, &input).map_err(lost)
            }
        };
        match result {
            Ok(raw) => {
                self.checkin(session);
                match self.mechanism {
                    SignMechanism::Ecdsa { field } => ecdsa_raw_to_der(&raw, field),
                    _ => Ok(raw),
                }
            }
            Err(e) => {
                if matches!(e, HsmError::Lost(_)) {
                    self.throw_away(session);
                } else {
                    self.checkin(session);
                }
                Err(e)
            }
        }
    }
}
