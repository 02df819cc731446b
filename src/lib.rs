//! vigil: an active-active OCSP and CRL validation responder.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod limits;
pub mod ocsp;
pub mod signer;
pub mod status;
