//! [`Pkcs11Key`]: finds the token and the key, logs in, signs, reconnects.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use cryptoki::context::Pkcs11;
use cryptoki::error::{Error as CkError, RvError};
use cryptoki::mechanism::MechanismType;
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, UserType};
use cryptoki::slot::Slot;
use der::Decode;

use super::encoding::{ec_point, rsa_public_key_der};
use super::module::Module;
use super::session::{Connection, SessionSlots, SignMechanism};
use super::spec::{KeySelector, KeySpec, RsaMechanism, TokenSelector};
use super::{AuthPin, HsmError, classify, lock, lost};
use crate::signer::SignatureAlgorithm;
use crate::signer::software::MIN_RSA_BITS;
use const_oid::db::rfc5912;

/// A key on a PKCS#11 token: connects, signs, reconnects. Thread-safe; each signature uses
/// one session from a pool of at most [`KeySpec::sessions`].
pub struct Pkcs11Key {
    spec: KeySpec,
    module: Arc<Module>,
    pin: AuthPin,
    /// The subjectPublicKey the key must have: the certificate's.
    expected: Option<Vec<u8>>,
    connection: Mutex<Option<Arc<Connection>>>,
    /// Module generation of the last connection attempt.
    seen_generation: AtomicU64,
    healthy: AtomicBool,
}

/// What a connected key looks like.
#[derive(Debug, Clone)]
pub struct KeyDescription {
    /// The token's label.
    pub token_label: String,
    /// The slot id.
    pub slot: u64,
    /// The signature algorithm.
    pub algorithm: SignatureAlgorithm,
    /// The mechanism used.
    pub mechanism: &'static str,
    /// The subjectPublicKey BIT STRING contents.
    pub public_key: Vec<u8>,
}

impl Pkcs11Key {
    /// Loads the module (once per path in this process) and prepares the key; does not
    /// connect. The module reads this process's environment: a `module_env` is refused here
    /// (see [`super::HostedKey`]). `expected`: the public key the token's key must have (from the certificate).
    pub fn new(spec: KeySpec, pin: AuthPin, expected: Option<Vec<u8>>) -> Result<Self, HsmError> {
        if !spec.module_env.is_empty() {
            return Err(HsmError::Config(format!(
                "module {}: a module_env is applied by starting a host process with it (HostedKey); vigil never changes its own environment",
                spec.module.display()
            )));
        }
        let module = Module::load(&spec.module)?;
        let seen = module.instance().read().generation;
        Ok(Pkcs11Key {
            spec,
            module,
            pin,
            expected,
            connection: Mutex::new(None),
            seen_generation: AtomicU64::new(seen),
            healthy: AtomicBool::new(false),
        })
    }

    /// The configured name.
    pub fn name(&self) -> &str {
        &self.spec.name
    }

    /// The module this key is reached through.
    pub fn module(&self) -> &Arc<Module> {
        &self.module
    }

    /// Signs `message` (hashing it first for ECDSA / `CKM_RSA_PKCS`), waiting up to `wait`
    /// for a free session. ECDSA signatures come back DER-encoded.
    pub fn sign(&self, message: &[u8], wait: Duration) -> Result<Vec<u8>, HsmError> {
        let conn = lock(&self.connection)
            .clone()
            .ok_or_else(|| HsmError::Lost("not connected".into()))?;
        conn.sign(message, wait)
    }

    /// How long the oldest signature in flight on the current connection has been waiting
    /// for the token, if one is in flight. A call that never comes back (a network HSM gone
    /// silent) shows here, so the pool can take the key out of service.
    pub fn oldest_call(&self) -> Option<Duration> {
        lock(&self.connection).as_ref()?.oldest_call()
    }

    /// The connected key's description, if connected.
    pub fn description(&self) -> Option<KeyDescription> {
        lock(&self.connection).as_ref().map(|c| KeyDescription {
            token_label: c.token_label.clone(),
            slot: c.slot.id(),
            algorithm: c.algorithm,
            mechanism: c.mechanism.name(),
            public_key: c.public_key.clone(),
        })
    }

