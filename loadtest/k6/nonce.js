// Nonce echo: POSTs requests for good-1 with a fresh 16-octet nonce each to a vigil started
// with VIGIL_NONCE=echo, and checks every response is signed for that request and echoes its
// nonce.
//
//   VIGIL_URL=http://127.0.0.1:8080 k6 run loadtest/k6/nonce.js
//   (or loadtest/k6/run.sh nonce, which starts vigil with VIGIL_NONCE=echo first)
//
// Environment: VIGIL_URL, CORPUS_DIR (default ../out/corpus), RATE (default 200), DURATION
// (default 20s), P99_MS (default 20).
import http from 'k6/http';
import { check } from 'k6';
import { isOcspResponse, ocspSummary } from './ocsp.js';

const BASE = (__ENV.VIGIL_URL || 'http://127.0.0.1:8080').replace(/\/$/, '');
const CORPUS = __ENV.CORPUS_DIR || '../out/corpus';
const RATE = parseInt(__ENV.RATE || '200', 10);
const DURATION = __ENV.DURATION || '20s';
const P99_MS = __ENV.P99_MS || '20';

// From `openssl ocsp -nonce -reqout`: a request whose nonce is replaced per iteration.
const TEMPLATE = new Uint8Array(open(`${CORPUS}/good-1.sha1.nonce.der`, 'b'));
// id-pkix-ocsp-nonce, then OCTET STRING (18) { OCTET STRING (16) }.
const MARKER = [0x06, 0x09, 0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x30, 0x01, 0x02, 0x04, 0x12, 0x04, 0x10];

function find(hay, needle, from) {
  outer: for (let i = from || 0; i + needle.length <= hay.length; i++) {
    for (let j = 0; j < needle.length; j++) if (hay[i + j] !== needle[j]) continue outer;
    return i;
  }
  return -1;
}

const NONCE_AT = find(TEMPLATE, MARKER) + MARKER.length;
if (NONCE_AT < MARKER.length) throw new Error('no 16-octet nonce in the template request');

export const options = {
  scenarios: {
    nonce: {
      executor: 'constant-arrival-rate',
      rate: RATE,
      timeUnit: '1s',
      duration: DURATION,
      preAllocatedVUs: 10,
      maxVUs: 50,
    },
  },
  thresholds: {
    http_req_failed: ['rate==0'],
    checks: ['rate==1'],
    http_req_duration: [`p(99)<${P99_MS}`],
  },
};

export default function () {
  const body = TEMPLATE.slice();
  const nonce = [];
  for (let i = 0; i < 16; i++) nonce.push(Math.floor(Math.random() * 256));
  body.set(nonce, NONCE_AT);
  const res = http.post(`${BASE}/`, body.buffer, {
    headers: { 'Content-Type': 'application/ocsp-request' },
    responseType: 'binary',
  });
  const s = res.status === 200 && res.body ? ocspSummary(res.body) : null;
  check(res, {
    'status 200': (r) => r.status === 200,
    'content-type application/ocsp-response': isOcspResponse,
    'non-empty body': (r) => r.body !== null && r.body.byteLength > 0,
    'good': () => s !== null && s.responseStatus === 0 && s.certStatus === 'good',
    'nonce echoed': (r) => r.body !== null && find(new Uint8Array(r.body), MARKER.slice(0, 11).concat([0x04, 0x12, 0x04, 0x10]).concat(nonce)) >= 0,
    'not cacheable': (r) => (r.headers['Cache-Control'] || '').includes('no-cache'),
  });
}
