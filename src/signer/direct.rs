//! Signing the pure core's bytes on the caller's thread, with no signing service in between:
//! for the CLI, tests and benches, where nothing else competes for the key. The answer path
//! and the CRL publisher sign through [`super::service`] instead.

use x509_cert::ext::Extension;
use x509_ocsp::CertId;

use super::{SignError, Signer};
use crate::crl::{CrlError, CrlIssuer, CrlSpec, Entry};
use crate::ocsp::OcspError;
use crate::ocsp::response::{ResponderProfile, SingleStatus, Window, assemble, tbs_response_data};

/// Why a directly signed CRL or response could not be made.
#[derive(Debug, Clone, thiserror::Error)]
pub enum DirectError {
    /// The CRL could not be encoded.
    #[error(transparent)]
    Crl(#[from] CrlError),
    /// The response could not be encoded.
    #[error(transparent)]
    Ocsp(#[from] OcspError),
    /// The key did not sign.
    #[error(transparent)]
    Sign(#[from] SignError),
}

/// A CRL: sorted, encoded, signed by `signer` on this thread and assembled.
pub fn crl(
    issuer: &CrlIssuer,
    spec: &CrlSpec<'_>,
    entries: &mut [Entry],
    signer: &dyn Signer,
) -> Result<Vec<u8>, DirectError> {
    let tbs = crate::crl::tbs(issuer, spec, entries, signer.algorithm())?;
    let signature = signer.sign(&tbs.message())?;
    Ok(tbs.assemble(&signature))
}

/// An OCSP response: encoded, signed by `signer` on this thread and assembled. `profile`
/// must be the profile of `signer`'s key.
pub fn ocsp_response(
    profile: &ResponderProfile,
    signer: &dyn Signer,
    window: &Window,
    answers: &[(&CertId, SingleStatus)],
    extensions: Vec<Extension>,
) -> Result<Vec<u8>, DirectError> {
    let tbs = tbs_response_data(profile, window, answers, extensions)?;
    let signature = signer.sign(&tbs)?;
    Ok(assemble(profile, &tbs, &signature)?)
}
