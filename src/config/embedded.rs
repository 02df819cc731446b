//! The embedded default: what `vigil serve` runs with no file. Its one issuer is the demo PKI
//! in the data directory; [`crate::demo`] makes those files at the paths named here.

use std::path::{Path, PathBuf};

use super::crl::CrlConfig;
use super::issuer::{IssuerConfig, KeySource};
use crate::status::UnissuedPolicy;

/// Name of the demo issuer.
pub const DEMO_ISSUER: &str = "demo";

/// Where the demo PKI keeps its files, under a data directory.
#[derive(Debug, Clone)]
pub struct DemoFiles {
    /// The CA certificate (PEM).
    pub ca_certificate: PathBuf,
    /// The CA key (PEM PKCS#8), which signs the demo CRLs.
    pub ca_key: PathBuf,
    /// The delegated OCSP responder's certificate (PEM).
    pub responder_certificate: PathBuf,
    /// Its key (PEM PKCS#8).
    pub responder_key: PathBuf,
    /// The directory of the demo leaf certificates.
    pub certs: PathBuf,
}

impl DemoFiles {
    /// The files under `data_dir`.
    pub fn under(data_dir: &Path) -> Self {
        DemoFiles {
            ca_certificate: data_dir.join("ca.pem"),
            ca_key: data_dir.join("ca.key"),
            responder_certificate: data_dir.join("responder.pem"),
            responder_key: data_dir.join("responder.key"),
            certs: data_dir.join("certs"),
        }
    }
}

/// The issuer entry of the embedded default, with `crl` as its CRL settings.
pub fn demo_issuer(data_dir: &Path, crl: &CrlConfig) -> IssuerConfig {
    let f = DemoFiles::under(data_dir);
    IssuerConfig {
        name: DEMO_ISSUER.into(),
        certificate: f.ca_certificate,
        responder_certificate: Some(f.responder_certificate),
        ocsp_key: KeySource::File(f.responder_key),
        unissued: UnissuedPolicy::Unknown,
        allow_hold: false,
        crl_key: Some(KeySource::File(f.ca_key)),
        crl: crl.clone(),
    }
}