    /// Marks the key healthy or not (the module is re-initialised only when no key on it is
    /// healthy).
    pub fn set_healthy(&self, healthy: bool) {
        if self.healthy.swap(healthy, Ordering::AcqRel) != healthy {
            if healthy {
                self.module.healthy_keys.fetch_add(1, Ordering::AcqRel);
            } else {
                self.module.healthy_keys.fetch_sub(1, Ordering::AcqRel);
            }
        }
    }

    /// Drops the connection without another call into it (its sessions are forgotten), and
    /// marks its module instance as stuck.
    pub fn abandon(&self) {
        let old = lock(&self.connection).take();
        if let Some(c) = old {
            c.lost.store(true, Ordering::Release);
            c.instance.stuck.store(true, Ordering::Release);
        }
    }

    /// Drops the connection: closes its sessions (the login ends with the last one).
    pub fn disconnect(&self) {
        let old = lock(&self.connection).take();
        drop(old);
    }

    /// Connects: finds the token, logs in, finds the key and its public key, picks the
    /// mechanism, and checks the public key against the expected one.
    pub fn connect(&self) -> Result<KeyDescription, HsmError> {
        self.disconnect();
        let conn = self.open_connection()?;
        if let Some(expected) = &self.expected
            && &conn.public_key != expected
        {
            return Err(HsmError::Config(format!(
                "the key ({}) on token {:?} does not match the certificate's public key",
                self.spec.key.describe(),
                conn.token_label
            )));
        }
        let conn = Arc::new(conn);
        *lock(&self.connection) = Some(conn);
        self.description()
            .ok_or_else(|| HsmError::Lost("disconnected while connecting".into()))
    }

    /// Reconnects after a loss: a fresh connection, and, when that fails with a lost device
    /// and no other key on the module is healthy (or the module is not initialised),
    /// `C_Finalize` + `C_Initialize` of the module and one more attempt. When a call on the
    /// current connection has been waiting longer than `wait`, that connection is abandoned
    /// untouched (its sessions forgotten, not closed: closing would wait too) and the module is
    /// started again at once — afresh if the stuck call still holds it.
    ///
    /// `wait`: how long calls in flight get to return before the module is loaded afresh.
    pub fn recover(&self, wait: Duration) -> Result<KeyDescription, HsmError> {
        self.set_healthy(false);
        if self.oldest_call().is_some_and(|age| age >= wait)
            || self.module.instance().stuck.load(Ordering::Acquire)
        {
            self.abandon();
            let seen = self.seen_generation.load(Ordering::Acquire);
            self.module.reinitialize(seen, wait)?;
            return self.connect();
        }
        match self.connect() {
            Ok(d) => Ok(d),
            Err(HsmError::Lost(why)) => {
                let others_healthy = self.module.healthy_keys.load(Ordering::Acquire) > 0;
                let uninitialised = !self.module.instance().read().initialized
                    || why.contains("CKR_CRYPTOKI_NOT_INITIALIZED");
                if others_healthy && !uninitialised {
                    return Err(HsmError::Lost(why));
                }
                self.disconnect();
                let seen = self.seen_generation.load(Ordering::Acquire);
                self.module.reinitialize(seen, wait)?;
                self.connect()
            }
            Err(e) => Err(e),
        }
    }

    fn open_connection(&self) -> Result<Connection, HsmError> {
        let instance = self.module.instance();
        let st = instance.read();
        if !st.initialized {
            return Err(HsmError::Lost(
                "the module is not initialised (CKR_CRYPTOKI_NOT_INITIALIZED)".into(),
            ));
        }
        let generation = st.generation;
        self.seen_generation.store(generation, Ordering::Release);
        let ctx = &instance.context;
        let (slot, token_label) = find_token(ctx, &self.spec.token)?;
        let info = ctx.get_token_info(slot).map_err(lost)?;
        let anchor = ctx.open_ro_session(slot).map_err(lost)?;
        let found =
            self.log_in_and_find_key(ctx, slot, &token_label, info.login_required(), &anchor);
        let (key, algorithm, public_key, mechanism) = match found {
            Ok(f) => f,
            Err(e) => {
                if matches!(e, HsmError::Lost(_)) {
                    // Closing on a lost device only fails; the handle dies with the module.
                    std::mem::forget(anchor);
                }
                return Err(e);
            }
        };
        drop(st);
        Ok(Connection {
            instance: instance.clone(),
            generation,
            slot,
            token_label,
            key,
            mechanism,
            algorithm,
            public_key,
            anchor: Mutex::new(Some(anchor)),
            sessions: Mutex::new(SessionSlots {
                idle: Vec::new(),
                open: 0,
            }),
            returned: Condvar::new(),
            max_sessions: self.spec.sessions.max(1),
            lost: AtomicBool::new(false),
            calls: (0..self.spec.sessions.max(1))
                .map(|_| AtomicU64::new(0))
                .collect(),
        })
    }

