//! Fixtures shared by the benches: a demo PKI in a temporary directory, a responder over it, and
//! OCSPRequest DER for its certificates.
//!
//! Not every bench uses every helper.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use criterion::Criterion;
use der::Encode;
use der::asn1::{Null, OctetString};
use spki::AlgorithmIdentifierOwned;
use x509_cert::ext::Extension;
use x509_cert::serial_number::SerialNumber;
use x509_ocsp::{CertId, OcspRequest, Request, TbsRequest, Version};

use vigil::config::{Config, NoncePolicy};
use vigil::journal::JournalReader;
use vigil::ocsp::{HashAlgorithm, IssuerHashes, OID_NONCE};
use vigil::pki::Issuer;
use vigil::responder::Responder;
use vigil::status::StatusView;
use vigil::telemetry::Metrics;

/// Short measurements: the benches share a 2-core machine with other work.
pub fn criterion() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(30)
}

/// The demo PKI of the embedded default, made in a temporary directory that lives as long as
/// this value.
pub struct DemoPki {
    _dir: tempfile::TempDir,
    /// The configuration `vigil serve` would use for that directory.
    pub config: Config,
    /// The loaded demo issuer.
    pub issuer: Issuer,
}

impl DemoPki {
    /// Makes the demo PKI with nonces handled as `nonce`.
    pub fn new(nonce: NoncePolicy) -> Self {
        let dir = tempfile::tempdir().expect("a temporary directory for the demo PKI");
        let mut config = Config::embedded_at(dir.path());
        config.ocsp.nonce = nonce;
        vigil::app::prepare_embedded(&config, &vigil::clock::Clock::system())
            .expect("making the demo PKI");
        let mut issuers = vigil::app::load_issuers(&config).expect("loading the demo issuer");
        let issuer = issuers.remove(0);
        DemoPki {
            _dir: dir,
            config,
            issuer,
        }
    }

    /// Path of a demo leaf certificate by file stem (`good-1`, `good-2`, `revoked-1`).
    pub fn cert_path(&self, stem: &str) -> PathBuf {
        self.config
            .data_dir
            .join("certs")
            .join(format!("{stem}.pem"))
    }

    /// Serial number (DER INTEGER contents) of a demo leaf certificate.
    pub fn serial(&self, stem: &str) -> Vec<u8> {
        serial_of(&self.cert_path(stem))
    }

    /// A responder over this PKI with the journal replayed into its view (what `vigil serve`
    /// builds at start-up, minus the listener).
    pub fn responder(&self) -> Arc<Responder> {
        self.responder_for(&self.config)
    }

    /// The same responder with the front cache turned off: every answer decodes its request.
    pub fn responder_without_front_cache(&self) -> Arc<Responder> {
        let mut config = self.config.clone();
        config.ocsp.front_cache_max_bytes = 0;
        self.responder_for(&config)
    }

    fn responder_for(&self, config: &Config) -> Arc<Responder> {
        let metrics = Arc::new(Metrics::new());
        let view = StatusView::new();
        let mut reader = JournalReader::new(self.config.journal_path());
        vigil::app::replay_journal(&mut reader, &view, &metrics).expect("replaying the journal");
        let issuers = vigil::app::load_issuers(&self.config).expect("loading the demo issuer");
        Arc::new(Responder::new(
            config,
            issuers,
            &view,
            metrics,
            vigil::clock::Clock::system(),
        ))
    }

    /// The CertID of `serial` under `alg`, with NULL hash parameters as OpenSSL sends them.
    pub fn cert_id(&self, alg: HashAlgorithm, serial: &[u8]) -> CertId {
        cert_id(&self.issuer.hashes, alg, serial)
    }
}

/// The serial number of the certificate in a PEM file.
pub fn serial_of(path: &Path) -> Vec<u8> {
    vigil::pki::read_certificate(path)
        .expect("reading a demo certificate")
        .tbs_certificate
        .serial_number
        .as_bytes()
        .to_vec()
}

/// A CertID naming `serial` of the issuer with `hashes`.
pub fn cert_id(hashes: &IssuerHashes, alg: HashAlgorithm, serial: &[u8]) -> CertId {
    CertId {
        hash_algorithm: AlgorithmIdentifierOwned {
            oid: alg.oid(),
            parameters: Some(Null.into()),
        },
        issuer_name_hash: OctetString::new(hashes.name_hash(alg)).expect("name hash octets"),
        issuer_key_hash: OctetString::new(hashes.key_hash(alg)).expect("key hash octets"),
        serial_number: SerialNumber::new(serial).expect("a valid serial number"),
    }
}

/// A 16-octet nonce extension (what `openssl ocsp` sends by default).
pub fn nonce_extension(fill: u8) -> Extension {
    let inner = OctetString::new(vec![fill; 16])
        .expect("nonce octets")
        .to_der()
        .expect("nonce DER");
    Extension {
        extn_id: OID_NONCE,
        critical: false,
        extn_value: OctetString::new(inner).expect("extnValue octets"),
    }
}

/// OCSPRequest DER asking about `ids`, with a nonce when given.
pub fn request_der(ids: Vec<CertId>, nonce: Option<Extension>) -> Vec<u8> {
    OcspRequest {
        tbs_request: TbsRequest {
            version: Version::V1,
            requestor_name: None,
            request_list: ids
                .into_iter()
                .map(|req_cert| Request {
                    req_cert,
                    single_request_extensions: None,
                })
                .collect(),
            request_extensions: nonce.map(|n| vec![n]),
        },
        optional_signature: None,
    }
    .to_der()
    .expect("encoding an OCSPRequest")
}

/// The GET form of a request: standard base64 with `+`, `/` and `=` percent-encoded, as
/// `openssl ocsp` and most clients send it.
pub fn get_path(der: &[u8]) -> String {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = String::with_capacity(b64.len() * 3 / 2);
    for c in b64.chars() {
        match c {
            '+' => out.push_str("%2B"),
            '/' => out.push_str("%2F"),
            '=' => out.push_str("%3D"),
            c => out.push(c),
        }
    }
    out
}
