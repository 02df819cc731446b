//! Loading issuers: CA certificates, responder certificates and keys, checked once at start-up
//! so a wrong file is a clear error before any port binds, never a broken signature later.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use const_oid::db::rfc5280;
use der::{Decode, Encode};
use x509_cert::Certificate;
use x509_cert::ext::pkix::{ExtendedKeyUsage, KeyUsage, KeyUsages};
use x509_ocsp::ResponderId;

use crate::config::{IssuerConfig, ResponderIdKind};
use crate::ocsp::response::ResponderProfile;
use crate::ocsp::{IssuerHashes, OID_KP_OCSP_SIGNING, OID_NOCHECK};
use crate::signer::{Signer, SoftwareSigner};
use crate::status::Serial;
use crate::status::UnissuedPolicy;

/// Why a certificate could not be read or an issuer could not be loaded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PkiError {
    /// A file could not be read.
    #[error("reading {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// What is wrong with the contents of a file.
    #[error("{}: {source}", path.display())]
    InFile {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        source: Box<PkiError>,
    },
    /// Not PEM text.
    #[error("not PEM: {0}")]
    NotPem(pem_rfc7468::Error),
    /// PEM, but of something other than a certificate.
    #[error("expected a CERTIFICATE, found {0}")]
    NotCertificate(String),
    /// A DER structure (`what`) did not decode or encode.
    #[error("{what}: {source}")]
    Der {
        /// Which structure.
        what: &'static str,
        /// Why.
        source: der::Error,
    },
    /// The certificate's serial is not one vigil can record.
    #[error("certificate serial: {0}")]
    Serial(#[from] crate::status::SerialError),
    /// A signature could not be checked (an algorithm and key vigil does not verify).
    #[error(transparent)]
    Signature(#[from] crate::crl::lint::UnsupportedAlgorithm),
    /// The responder certificate is not one the CA delegated OCSP signing to.
    #[error("{0}")]
    NotDelegated(&'static str),
    /// The issuer signs through HSMs and has no software key.
    #[error("responder_key is not set (the issuer signs through HSMs)")]
    NoResponderKey,
    /// The software key did not load.
    #[error(transparent)]
    Key(#[from] crate::signer::software::KeyError),
    /// The signing key is not the one in the signing certificate.
    #[error("the key of {signer} does not match the {certificate} certificate's public key")]
    KeyMismatch {
        /// The signer's description.
        signer: String,
        /// `responder` or `CA`.
        certificate: &'static str,
    },
    /// The responder profile could not be built.
    #[error(transparent)]
    Profile(#[from] crate::ocsp::OcspError),
    /// Something about one configured issuer.
    #[error("issuer {issuer}: {source}")]
    Issuer {
        /// The issuer's configured name.
        issuer: String,
        /// What is wrong.
        source: Box<PkiError>,
    },
}

impl PkiError {
    fn in_file(path: &Path) -> impl FnOnce(PkiError) -> PkiError + '_ {
        |e| PkiError::InFile {
            path: path.to_owned(),
            source: Box::new(e),
        }
    }

    fn of_issuer(cfg: &IssuerConfig) -> impl Fn(PkiError) -> PkiError + '_ {
        |e| PkiError::Issuer {
            issuer: cfg.name.clone(),
            source: Box::new(e),
        }
    }
}

/// One issuer vigil answers for.
pub struct Issuer {
    /// Configured name.
    pub name: String,
    /// The CA certificate.
    pub certificate: Certificate,
    /// Its DER.
    pub certificate_der: Vec<u8>,
    /// Name and key hashes for CertID matching.
    pub hashes: IssuerHashes,
    /// How the responder is named and what its responses carry (plain data).
    pub profile: ResponderProfile,
    /// The key that signs its OCSP responses (the profile's algorithm is this key's).
    pub signer: Arc<dyn Signer>,
    /// The responder certificate, when delegated.
    pub responder_certificate: Option<Certificate>,
    /// Answer for unissued serials.
    pub unissued: UnissuedPolicy,
    /// Holds are answered (certificateHold) for this issuer.
    pub allow_hold: bool,
}

impl Issuer {
    /// notAfter of the certificate whose key signs responses (responder, else CA), Unix seconds.
    pub fn signing_certificate_not_after(&self) -> i64 {
        let c = self
            .responder_certificate
            .as_ref()
            .unwrap_or(&self.certificate);
        c.tbs_certificate
            .validity
            .not_after
            .to_unix_duration()
            .as_secs() as i64
    }
}

/// Reads the first certificate of a PEM file.
pub fn read_certificate(path: &Path) -> Result<Certificate, PkiError> {
    let text = std::fs::read(path).map_err(|source| PkiError::Read {
        path: path.to_owned(),
        source,
    })?;
    certificate_from_pem(&text).map_err(PkiError::in_file(path))
}

/// The first certificate of PEM text.
pub fn certificate_from_pem(pem: &[u8]) -> Result<Certificate, PkiError> {
    let (label, der) = pem_rfc7468::decode_vec(pem).map_err(PkiError::NotPem)?;
    if label != "CERTIFICATE" {
        return Err(PkiError::NotCertificate(label.to_owned()));
    }
    Certificate::from_der(&der).map_err(|source| PkiError::Der {
        what: "bad certificate",
        source,
    })
}

/// A certificate's serial and notAfter (Unix seconds), as an issuance records them.
pub fn serial_and_not_after(cert: &Certificate) -> Result<(Serial, i64), PkiError> {
    let serial = Serial::from_der_content(cert.tbs_certificate.serial_number.as_bytes())?;
    let not_after = cert
        .tbs_certificate
        .validity
        .not_after
        .to_unix_duration()
        .as_secs() as i64;
    Ok((serial, not_after))
}

/// Loads and checks one issuer with a software key.
pub fn load_issuer(cfg: &IssuerConfig, id_kind: ResponderIdKind) -> Result<Issuer, PkiError> {
    let fail = PkiError::of_issuer(cfg);
    let path = cfg
        .ocsp_key
        .file()
        .ok_or_else(|| fail(PkiError::NoResponderKey))?;
    let key = SoftwareSigner::from_pem_file(path).map_err(|e| fail(e.into()))?;
    load_issuer_with_signer(cfg, id_kind, Arc::new(key))
}

/// The subjectPublicKey (BIT STRING contents) of the certificate whose key signs responses:
/// the responder certificate, else the CA certificate.
pub fn signing_public_key(cfg: &IssuerConfig) -> Result<Vec<u8>, PkiError> {
    certificate_public_key(
        cfg,
        cfg.responder_certificate
            .as_ref()
            .unwrap_or(&cfg.certificate),
    )
}

/// The subjectPublicKey (BIT STRING contents) of the CA certificate: the key that signs CRLs.
pub fn ca_public_key(cfg: &IssuerConfig) -> Result<Vec<u8>, PkiError> {
    certificate_public_key(cfg, &cfg.certificate)
}

fn certificate_public_key(cfg: &IssuerConfig, path: &Path) -> Result<Vec<u8>, PkiError> {
    let cert = read_certificate(path).map_err(PkiError::of_issuer(cfg))?;
    Ok(cert
        .tbs_certificate
        .subject_public_key_info
        .subject_public_key
        .raw_bytes()
        .to_vec())
}

/// Loads and checks one issuer whose responses `signer` signs.
pub fn load_issuer_with_signer(
    cfg: &IssuerConfig,
    id_kind: ResponderIdKind,
    signer: Arc<dyn Signer>,
) -> Result<Issuer, PkiError> {
    let fail = PkiError::of_issuer(cfg);
    let der = |what| {
        let fail = &fail;
        move |source| fail(PkiError::Der { what, source })
    };
    let ca = read_certificate(&cfg.certificate).map_err(&fail)?;
    let ca_der = ca.to_der().map_err(der("the CA certificate"))?;
    let subject_der = ca
        .tbs_certificate
        .subject
        .to_der()
        .map_err(der("the CA certificate's subject"))?;
    let ca_key = ca
        .tbs_certificate
        .subject_public_key_info
        .subject_public_key
        .raw_bytes()
        .to_vec();
    let hashes = IssuerHashes::new(&subject_der, &ca_key);

    let responder = match &cfg.responder_certificate {
        Some(p) => Some(read_certificate(p).map_err(&fail)?),
        None => None,
    };
    let signing_cert = responder.as_ref().unwrap_or(&ca);
    let signing_key_bits = signing_cert
        .tbs_certificate
        .subject_public_key_info
        .subject_public_key
        .raw_bytes();
    if signing_key_bits != signer.public_key() {
        return Err(fail(PkiError::KeyMismatch {
            signer: signer.describe(),
            certificate: if responder.is_some() {
                "responder"
            } else {
                "CA"
            },
        }));
    }
    let mut certs = Vec::new();
    if let Some(r) = &responder {
        check_delegated(&ca, r).map_err(&fail)?;
        certs.push(r.to_der().map_err(der("the responder certificate"))?);
    }
    let responder_id = match id_kind {
        ResponderIdKind::KeyHash => {
            ResponderProfile::key_hash_id(signer.public_key()).map_err(|e| fail(e.into()))?
        }
        ResponderIdKind::Name => ResponderId::ByName(signing_cert.tbs_certificate.subject.clone()),
    };
    let profile = ResponderProfile::new(responder_id, &certs, signer.algorithm())
        .map_err(|e| fail(e.into()))?;
    Ok(Issuer {
        name: cfg.name.clone(),
        certificate: ca,
        certificate_der: ca_der,
        hashes,
        profile,
        signer,
        responder_certificate: responder,
        unissued: cfg.unissued,
        allow_hold: cfg.allow_hold,
    })
}

/// RFC 6960 §4.2.2.2: a delegated responder certificate is issued directly by the CA and
/// carries id-kp-OCSPSigning; BR §4.9.9 adds id-pkix-ocsp-nocheck and digitalSignature.
fn check_delegated(ca: &Certificate, responder: &Certificate) -> Result<(), PkiError> {
    use PkiError::NotDelegated;
    let tbs = &responder.tbs_certificate;
    if tbs.issuer != ca.tbs_certificate.subject {
        return Err(NotDelegated(
            "the responder certificate is not issued by this CA (issuer name differs)",
        ));
    }
    if !signature_verifies(ca, responder)? {
        return Err(NotDelegated(
            "the responder certificate's signature does not verify with the CA key",
        ));
    }
    let mut eku_ok = false;
    let mut nocheck = false;
    for ext in tbs.extensions.iter().flatten() {
        if ext.extn_id == rfc5280::ID_CE_EXT_KEY_USAGE {
            let eku = ExtendedKeyUsage::from_der(ext.extn_value.as_bytes()).map_err(|source| {
                PkiError::Der {
                    what: "responder extendedKeyUsage",
                    source,
                }
            })?;
            eku_ok = eku.0.contains(&OID_KP_OCSP_SIGNING);
        } else if ext.extn_id == rfc5280::ID_CE_KEY_USAGE {
            let ku =
                KeyUsage::from_der(ext.extn_value.as_bytes()).map_err(|source| PkiError::Der {
                    what: "responder keyUsage",
                    source,
                })?;
            if !ku.0.contains(KeyUsages::DigitalSignature) {
                return Err(NotDelegated(
                    "the responder certificate's keyUsage lacks digitalSignature",
                ));
            }
        } else if ext.extn_id == OID_NOCHECK {
            nocheck = true;
        }
    }
    if !eku_ok {
        return Err(NotDelegated(
            "the responder certificate lacks extendedKeyUsage id-kp-OCSPSigning",
        ));
    }
    if !nocheck {
        tracing::warn!(
            "the responder certificate has no id-pkix-ocsp-nocheck extension (BR §4.9.9 requires it)"
        );
    }
    Ok(())
}

/// Verifies `cert`'s signature with `issuer`'s public key. Unknown algorithms are an error.
pub fn signature_verifies(issuer: &Certificate, cert: &Certificate) -> Result<bool, PkiError> {
    let tbs = cert
        .tbs_certificate
        .to_der()
        .map_err(|source| PkiError::Der {
            what: "tbsCertificate",
            source,
        })?;
    crate::crl::lint::verify_signature(
        &issuer.tbs_certificate.subject_public_key_info,
        &cert.signature_algorithm,
        &tbs,
        cert.signature.raw_bytes(),
    )
    .map_err(PkiError::from)
}
