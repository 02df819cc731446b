//! Signature verification for what vigil reads back: its own CRLs, the certificates and CRLs
//! a drill fetches. ring does the arithmetic; this picks the algorithm from the key and the
//! AlgorithmIdentifier, refusing any pairing it does not know.

/// A signature algorithm and key pairing vigil does not verify.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unsupported signature algorithm {0} for this key")]
pub struct UnsupportedAlgorithm(pub const_oid::ObjectIdentifier);

/// Verifies `signature` over `message` with `spki` under `algorithm` (ECDSA P-256/P-384 with
/// SHA-256/384, RSA PKCS#1 v1.5 with SHA-256/384/512). Unknown combinations are an error.
pub fn verify_signature(
    spki: &spki::SubjectPublicKeyInfoOwned,
    algorithm: &spki::AlgorithmIdentifierOwned,
    message: &[u8],
    signature: &[u8],
) -> Result<bool, UnsupportedAlgorithm> {
    use const_oid::db::rfc5912;
    use ring::signature as sig;
    let curve = spki
        .algorithm
        .parameters
        .as_ref()
        .and_then(|p| p.decode_as::<const_oid::ObjectIdentifier>().ok());
    let p256 = curve == Some(rfc5912::SECP_256_R_1);
    let p384 = curve == Some(rfc5912::SECP_384_R_1);
    let rsa = spki.algorithm.oid == rfc5912::RSA_ENCRYPTION;
    let oid = algorithm.oid;
    let alg: &dyn sig::VerificationAlgorithm = match oid {
        o if o == rfc5912::ECDSA_WITH_SHA_256 && p256 => &sig::ECDSA_P256_SHA256_ASN1,
        o if o == rfc5912::ECDSA_WITH_SHA_384 && p256 => &sig::ECDSA_P256_SHA384_ASN1,
        o if o == rfc5912::ECDSA_WITH_SHA_256 && p384 => &sig::ECDSA_P384_SHA256_ASN1,
        o if o == rfc5912::ECDSA_WITH_SHA_384 && p384 => &sig::ECDSA_P384_SHA384_ASN1,
        o if o == rfc5912::SHA_256_WITH_RSA_ENCRYPTION && rsa => &sig::RSA_PKCS1_2048_8192_SHA256,
        o if o == rfc5912::SHA_384_WITH_RSA_ENCRYPTION && rsa => &sig::RSA_PKCS1_2048_8192_SHA384,
        o if o == rfc5912::SHA_512_WITH_RSA_ENCRYPTION && rsa => &sig::RSA_PKCS1_2048_8192_SHA512,
        other => return Err(UnsupportedAlgorithm(other)),
    };
    Ok(
        sig::UnparsedPublicKey::new(alg, spki.subject_public_key.raw_bytes())
            .verify(message, signature)
            .is_ok(),
    )
}
