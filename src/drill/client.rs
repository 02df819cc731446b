//! The small blocking HTTP/1.1 and OCSP client of `vigil drill` and the fault drills in
//! `tests/drills.rs`: one request per fresh connection, the answer decoded and its signature
//! checked.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

use der::{Decode, Encode};
use x509_cert::Certificate;
use x509_ocsp::{BasicOcspResponse, OcspResponse, OcspResponseStatus};

use crate::ocsp::HashAlgorithm;

/// Why a request of the drill's client failed or its answer was not a usable OCSP response.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DrillError {
    /// The base URL is not `http://`.
    #[error("{0}: only http:// URLs are supported")]
    UnsupportedUrl(String),
    /// Resolving, connecting, writing or reading failed.
    #[error("{host}: {source}")]
    Io {
        /// `host:port`.
        host: String,
        /// Why.
        source: std::io::Error,
    },
    /// The host name resolved to no address.
    #[error("{0}: no address")]
    NoAddress(String),
    /// The connection closed before a whole response head.
    #[error("{host}: no HTTP response ({bytes} bytes)")]
    NoResponse {
        /// `host:port`.
        host: String,
        /// Bytes received.
        bytes: usize,
    },
    /// The status line did not parse.
    #[error("{0}: bad status line")]
    BadStatusLine(String),
    /// Fewer body bytes than `Content-Length` announced.
    #[error("{host}: body cut short ({got} of {expected} bytes)")]
    CutShort {
        /// `host:port`.
        host: String,
        /// Bytes received.
        got: usize,
        /// `Content-Length`.
        expected: usize,
    },
    /// An HTTP status other than 200.
    #[error("HTTP {0}")]
    Http(u16),
    /// A DER structure (`what`) did not decode or encode.
    #[error("{what}: {source}")]
    Der {
        /// Which structure.
        what: &'static str,
        /// Why.
        source: der::Error,
    },
    /// The responder answered with a responseStatus other than successful (e.g. `TryLater`).
    #[error("OCSP {0:?}")]
    Status(OcspResponseStatus),
    /// A successful response without responseBytes.
    #[error("successful response without responseBytes")]
    NoResponseBytes,
    /// Not exactly one SingleResponse.
    #[error("{0} SingleResponses, expected 1")]
    SingleResponses(usize),
    /// The responder certificate's signature could not be checked.
    #[error(transparent)]
    Certificate(#[from] crate::pki::PkiError),
    /// The response's signature could not be checked (an algorithm and key vigil does not
    /// verify).
    #[error(transparent)]
    Signature(#[from] crate::crl::lint::UnsupportedAlgorithm),
}

fn der_error(what: &'static str) -> impl FnOnce(der::Error) -> DrillError {
    move |source| DrillError::Der { what, source }
}

/// A response to one blocking HTTP/1.1 request.
#[derive(Debug, Clone)]
pub struct HttpResponse {
    /// Status code.
    pub status: u16,
    /// Body (after `Content-Length` or until the connection closed).
    pub body: Vec<u8>,
}

/// One HTTP/1.1 exchange over a fresh connection (`Connection: close`).
///
/// `base` is `http://host:port`; `path` starts with `/`.
pub fn http(
    base: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
    timeout: Duration,
) -> Result<HttpResponse, DrillError> {
    let host = base
        .strip_prefix("http://")
        .ok_or_else(|| DrillError::UnsupportedUrl(base.to_owned()))?
        .trim_end_matches('/');
    let io = |source| DrillError::Io {
        host: host.to_owned(),
        source,
    };
    let addr = host
        .to_socket_addrs()
        .map_err(io)?
        .next()
        .ok_or_else(|| DrillError::NoAddress(host.to_owned()))?;
    let mut s = TcpStream::connect_timeout(&addr, timeout).map_err(io)?;
    s.set_read_timeout(Some(timeout)).map_err(io)?;
    s.set_write_timeout(Some(timeout)).map_err(io)?;
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    let mut bytes = req.into_bytes();
    bytes.extend_from_slice(body);
    s.write_all(&bytes).map_err(io)?;
    let mut resp = Vec::new();
    s.read_to_end(&mut resp).map_err(io)?;
    let end = resp
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| DrillError::NoResponse {
            host: host.to_owned(),
            bytes: resp.len(),
        })?;
    let head = String::from_utf8_lossy(&resp[..end]).into_owned();
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| DrillError::BadStatusLine(host.to_owned()))?;
    let mut body = resp[end + 4..].to_vec();
    let length = head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.eq_ignore_ascii_case("content-length")
            .then(|| v.trim().parse::<usize>().ok())
            .flatten()
    });
    if let Some(n) = length {
        if body.len() < n {
            return Err(DrillError::CutShort {
                host: host.to_owned(),
                got: body.len(),
                expected: n,
            });
        }
        body.truncate(n);
    }
    Ok(HttpResponse { status, body })
}

