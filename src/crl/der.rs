//! The few DER encoding primitives the CRL builder needs, written straight into a buffer.
//!
//! X.690 §8.1.3 (definite lengths, short form below 128) and §10 (DER). Times follow
//! RFC 5280 §5.1.2.4: UTCTime through 2049, GeneralizedTime from 2050, always in seconds and
//! `Z`, never fractional.

/// Universal tag numbers used here.
pub mod tag {
    /// BOOLEAN.
    pub const BOOLEAN: u8 = 0x01;
    /// INTEGER.
    pub const INTEGER: u8 = 0x02;
    /// BIT STRING.
    pub const BIT_STRING: u8 = 0x03;
    /// OCTET STRING.
    pub const OCTET_STRING: u8 = 0x04;
    /// OBJECT IDENTIFIER.
    pub const OID: u8 = 0x06;
    /// ENUMERATED.
    pub const ENUMERATED: u8 = 0x0A;
    /// UTCTime.
    pub const UTC_TIME: u8 = 0x17;
    /// GeneralizedTime.
    pub const GENERALIZED_TIME: u8 = 0x18;
    /// SEQUENCE (constructed).
    pub const SEQUENCE: u8 = 0x30;
}

/// Octets a DER length of `len` takes.
pub fn len_len(len: usize) -> usize {
    match len {
        0..=0x7F => 1,
        0x80..=0xFF => 2,
        0x100..=0xFFFF => 3,
        0x1_0000..=0xFF_FFFF => 4,
        _ => 5,
    }
}

/// Octets a whole TLV with `len` content octets takes (one-octet tag).
pub fn tlv_len(len: usize) -> usize {
    1 + len_len(len) + len
}

/// Appends a DER length. Lengths above 2^32 − 1 never occur: the builder's input is bounded.
pub fn write_len(out: &mut Vec<u8>, len: usize) {
    match len_len(len) {
        1 => out.push(len as u8),
        n => {
            out.push(0x80 | (n - 1) as u8);
            for i in (0..n - 1).rev() {
                out.push((len >> (8 * i)) as u8);
            }
        }
    }
}

/// Appends tag and length.
pub fn write_header(out: &mut Vec<u8>, tag: u8, len: usize) {
    out.push(tag);
    write_len(out, len);
}

/// Appends a whole TLV.
pub fn write_tlv(out: &mut Vec<u8>, tag: u8, content: &[u8]) {
    write_header(out, tag, content.len());
    out.extend_from_slice(content);
}

/// A TLV as a new vector.
pub fn tlv(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(tlv_len(content.len()));
    write_tlv(&mut v, tag, content);
    v
}

/// The content octets of a non-negative INTEGER (minimal, with a leading zero when the high
/// bit is set).
pub fn uint_content(value: u64) -> Vec<u8> {
    let bytes = value.to_be_bytes();
    let start = bytes.iter().position(|&b| b != 0).unwrap_or(7);
    let mut v = Vec::with_capacity(9);
    if bytes[start] & 0x80 != 0 {
        v.push(0);
    }
    v.extend_from_slice(&bytes[start..]);
    v
}

/// Octets the Time for `t` takes as a TLV: 15 for UTCTime, 17 for GeneralizedTime.
pub fn time_tlv_len(t: i64) -> usize {
    if uses_utc_time(t) { 15 } else { 17 }
}

/// RFC 5280 §5.1.2.4: UTCTime for 1950 through 2049.
fn uses_utc_time(t: i64) -> bool {
    // 1950-01-01T00:00:00Z and 2050-01-01T00:00:00Z.
    (-631_152_000..2_524_608_000).contains(&t)
}

/// Appends `t` (Unix seconds, clamped to years 0000..=9999) as a Time.
pub fn write_time(out: &mut Vec<u8>, t: i64) {
    let t = t.clamp(-62_167_219_200, 253_402_300_799);
    let (year, month, day) = civil_from_days(t.div_euclid(86_400));
    let secs = t.rem_euclid(86_400);
    let (hh, mm, ss) = (secs / 3600, secs / 60 % 60, secs % 60);
    let two = |out: &mut Vec<u8>, v: i64| {
        out.push(b'0' + (v / 10) as u8);
        out.push(b'0' + (v % 10) as u8);
    };
    if uses_utc_time(t) {
        out.extend_from_slice(&[tag::UTC_TIME, 13]);
        two(out, year % 100);
    } else {
        out.extend_from_slice(&[tag::GENERALIZED_TIME, 15]);
        two(out, year / 100);
        two(out, year % 100);
    }
    two(out, month);
    two(out, day);
    two(out, hh);
    two(out, mm);
    two(out, ss);
    out.push(b'Z');
}

/// Proleptic Gregorian (year, month, day) of a day count since 1970-01-01 (H. Hinnant's
/// `civil_from_days`).
fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use der::Decode;

    #[test]
    fn lengths() {
        for (len, enc) in [
            (0usize, vec![0u8]),
            (127, vec![0x7F]),
            (128, vec![0x81, 0x80]),
            (256, vec![0x82, 1, 0]),
            (70_000, vec![0x83, 0x01, 0x11, 0x70]),
        ] {
            let mut v = Vec::new();
            write_len(&mut v, len);
            assert_eq!(v, enc, "{len}");
            assert_eq!(len_len(len), enc.len());
        }
    }

    #[test]
    fn integers() {
        assert_eq!(uint_content(0), vec![0]);
        assert_eq!(uint_content(1), vec![1]);
        assert_eq!(uint_content(0x80), vec![0, 0x80]);
        assert_eq!(uint_content(0x1234), vec![0x12, 0x34]);
        assert_eq!(uint_content(u64::MAX), {
            let mut v = vec![0];
            v.extend_from_slice(&[0xFF; 8]);
            v
        });
    }

    #[test]
    fn times_match_the_der_crate() {
        for t in [
            0i64,
            951_782_400, // 2000-02-29
            1_700_000_000,
            2_524_607_999, // 2049-12-31T23:59:59Z
            2_524_608_000, // 2050
            4_102_444_800, // 2100-01-01
        ] {
            let mut v = Vec::new();
            write_time(&mut v, t);
            assert_eq!(v.len(), time_tlv_len(t));
            let parsed = x509_cert::time::Time::from_der(&v).expect("decodes");
            assert_eq!(parsed.to_unix_duration().as_secs() as i64, t, "{t}");
            let is_utc = matches!(parsed, x509_cert::time::Time::UtcTime(_));
            assert_eq!(is_utc, t < 2_524_608_000, "{t}");
        }
    }
}
