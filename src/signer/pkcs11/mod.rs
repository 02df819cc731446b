//! PKCS#11 keys, through `cryptoki`.
//!
//! A [`Pkcs11Key`] names its module (the vendor's `.so`), its token (by label or slot) and its
//! key (by label and/or id). It logs in once per token on a dedicated *anchor* session that
//! stays open for as long as the connection lives — PKCS#11 keeps the login state per
//! application and token, and drops it when the last session closes — and signs on a bounded
//! pool of read-only sessions, on the caller's (blocking) thread.
//!
//! vigil reaches every `[[hsm]]` key through a [`HostedKey`]: a `vigil pkcs11-host` process of
//! its own, started with the entry's `module_env` in its environment, runs the [`Pkcs11Key`]
//! and answers over its stdin and stdout ([`protocol`]). The process environment of vigil is
//! never changed at run time, each entry gets the environment its module reads, and a call
//! stuck in a module is ended by killing its host.
//!
//! Mechanisms (PKCS#11 v2.40 §2.3.6 and §2.1.6):
//! - ECDSA P-256 / P-384: vigil hashes (SHA-256 / SHA-384), the token signs the digest with
//!   `CKM_ECDSA`, and the raw `r || s` it returns is re-encoded as the DER `ECDSA-Sig-Value`
//!   that X.509 and OCSP carry (RFC 5480 §2.2 / RFC 5758 §3.2).
//! - RSA: `CKM_SHA256_RSA_PKCS` where the token offers it, otherwise `CKM_RSA_PKCS` over the
//!   DER `DigestInfo` for SHA-256 that vigil builds (RFC 8017 §9.2).
//!
//! Files: `error` (what went wrong, by what to do), `pin`, `spec` (what names a key),
//! `module` (loading and re-initialising a module), `session` (one login and its sessions),
//! `key` ([`Pkcs11Key`]), `encoding` (DER of keys and signatures), `inventory`
//! (`vigil hsm list`), `protocol` (the host's frames) and `host` (both ends of the host).

use std::sync::{Mutex, MutexGuard};

pub use cryptoki::types::AuthPin;

mod encoding;
mod error;
pub mod host;
mod inventory;
mod key;
mod module;
mod pin;
pub mod protocol;
mod session;
mod spec;

pub use encoding::{ecdsa_raw_to_der, sha256_digest_info};
use error::lost;
pub use error::{HsmError, ckr_name, classify};
pub use host::{
    HOST_SUBCOMMAND, HostOptions, HostedKey, ModuleListing, configure_hosts, list_module, run_host,
};
pub use inventory::{ObjectListing, TokenListing, list_tokens};
pub use key::{KeyDescription, Pkcs11Key};
pub use module::{Instance, Module};
pub use pin::{PinError, PinSource, read_pin};
pub use spec::{KeySelector, KeySpec, RsaMechanism, TokenSelector};

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding one of these locks leaves plain data behind; carry on with it.
    m.lock().unwrap_or_else(|e| e.into_inner())
}
