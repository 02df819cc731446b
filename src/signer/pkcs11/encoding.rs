//! DER conversions between what PKCS#11 tokens return and what X.509 and OCSP carry.

use der::{Decode, Encode};

use super::HsmError;

/// some tokens return the bare point. Returns the bare point (the BIT STRING contents).
pub(super) fn ec_point(value: &[u8], field: usize) -> Result<Vec<u8>, HsmError> {
    let bare_len = 1 + 2 * field;
    if value.len() == bare_len && value[0] == 0x04 {
        return Ok(value.to_vec());
    }
    let inner = der::asn1::OctetString::from_der(value)
        .map_err(|e| HsmError::Config(format!("CKA_EC_POINT: {e}")))?;
    let bytes = inner.as_bytes();
    if bytes.len() != bare_len || bytes[0] != 0x04 {
        return Err(HsmError::Config(
            "CKA_EC_POINT is not an uncompressed point on the key's curve".into(),
        ));
    }
    Ok(bytes.to_vec())
}

fn der_sequence_of_uints(parts: &[&[u8]]) -> Result<Vec<u8>, der::Error> {
    let uints = parts
        .iter()
        .map(|p| der::asn1::UintRef::new(p))
        .collect::<Result<Vec<_>, _>>()?;
    let mut len = der::Length::ZERO;
    for u in &uints {
        len = (len + u.encoded_len()?)?;
    }
    let mut out = Vec::new();
    der::Header::new(der::Tag::Sequence, len)?.encode_to_vec(&mut out)?;
    for u in &uints {
        u.encode_to_vec(&mut out)?;
    }
    Ok(out)
}

/// RSAPublicKey ::= SEQUENCE { modulus INTEGER, publicExponent INTEGER } (RFC 8017 §A.1.1).
pub(super) fn rsa_public_key_der(n: &[u8], e: &[u8]) -> Result<Vec<u8>, HsmError> {
    der_sequence_of_uints(&[n, e])
        .map_err(|err| HsmError::Config(format!("encoding the RSA public key: {err}")))
}

/// `r || s` (each `field` bytes, PKCS#11 v2.40 §2.3.1) to
/// `ECDSA-Sig-Value ::= SEQUENCE { r INTEGER, s INTEGER }` (RFC 5480 §2.2).
pub fn ecdsa_raw_to_der(raw: &[u8], field: usize) -> Result<Vec<u8>, HsmError> {
    if raw.len() != 2 * field {
        return Err(HsmError::Failed(format!(
            "the token returned a {}-byte ECDSA signature, expected {}",
            raw.len(),
            2 * field
        )));
    }
    let (r, s) = raw.split_at(field);
    der_sequence_of_uints(&[r, s])
        .map_err(|e| HsmError::Failed(format!("encoding the ECDSA signature: {e}")))
}

/// DER DigestInfo for SHA-256 (RFC 8017 §9.2, note 1): the fixed prefix, then the hash.
pub fn sha256_digest_info(message: &[u8]) -> Vec<u8> {
    const PREFIX: [u8; 19] = [
        0x30, 0x31, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x01,
        0x05, 0x00, 0x04, 0x20,
    ];
    let d = ring::digest::digest(&ring::digest::SHA256, message);
    let mut out = Vec::with_capacity(PREFIX.len() + 32);
    out.extend_from_slice(&PREFIX);
    out.extend_from_slice(d.as_ref());
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::signer::SignatureAlgorithm;

    #[test]
    fn raw_ecdsa_becomes_der_that_ring_verifies() {
        use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair};
        let rng = ring::rand::SystemRandom::new();
        let pkcs8 =
            EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).expect("keygen");
        let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng)
            .expect("key");
        // Sign many times so that r or s with a high bit or leading zeros turn up.
        for i in 0..64u8 {
            let msg = [i; 40];
            let raw = key.sign(&rng, &msg).expect("sign");
            let der = ecdsa_raw_to_der(raw.as_ref(), 32).expect("der");
            assert!(crate::signer::verify(
                SignatureAlgorithm::EcdsaP256Sha256,
                key.public_key().as_ref(),
                &msg,
                &der
            ));
        }
        assert!(ecdsa_raw_to_der(&[1; 63], 32).is_err());
        // Leading zeros are stripped and a high bit gets a 0x00 pad.
        let mut raw = [0u8; 64];
        raw[31] = 0x01;
        raw[32] = 0x80;
        let der = ecdsa_raw_to_der(&raw, 32).expect("der");
        assert_eq!(&der[..5], &[0x30, 0x26, 0x02, 0x01, 0x01]);
        assert_eq!(&der[5..8], &[0x02, 0x21, 0x00]);
    }

    #[test]
    fn ec_point_accepts_der_and_bare_forms() {
        let mut bare = vec![0x04];
        bare.extend_from_slice(&[7; 64]);
        let wrapped = der::asn1::OctetString::new(bare.clone())
            .expect("octets")
            .to_der()
            .expect("der");
        assert_eq!(ec_point(&bare, 32).expect("bare"), bare);
        assert_eq!(ec_point(&wrapped, 32).expect("wrapped"), bare);
        assert!(ec_point(&wrapped, 48).is_err());
    }

    #[test]
    fn digest_info_matches_rfc_8017() {
        let di = sha256_digest_info(b"abc");
        assert_eq!(di.len(), 51);
        // Parse it back: SEQUENCE { AlgorithmIdentifier { sha256, NULL }, OCTET STRING }.
        let any = der::asn1::Any::from_der(&di).expect("der");
        assert_eq!(der::Tagged::tag(&any), der::Tag::Sequence);
        assert!(di.ends_with(ring::digest::digest(&ring::digest::SHA256, b"abc").as_ref()));
    }

    #[test]
    fn rsa_public_key_is_pkcs1() {
        let der = rsa_public_key_der(&[0x80, 0, 1], &[1, 0, 1]).expect("der");
        assert_eq!(
            der,
            [
                0x30, 0x0b, 0x02, 0x04, 0x00, 0x80, 0x00, 0x01, 0x02, 0x03, 0x01, 0x00, 0x01
            ]
        );
    }
}
