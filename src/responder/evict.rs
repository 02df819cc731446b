//! Dropping cached responses after status changes, and remembering the changed certificates
//! so their next signature goes first.

use der::Encode;
use der::asn1::{Null, OctetString};
use spki::AlgorithmIdentifierOwned;
use x509_cert::serial_number::SerialNumber;
use x509_ocsp::CertId;

use super::Responder;
use crate::ocsp::HashAlgorithm;
use crate::ocsp::request::plain_request_der;
use crate::pki::Issuer;
use crate::status::{IssuerId, Serial};

impl Responder {
    /// Drops every cached form of one certificate's response (after its status changed), and
    /// remembers the certificate as changed, so its next signature goes first.
    pub async fn evict(&self, issuer: IssuerId, serial: &Serial) {
        self.drop_cached(issuer, serial, true).await;
    }

    /// [`Responder::evict`] for changes read in bulk (a snapshot scan, a re-read): the
    /// certificate counts as changed only where a response of it was cached, so a bootstrap of
    /// a million records no client has asked about costs lookups, not a million insertions.
    pub async fn evict_cached(&self, issuer: IssuerId, serial: &Serial) {
        self.drop_cached(issuer, serial, false).await;
    }

    /// [`Responder::evict_cached`] for many certificates at once (a feed read of a mass
    /// revocation). Per certificate that is eight CertID forms encoded and looked up in both
    /// caches; once the certificates outnumber a quarter of what is cached, one pass over the
    /// cached entries (each one's serial against the set of changed ones) costs less.
    pub async fn evict_bulk(&self, certs: &[(IssuerId, Serial)]) {
        let cached = self.cache.entry_count() + self.front.approx_entry_count();
        if (certs.len() as u64).saturating_mul(4) <= cached {
            for (issuer, serial) in certs {
                self.evict_cached(*issuer, serial).await;
            }
            return;
        }
        type Set<T> = std::collections::HashSet<T, foldhash::fast::RandomState>;
        let mut changed: Set<(usize, Serial)> = Set::default();
        let mut serials: Set<Serial> = Set::default();
        for (issuer, serial) in certs {
            if let Some(i) = self
                .issuers
                .iter()
                .position(|s| s.issuer.hashes.id == *issuer)
            {
                changed.insert((i, *serial));
                serials.insert(*serial);
            }
        }
        let mut hit: Set<(usize, Serial)> = Set::default();
        for (key, index, serial) in self.front.entries() {
            if changed.contains(&(index, serial)) {
                self.front.invalidate(&key).await;
                hit.insert((index, serial));
            }
        }
        let mut stale = Vec::new();
        for key in self.cache.keys() {
            let Some(serial) = <CertId as der::Decode>::from_der(&key)
                .ok()
                .and_then(|id| Serial::from_der_content(id.serial_number.as_bytes()).ok())
            else {
                continue;
            };
            if serials.contains(&serial) {
                stale.push(key);
                // The CertID's issuer is not matched here: a serial changed under one issuer
                // may drop another issuer's entry of the same serial, which is only re-signed.
                hit.extend(
                    (0..self.issuers.len())
                        .map(|i| (i, serial))
                        .filter(|c| changed.contains(c)),
                );
            }
        }
        for key in stale {
            self.cache.invalidate(&key).await;
        }
        for c in hit {
            self.changed.insert(c, ()).await;
        }
    }

    async fn drop_cached(&self, issuer: IssuerId, serial: &Serial, always_changed: bool) {
        let Some((index, state)) = self
            .issuers
            .iter()
            .enumerate()
            .find(|(_, s)| s.issuer.hashes.id == issuer)
        else {
            return;
        };
        let mut any_cached = false;
        // Only what is cached is invalidated; a hit is checked against the view anyway.
        for key in cert_id_forms(&state.issuer, serial) {
            let front = plain_request_der(&key);
            if self.front.contains(&front) {
                self.front.invalidate(&front).await;
            }
            let cached = self.cache.contains(&key);
            if cached {
                self.cache.invalidate(&key).await;
            }
            any_cached |= cached;
        }
        if any_cached || always_changed {
            self.changed.insert((index, *serial), ()).await;
        }
    }
}

/// Every DER form of a CertID for this certificate that the decoder accepts: each supported
/// hash, with NULL or absent parameters.
pub fn cert_id_forms(issuer: &Issuer, serial: &Serial) -> Vec<Vec<u8>> {
    let Ok(serial_number) = SerialNumber::new(serial.as_der_content()) else {
        return Vec::new();
    };
    let mut out = Vec::with_capacity(8);
    for alg in HashAlgorithm::ALL {
        for null in [true, false] {
            let id = CertId {
                hash_algorithm: AlgorithmIdentifierOwned {
                    oid: alg.oid(),
                    parameters: null.then(|| Null.into()),
                },
                issuer_name_hash: match OctetString::new(issuer.hashes.name_hash(alg)) {
                    Ok(o) => o,
                    Err(_) => continue,
                },
                issuer_key_hash: match OctetString::new(issuer.hashes.key_hash(alg)) {
                    Ok(o) => o,
                    Err(_) => continue,
                },
                serial_number: serial_number.clone(),
            };
            if let Ok(der) = id.to_der() {
                out.push(der);
            }
        }
    }
    out
}
