//! Issuer matching: a CertID names its issuer by hashes of the issuer's subject name and
//! public key (RFC 6960 §4.1.1). Both are precomputed for every supported hash.

use std::collections::HashMap;

use super::HashAlgorithm;
use crate::status::IssuerId;

/// The name and key hashes of one issuer under every supported algorithm.
#[derive(Debug, Clone)]
pub struct IssuerHashes {
    /// SHA-256 of the subjectPublicKey BIT STRING contents: the issuer's stable id.
    pub id: IssuerId,
    name: Vec<(HashAlgorithm, Vec<u8>)>,
    key: Vec<(HashAlgorithm, Vec<u8>)>,
}

impl IssuerHashes {
    /// Computes the hashes from the issuer's subject Name (DER) and subjectPublicKey contents.
    pub fn new(subject_der: &[u8], public_key: &[u8]) -> Self {
        let mut id = [0u8; 32];
        id.copy_from_slice(&HashAlgorithm::Sha256.digest(public_key));
        IssuerHashes {
            id: IssuerId(id),
            name: HashAlgorithm::ALL
                .iter()
                .map(|a| (*a, a.digest(subject_der)))
                .collect(),
            key: HashAlgorithm::ALL
                .iter()
                .map(|a| (*a, a.digest(public_key)))
                .collect(),
        }
    }

    /// issuerNameHash under `alg`.
    pub fn name_hash(&self, alg: HashAlgorithm) -> &[u8] {
        pick(&self.name, alg)
    }

    /// issuerKeyHash under `alg`.
    pub fn key_hash(&self, alg: HashAlgorithm) -> &[u8] {
        pick(&self.key, alg)
    }
}

fn pick(v: &[(HashAlgorithm, Vec<u8>)], alg: HashAlgorithm) -> &[u8] {
    v.iter()
        .find(|(a, _)| *a == alg)
        .map(|(_, h)| h.as_slice())
        .unwrap_or(&[])
}

/// Finds the configured issuer a CertID names.
#[derive(Debug, Default)]
pub struct IssuerMatcher {
    /// Key hash (any algorithm; lengths differ) → (algorithm, issuer index).
    by_key: HashMap<Vec<u8>, (HashAlgorithm, usize)>,
    hashes: Vec<IssuerHashes>,
}

impl IssuerMatcher {
    /// Indexes `issuers`; the position in the slice is what [`IssuerMatcher::find`] returns.
    pub fn new(issuers: Vec<IssuerHashes>) -> Self {
        let mut by_key = HashMap::new();
        for (i, h) in issuers.iter().enumerate() {
            for alg in HashAlgorithm::ALL {
                by_key.insert(h.key_hash(alg).to_vec(), (alg, i));
            }
        }
        IssuerMatcher {
            by_key,
            hashes: issuers,
        }
    }

    /// The index of the issuer with this key hash and name hash, if configured.
    pub fn find(&self, alg: HashAlgorithm, name_hash: &[u8], key_hash: &[u8]) -> Option<usize> {
        let (found_alg, i) = *self.by_key.get(key_hash)?;
        (found_alg == alg && self.hashes[i].name_hash(alg) == name_hash).then_some(i)
    }

    /// The hashes of issuer `i`.
    pub fn hashes(&self, i: usize) -> &IssuerHashes {
        &self.hashes[i]
    }
}
