// Helpers shared by the k6 scenarios: reading corpus files and a minimal DER walk that finds
// an OCSPResponse's responseStatus and the certStatus of its first SingleResponse.

// Tag, value offset and value length of the DER element at offset i.
function tlv(b, i) {
  if (i + 2 > b.length) throw new Error('truncated');
  let len = b[i + 1];
  let p = i + 2;
  if (len & 0x80) {
    const n = len & 0x7f;
    if (n < 1 || n > 3) throw new Error('length form');
    len = 0;
    for (let k = 0; k < n; k++) len = len * 256 + b[p + k];
    p += n;
  }
  if (p + len > b.length) throw new Error('truncated');
  return { tag: b[i], at: p, len: len };
}

const CERT_STATUS = { 0x80: 'good', 0xa1: 'revoked', 0x82: 'unknown' };

// { responseStatus: n, certStatus: 'good' | 'revoked' | 'unknown' | undefined } or null.
//   OCSPResponse ::= SEQUENCE { responseStatus ENUMERATED,
//                               responseBytes [0] EXPLICIT SEQUENCE { OID, OCTET STRING } }
//   BasicOCSPResponse ::= SEQUENCE { tbsResponseData ResponseData, ... }
//   ResponseData ::= SEQUENCE { version [0] OPTIONAL, responderID, producedAt, responses, ... }
//   SingleResponse ::= SEQUENCE { certID CertID, certStatus CertStatus, ... }  (RFC 6960 §4.2.1)
export function ocspSummary(body) {
  try {
    const b = new Uint8Array(body);
    const top = tlv(b, 0);
    if (top.tag !== 0x30) return null;
    const st = tlv(b, top.at);
    if (st.tag !== 0x0a || st.len !== 1) return null;
    const out = { responseStatus: b[st.at] };
    if (out.responseStatus !== 0) return out;
    const explicit = tlv(b, st.at + st.len);
    const rb = tlv(b, explicit.at);
    const oid = tlv(b, rb.at);
    const octets = tlv(b, oid.at + oid.len);
    const basic = tlv(b, octets.at);
    const data = tlv(b, basic.at);
    let e = tlv(b, data.at);
    if (e.tag === 0xa0) e = tlv(b, e.at + e.len); // version
    const produced = tlv(b, e.at + e.len); // after responderID
    const responses = tlv(b, produced.at + produced.len);
    const single = tlv(b, responses.at);
    const certId = tlv(b, single.at);
    out.certStatus = CERT_STATUS[b[certId.at + certId.len]] || 'other';
    return out;
  } catch (err) {
    return null;
  }
}

// Non-empty lines of a text file.
export function lines(text) {
  return text.split('\n').filter((l) => l.length > 0);
}

export function isOcspResponse(r) {
  return (r.headers['Content-Type'] || '').toLowerCase().startsWith('application/ocsp-response');
}