    /// Logs in on `anchor` (once per token: the login holds while any session is open) and
    /// finds the key, its public key and the mechanism.
    fn log_in_and_find_key(
        &self,
        ctx: &Pkcs11,
        slot: Slot,
        token_label: &str,
        login_required: bool,
        anchor: &Session,
    ) -> Result<(ObjectHandle, SignatureAlgorithm, Vec<u8>, SignMechanism), HsmError> {
        if login_required {
            match anchor.login(UserType::User, Some(&self.pin)) {
                Ok(()) | Err(CkError::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => {}
                Err(e) => return Err(classify(&e)),
            }
        }
        let keys = anchor
            .find_objects(&self.spec.key.template(ObjectClass::PRIVATE_KEY))
            .map_err(lost)?;
        let key = match keys.as_slice() {
            [k] => *k,
            [] => {
                return Err(HsmError::Config(format!(
                    "no private key with {} on token {token_label:?}",
                    self.spec.key.describe()
                )));
            }
            many => {
                return Err(HsmError::Config(format!(
                    "{} private keys match {} on token {token_label:?}; set both key_label and key_id",
                    many.len(),
                    self.spec.key.describe()
                )));
            }
        };
        let (algorithm, public_key) = read_public_key(anchor, key, &self.spec.key)?;
        let mechanism = match algorithm {
            SignatureAlgorithm::EcdsaP256Sha256 => SignMechanism::Ecdsa { field: 32 },
            SignatureAlgorithm::EcdsaP384Sha384 => SignMechanism::Ecdsa { field: 48 },
            SignatureAlgorithm::RsaPkcs1Sha256 => match self.spec.rsa_mechanism {
                RsaMechanism::Sha256RsaPkcs => SignMechanism::Sha256RsaPkcs,
                RsaMechanism::RsaPkcs => SignMechanism::RsaPkcsDigestInfo,
                RsaMechanism::Auto => {
                    let list = ctx.get_mechanism_list(slot).map_err(lost)?;
                    if list.contains(&MechanismType::SHA256_RSA_PKCS) {
                        SignMechanism::Sha256RsaPkcs
                    } else if list.contains(&MechanismType::RSA_PKCS) {
                        SignMechanism::RsaPkcsDigestInfo
                    } else {
                        return Err(HsmError::Config(format!(
                            "token {token_label:?} offers neither CKM_SHA256_RSA_PKCS nor CKM_RSA_PKCS"
                        )));
                    }
                }
            },
        };
        Ok((key, algorithm, public_key, mechanism))
    }
}

fn find_token(ctx: &Pkcs11, selector: &TokenSelector) -> Result<(Slot, String), HsmError> {
    let slots = ctx.get_slots_with_token().map_err(lost)?;
    let mut seen = Vec::new();
    for slot in slots {
        let label = match ctx.get_token_info(slot) {
            Ok(i) => i.label().trim_end().to_owned(),
            Err(e) => {
                let e = classify(&e);
                if matches!(e, HsmError::Lost(_))
                    && matches!(selector, TokenSelector::Slot(id) if *id == slot.id())
                {
                    return Err(e);
                }
                continue;
            }
        };
        let hit = match selector {
            TokenSelector::Label(l) => l.trim_end() == label,
            TokenSelector::Slot(id) => *id == slot.id(),
        };
        if hit {
            return Ok((slot, label));
        }
        seen.push(label);
    }
    let wanted = match selector {
        TokenSelector::Label(l) => format!("no token labelled {l:?} is present"),
        TokenSelector::Slot(id) => format!("no token is present in slot {id}"),
    };
    Err(HsmError::Lost(format!(
        "{wanted} (tokens present: {})",
        if seen.is_empty() {
            "none".into()
        } else {
            seen.join(", ")
        }
    )))
}

fn attribute_bytes(attrs: &[Attribute], want: AttributeType) -> Option<Vec<u8>> {
    attrs.iter().find_map(|a| match (a, want) {
        (Attribute::EcParams(v), AttributeType::EcParams)
        | (Attribute::EcPoint(v), AttributeType::EcPoint)
        | (Attribute::Modulus(v), AttributeType::Modulus)
        | (Attribute::PublicExponent(v), AttributeType::PublicExponent) => Some(v.clone()),
        _ => None,
    })
}

/// Reads the key type and public key: from the public key object with the same label / id,
/// or (RSA) from the private key's own modulus and exponent.
fn read_public_key(
    session: &Session,
    private: ObjectHandle,
    selector: &KeySelector,
) -> Result<(SignatureAlgorithm, Vec<u8>), HsmError> {
    let key_type = session
        .get_attributes(private, &[AttributeType::KeyType])
        .map_err(lost)?
        .into_iter()
        .find_map(|a| match a {
            Attribute::KeyType(t) => Some(t),
            _ => None,
        })
        .ok_or_else(|| HsmError::Config("the private key has no CKA_KEY_TYPE".into()))?;
    let public = session
        .find_objects(&selector.template(ObjectClass::PUBLIC_KEY))
        .map_err(lost)?;
    if key_type == KeyType::EC {
        let handle = public.first().copied().ok_or_else(|| {
            HsmError::Config(format!(
                "no public key object with {} next to the EC private key (import it: pkcs11-tool --write-object pub.der --type pubkey)",
                selector.describe()
            ))
        })?;
        let attrs = session
            .get_attributes(handle, &[AttributeType::EcParams, AttributeType::EcPoint])
            .map_err(lost)?;
        let params = attribute_bytes(&attrs, AttributeType::EcParams)
            .ok_or_else(|| HsmError::Config("the EC public key has no CKA_EC_PARAMS".into()))?;
        let point = attribute_bytes(&attrs, AttributeType::EcPoint)
            .ok_or_else(|| HsmError::Config("the EC public key has no CKA_EC_POINT".into()))?;
        let curve = const_oid::ObjectIdentifier::from_der(&params)
            .map_err(|_| HsmError::Config("CKA_EC_PARAMS is not a named curve OID".into()))?;
        let (alg, field) = if curve == rfc5912::SECP_256_R_1 {
            (SignatureAlgorithm::EcdsaP256Sha256, 32)
        } else if curve == rfc5912::SECP_384_R_1 {
            (SignatureAlgorithm::EcdsaP384Sha384, 48)
        } else {
            return Err(HsmError::Config(format!(
                "EC curve {curve} is not supported (P-256 and P-384 are)"
            )));
        };
        Ok((alg, ec_point(&point, field)?))
    } else if key_type == KeyType::RSA {
        let wanted = [AttributeType::Modulus, AttributeType::PublicExponent];
        let mut attrs = match public.first() {
            Some(h) => session.get_attributes(*h, &wanted).map_err(lost)?,
            None => Vec::new(),
        };
        if attribute_bytes(&attrs, AttributeType::Modulus).is_none() {
            attrs = session.get_attributes(private, &wanted).map_err(lost)?;
        }
        let n = attribute_bytes(&attrs, AttributeType::Modulus)
            .ok_or_else(|| HsmError::Config("cannot read the RSA modulus".into()))?;
        let e = attribute_bytes(&attrs, AttributeType::PublicExponent)
            .ok_or_else(|| HsmError::Config("cannot read the RSA public exponent".into()))?;
        let bits = n.iter().skip_while(|b| **b == 0).count() * 8;
        if bits < MIN_RSA_BITS {
            return Err(HsmError::Config(format!(
                "RSA key has about {bits} bits, at least {MIN_RSA_BITS} are required"
            )));
        }
        Ok((
            SignatureAlgorithm::RsaPkcs1Sha256,
            rsa_public_key_der(&n, &e)?,
        ))
    } else {
        Err(HsmError::Config(format!(
            "key type {key_type} is not supported (EC P-256/P-384 and RSA are)"
        )))
    }
}
