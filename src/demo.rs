//! The embedded default: a demo CA, a delegated OCSP responder and a few certificates, made on
//! the first `vigil serve` with no config and reused afterwards.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CustomExtension, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, PKCS_ECDSA_P256_SHA256,
    SerialNumber,
};
use time::{Duration, OffsetDateTime};

use crate::clock::Clock;
use crate::config::embedded::DemoFiles;
use crate::config::{Config, IssuerConfig};
use crate::status::{Event, EventKind, RevocationReason, Serial};

/// Name of the demo issuer.
pub use crate::config::embedded::DEMO_ISSUER;

/// Demo leaf certificates: file stem and whether it is revoked.
pub const DEMO_CERTS: [(&str, bool); 3] =
    [("good-1", false), ("good-2", false), ("revoked-1", true)];

/// The issuer entry of the embedded default for a demo PKI in `data_dir`, with the default
/// CRL settings.
pub fn demo_issuer_config(data_dir: &Path) -> IssuerConfig {
    crate::config::embedded::demo_issuer(data_dir, &Config::embedded_default().crl)
}

/// Paths of the demo leaf certificates.
pub fn demo_cert_paths(data_dir: &Path) -> Vec<PathBuf> {
    DEMO_CERTS
        .iter()
        .map(|(n, _)| DemoFiles::under(data_dir).certs.join(format!("{n}.pem")))
        .collect()
}

/// Makes the demo PKI in `data_dir` unless `ca.pem` is already there. Returns the status
/// events to journal (empty when the PKI already existed).
/// Certificates are valid from an hour before `clock`'s time.
pub fn ensure_demo_pki(
    data_dir: &Path,
    origin: &str,
    clock: &Clock,
) -> Result<Vec<Event>, DemoError> {
    let files = DemoFiles::under(data_dir);
    if files.ca_certificate.exists() {
        return Ok(Vec::new());
    }
    let e = DemoError::Make;
    std::fs::create_dir_all(&files.certs).map_err(io_error("creating", data_dir))?;
    let now = OffsetDateTime::from_unix_timestamp(clock.now()).map_err(|_| DemoError::Clock)?;

    let ca_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(e)?;
    let mut ca = CertificateParams::default();
    ca.distinguished_name = dn("vigil demo CA");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    ca.not_before = now - Duration::hours(1);
    ca.not_after = now + Duration::days(3650);
    ca.serial_number = Some(random_serial());
    let ca_cert = ca.self_signed(&ca_key).map_err(e)?;
    let issuer = Issuer::new(ca, &ca_key);

    let responder_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(e)?;
    let mut r = CertificateParams::default();
    r.distinguished_name = dn("vigil demo OCSP responder");
    r.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    r.extended_key_usages = vec![ExtendedKeyUsagePurpose::OcspSigning];
    // id-pkix-ocsp-nocheck, value NULL (RFC 6960 §4.2.2.2.1)
    r.custom_extensions = vec![CustomExtension::from_oid_content(
        &[1, 3, 6, 1, 5, 5, 7, 48, 1, 5],
        vec![0x05, 0x00],
    )];
    r.use_authority_key_identifier_extension = true;
    r.not_before = now - Duration::hours(1);
    r.not_after = now + Duration::days(365);
    r.serial_number = Some(random_serial());
    let responder_cert = r.signed_by(&responder_key, &issuer).map_err(e)?;

    write(&files.ca_certificate, ca_cert.pem().as_bytes(), false)?;
    write(&files.ca_key, ca_key.serialize_pem().as_bytes(), true)?;
    write(
        &files.responder_certificate,
        responder_cert.pem().as_bytes(),
        false,
    )?;
    write(
        &files.responder_key,
        responder_key.serialize_pem().as_bytes(),
        true,
    )?;

    let issuer_id = crate::ocsp::IssuerHashes::new(&[], ca_key.public_key_raw()).id;
    let mut events = Vec::new();
    let created_at_ms = now.unix_timestamp() * 1000;
    for (name, revoked) in DEMO_CERTS {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(e)?;
        let mut p =
            CertificateParams::new(vec![format!("{name}.demo.vigil.invalid")]).map_err(e)?;
        p.distinguished_name = dn(&format!("{name}.demo.vigil.invalid"));
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        p.use_authority_key_identifier_extension = true;
        p.not_before = now - Duration::hours(1);
        p.not_after = now + Duration::days(90);
        let serial = random_serial();
        let serial_value = Serial::from_magnitude(serial.as_ref())?;
        p.serial_number = Some(serial);
        let cert = p.signed_by(&key, &issuer).map_err(e)?;
        write(
            &files.certs.join(format!("{name}.pem")),
            cert.pem().as_bytes(),
            false,
        )?;
        events.push(Event {
            issuer: issuer_id,
            serial: serial_value,
            kind: EventKind::Issued {
                not_after: p.not_after.unix_timestamp(),
            },
            origin: origin.into(),
            created_at_ms,
        });
        if revoked {
            events.push(Event {
                issuer: issuer_id,
                serial: serial_value,
                kind: EventKind::Revoked {
                    time: now.unix_timestamp(),
                    reason: RevocationReason::KeyCompromise,
                },
                origin: origin.into(),
                created_at_ms,
            });
        }
    }
    Ok(events)
}

fn dn(cn: &str) -> DistinguishedName {
    let mut d = DistinguishedName::new();
    d.push(DnType::OrganizationName, "vigil demo");
    d.push(DnType::CommonName, cn);
    d
}

/// 16 random octets, high bit clear (positive) and first octet non-zero (minimal).
fn random_serial() -> SerialNumber {
    let mut b = [0u8; 16];
    let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b);
    b[0] = (b[0] & 0x7F) | 0x10;
    SerialNumber::from_slice(&b)
}

/// Why the demo PKI could not be made.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    /// rcgen refused a key or certificate.
    #[error("making the demo PKI: {0}")]
    Make(#[from] rcgen::Error),
    /// A serial rcgen made is not one vigil takes.
    #[error("making the demo PKI: {0}")]
    Serial(#[from] crate::status::SerialError),
    /// The clock is outside the range certificates can state.
    #[error("making the demo PKI: the clock is out of range")]
    Clock,
    /// A file or directory could not be made or written.
    #[error("{what} {path}: {source}")]
    Io {
        /// "creating" or "writing".
        what: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
}

fn io_error(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> DemoError {
    let path = path.to_path_buf();
    move |source| DemoError::Io { what, path, source }
}

fn write(path: &Path, bytes: &[u8], secret: bool) -> Result<(), DemoError> {
    use std::io::Write;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(if secret { 0o600 } else { 0o644 });
    }
    let mut f = opts.open(path).map_err(io_error("creating", path))?;
    f.write_all(bytes)
        .and_then(|()| f.sync_all())
        .map_err(io_error("writing", path))
}
