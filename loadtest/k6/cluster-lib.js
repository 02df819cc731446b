// Shared by the cluster scenarios: the request corpus (made by loadtest/cluster-corpus.sh),
// one OCSP exchange over GET or POST, and the check that the answer is right for its kind.
import http from 'k6/http';
import encoding from 'k6/encoding';
import { check } from 'k6';
import { Counter } from 'k6/metrics';

export const BASE = __ENV.VIGIL_URL || 'http://127.0.0.10:8080';
export const CORPUS = JSON.parse(open(__ENV.CORPUS || '../out/cluster/corpus.json'));
export const wrongAnswers = new Counter('wrong_answers');
export const failedValidations = new Counter('failed_validations');

// certStatus of the single response in a DER OCSPResponse: 'good' | 'revoked' | 'unknown',
// or 'error:N' for a non-successful responseStatus. A small DER walk: enough for vigil's
// responses (one SingleResponse), and any other shape counts as a failure.
export function certStatus(buf) {
  const b = new Uint8Array(buf);
  // responseStatus ENUMERATED is at offset 2 or 3 (OCSPResponse SEQUENCE header length).
  let i = 1;
  i += b[i] & 0x80 ? 1 + (b[i] & 0x7f) : 1;
  if (b[i] !== 0x0a) return 'error:parse';
  const st = b[i + 2];
  if (st !== 0) return 'error:' + st;
  // Find the CertID's serial, then the certStatus tag after it: [0] good (80 00),
  // [1] revoked (a1 ..), [2] unknown (82 00). Scan for the tag following the CertID SEQUENCE.
  for (let j = i; j < b.length - 1; j++) {
    // CertID: SEQUENCE { SEQUENCE { OID sha1 ...
    if (b[j] === 0x30 && b[j + 2] === 0x30 && b[j + 4] === 0x06 && b[j + 5] === 0x05 && b[j + 6] === 0x2b) {
      const len = b[j + 1];
      const k = j + 2 + len;
      if (b[k] === 0x80) return 'good';
      if (b[k] === 0xa1) return 'revoked';
      if (b[k] === 0x82) return 'unknown';
    }
  }
  return 'error:parse';
}

const expected = { good: 'good', revoked: 'revoked', unissued: 'unknown' };

// The share of OCSP requests sent as POST (`-e POST_SHARE=0.5`; default 0.4): many clients
// POST (`openssl ocsp`, and any request over 255 bytes under RFC 5019).
export const POST_SHARE = Number(__ENV.POST_SHARE || 0.4);

// Thresholds per method: no failed validation and no wrong answer for GET and for POST apart,
// and the p99 of each under `p99ms`.
export function perMethodThresholds(p99ms) {
  const t = {};
  for (const m of ['GET', 'POST']) {
    t[`failed_validations{method:${m}}`] = ['count==0'];
    t[`wrong_answers{method:${m}}`] = ['count==0'];
    t[`http_req_duration{method:${m}}`] = [`p(99)<${p99ms}`];
  }
  return t;
}

export function ocsp(method) {
  const item = CORPUS[Math.floor(Math.random() * CORPUS.length)];
  let res;
  if (method === 'GET') {
    res = http.get(`${BASE}/${encodeURIComponent(item.b64)}`, { responseType: 'binary', tags: { kind: item.kind, method } });
  } else {
    res = http.post(`${BASE}/`, encoding.b64decode(item.b64), {
      headers: { 'Content-Type': 'application/ocsp-request' },
      responseType: 'binary',
      tags: { kind: item.kind, method },
    });
  }
  const status = res.status === 200 ? certStatus(res.body) : 'http:' + res.status;
  // Tagged by method, so that the thresholds hold for GET and POST clients each on its own.
  if (status.startsWith('error') || status.startsWith('http')) failedValidations.add(1, { method });
  else if (status === 'good' && item.kind !== 'good') wrongAnswers.add(1, { method });
  check(res, { 'right answer': () => status === expected[item.kind] });
}

export function crl() {
  const res = http.get(`${BASE}/crl/cluster.crl`, { responseType: 'binary', tags: { kind: 'crl' } });
  if (res.status !== 200) failedValidations.add(1);
  check(res, { 'crl 200': (r) => r.status === 200 });
}
