//! Keys and signing for unit tests of the pure core (`ocsp/`, `crl/`), which import no signer
//! themselves: a test there gets its CA and signatures from here.

use der::Decode;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose,
    PKCS_ECDSA_P256_SHA256,
};
use x509_cert::Certificate;

use crate::crl::{CrlError, CrlIssuer, CrlSpec, Entry};
use crate::signer::{Signer, SoftwareSigner};

/// A P-256 CA (with cRLSign) and its key as a signer.
pub fn ca() -> (Certificate, SoftwareSigner) {
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).expect("keygen");
    let mut p = CertificateParams::default();
    p.distinguished_name.push(DnType::CommonName, "test CA");
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let cert = p.self_signed(&key).expect("self-sign");
    let ca = Certificate::from_der(cert.der()).expect("parse");
    let signer = SoftwareSigner::from_pem(key.serialize_pem().as_bytes(), "test").expect("key");
    (ca, signer)
}

/// `message` signed by `signer`, on this thread.
pub fn sign(signer: &dyn Signer, message: &[u8]) -> Vec<u8> {
    signer.sign(message).expect("sign")
}

/// A CRL built and signed on this thread; the build's own errors come back as they are.
pub fn signed_crl(
    issuer: &CrlIssuer,
    spec: &CrlSpec<'_>,
    entries: &mut [Entry],
    signer: &dyn Signer,
) -> Result<Vec<u8>, CrlError> {
    let tbs = crate::crl::tbs(issuer, spec, entries, signer.algorithm())?;
    Ok(tbs.assemble(&sign(signer, &tbs.message())))
}