/// A DER OCSP request (one SHA-1 CertID, no nonce) for `serial` (big-endian bytes) of `issuer`.
pub fn ocsp_request(issuer: &Certificate, serial: &[u8]) -> Result<Vec<u8>, DrillError> {
    use der::asn1::OctetString;
    let name = issuer
        .tbs_certificate
        .subject
        .to_der()
        .map_err(der_error("the issuer's subject"))?;
    let key = issuer
        .tbs_certificate
        .subject_public_key_info
        .subject_public_key
        .raw_bytes();
    let alg = HashAlgorithm::Sha1;
    let cert_id = x509_ocsp::CertId {
        hash_algorithm: spki::AlgorithmIdentifierOwned {
            oid: alg.oid(),
            parameters: Some(der::asn1::Null.into()),
        },
        issuer_name_hash: OctetString::new(alg.digest(&name))
            .map_err(der_error("issuerNameHash"))?,
        issuer_key_hash: OctetString::new(alg.digest(key)).map_err(der_error("issuerKeyHash"))?,
        serial_number: x509_cert::serial_number::SerialNumber::new(serial)
            .map_err(der_error("serialNumber"))?,
    };
    let req = x509_ocsp::OcspRequest {
        tbs_request: x509_ocsp::TbsRequest {
            version: x509_ocsp::Version::V1,
            requestor_name: None,
            request_list: vec![x509_ocsp::Request {
                req_cert: cert_id,
                single_request_extensions: None,
            }],
            request_extensions: None,
        },
        optional_signature: None,
    };
    req.to_der().map_err(der_error("OCSPRequest"))
}

/// The certificate status in an OCSP answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// `good`.
    Good,
    /// `revoked`.
    Revoked,
    /// `unknown`.
    Unknown,
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Status::Good => "good",
            Status::Revoked => "revoked",
            Status::Unknown => "unknown",
        })
    }
}

/// A decoded successful OCSP answer with one SingleResponse.
#[derive(Debug, Clone)]
pub struct Answer {
    /// Its certStatus.
    pub status: Status,
    /// Whether the signature verified (with the included responder certificate, itself
    /// signed by the issuer, or with the issuer's key). `None` when no issuer was given.
    pub verified: Option<bool>,
    /// thisUpdate, Unix seconds.
    pub this_update: i64,
    /// nextUpdate, Unix seconds (0 when absent).
    pub next_update: i64,
    /// notAfter of the responder certificate included, Unix seconds.
    pub responder_not_after: Option<i64>,
}

/// Decodes an OCSP response body. A non-successful responseStatus is an error naming it
/// (e.g. `tryLater`).
pub fn decode_response(body: &[u8], issuer: Option<&Certificate>) -> Result<Answer, DrillError> {
    let r = OcspResponse::from_der(body).map_err(der_error("undecodable OCSP response"))?;
    if r.response_status != OcspResponseStatus::Successful {
        return Err(DrillError::Status(r.response_status));
    }
    let bytes = r.response_bytes.ok_or(DrillError::NoResponseBytes)?;
    let basic = BasicOcspResponse::from_der(bytes.response.as_bytes())
        .map_err(der_error("undecodable BasicOCSPResponse"))?;
    let single = match basic.tbs_response_data.responses.as_slice() {
        [one] => one,
        other => return Err(DrillError::SingleResponses(other.len())),
    };
    let status = match single.cert_status {
        x509_ocsp::CertStatus::Good(_) => Status::Good,
        x509_ocsp::CertStatus::Revoked(_) => Status::Revoked,
        x509_ocsp::CertStatus::Unknown(_) => Status::Unknown,
    };
    let secs = |t: &x509_ocsp::OcspGeneralizedTime| t.0.to_unix_duration().as_secs() as i64;
    let responder = basic.certs.as_ref().and_then(|c| c.first());
    let verified = match issuer {
        None => None,
        Some(ca) => {
            let tbs = basic
                .tbs_response_data
                .to_der()
                .map_err(der_error("tbsResponseData"))?;
            let signer_spki = match responder {
                Some(cert) => {
                    if !crate::pki::signature_verifies(ca, cert)? {
                        return Ok(Answer {
                            status,
                            verified: Some(false),
                            this_update: secs(&single.this_update),
                            next_update: single.next_update.as_ref().map(secs).unwrap_or(0),
                            responder_not_after: None,
                        });
                    }
                    &cert.tbs_certificate.subject_public_key_info
                }
                None => &ca.tbs_certificate.subject_public_key_info,
            };
            Some(
                crate::crl::lint::verify_signature(
                    signer_spki,
                    &basic.signature_algorithm,
                    &tbs,
                    basic.signature.raw_bytes(),
                )
                .map_err(DrillError::Signature)?,
            )
        }
    };
    Ok(Answer {
        status,
        verified,
        this_update: secs(&single.this_update),
        next_update: single.next_update.as_ref().map(secs).unwrap_or(0),
        responder_not_after: responder.map(|c| {
            c.tbs_certificate
                .validity
                .not_after
                .to_unix_duration()
                .as_secs() as i64
        }),
    })
}

/// POSTs an OCSP request to `base` and decodes the answer.
pub fn query(
    base: &str,
    issuer: &Certificate,
    serial: &[u8],
    verify: bool,
    timeout: Duration,
) -> Result<Answer, DrillError> {
    let req = ocsp_request(issuer, serial)?;
    let resp = http(
        base,
        "POST",
        "/",
        &[("Content-Type", "application/ocsp-request")],
        &req,
        timeout,
    )?;
    if resp.status != 200 {
        return Err(DrillError::Http(resp.status));
    }
    decode_response(&resp.body, verify.then_some(issuer))
}
