//! vigil: an active-active OCSP and CRL validation responder.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod app;
pub mod apply;
pub mod archive;
pub mod background;
pub mod backup;
pub mod cache;
pub mod clock;
pub mod config;
pub mod crl;
pub mod crl_service;
pub mod demo;
pub mod drill;
pub mod feed;
pub mod hex;
pub mod http;
pub mod journal;
pub mod keyshare;
pub mod limits;
pub mod ocsp;
pub mod pki;
pub mod report;
pub mod responder;
pub mod signer;
pub mod status;
pub mod telemetry;
pub mod writer;
