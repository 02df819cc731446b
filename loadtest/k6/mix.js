// Steady mix of good, revoked and unissued serials (SHA-1 and SHA-256 CertIDs) over GET and
// POST against a running vigil, from the corpus of loadtest/gen-corpus.sh.
//
//   VIGIL_URL=http://127.0.0.1:8080 k6 run loadtest/k6/mix.js
//   (or loadtest/k6/run.sh mix, which starts vigil on a free port first)
//
// Environment: VIGIL_URL, CORPUS_DIR (default ../out/corpus, relative to this file),
// RATE (requests/s per method, default 200), DURATION (default 20s), P99_MS (default 20).
import http from 'k6/http';
import { check } from 'k6';
import encoding from 'k6/encoding';
import { SharedArray } from 'k6/data';
import { isOcspResponse, lines, ocspSummary } from './ocsp.js';

const BASE = (__ENV.VIGIL_URL || 'http://127.0.0.1:8080').replace(/\/$/, '');
const CORPUS = __ENV.CORPUS_DIR || '../out/corpus';
const RATE = parseInt(__ENV.RATE || '200', 10);
const DURATION = __ENV.DURATION || '20s';
const P99_MS = __ENV.P99_MS || '20';

// Share of each kind in the mix, and the certStatus a correct answer has.
const KINDS = [
  { kind: 'good', weight: 70, ok: (s) => s === 'good' },
  { kind: 'revoked', weight: 20, ok: (s) => s === 'revoked' },
  // Unissued: never good (vigil's default policy answers unknown).
  { kind: 'unissued', weight: 10, ok: (s) => s === 'unknown' || s === 'revoked' },
];
const CORPORA = {};
for (const k of KINDS) {
  CORPORA[k.kind] = new SharedArray(k.kind, () =>
    lines(open(`${CORPUS}/${k.kind}-sha1.b64`)).concat(lines(open(`${CORPUS}/${k.kind}-sha256.b64`))),
  );
}
const TOTAL_WEIGHT = KINDS.reduce((a, k) => a + k.weight, 0);

function scenario(exec) {
  return {
    executor: 'constant-arrival-rate',
    exec: exec,
    rate: RATE,
    timeUnit: '1s',
    duration: DURATION,
    preAllocatedVUs: 10,
    maxVUs: 50,
  };
}

export const options = {
  discardResponseBodies: false,
  scenarios: { get: scenario('get'), post: scenario('post') },
  thresholds: {
    http_req_failed: ['rate==0'],
    checks: ['rate==1'],
    'http_req_duration{scenario:get}': [`p(99)<${P99_MS}`],
    'http_req_duration{scenario:post}': [`p(99)<${P99_MS}`],
  },
};

function pick() {
  let n = Math.random() * TOTAL_WEIGHT;
  let k = KINDS[KINDS.length - 1];
  for (const c of KINDS) {
    if (n < c.weight) {
      k = c;
      break;
    }
    n -= c.weight;
  }
  const corpus = CORPORA[k.kind];
  return { k: k, b64: corpus[Math.floor(Math.random() * corpus.length)] };
}

function verify(res, k) {
  const s = res.status === 200 && res.body ? ocspSummary(res.body) : null;
  check(res, {
    'status 200': (r) => r.status === 200,
    'content-type application/ocsp-response': isOcspResponse,
    'non-empty body': (r) => r.body !== null && r.body.byteLength > 0,
    'responseStatus successful': () => s !== null && s.responseStatus === 0,
    [`${k.kind}: expected certStatus`]: () => s !== null && k.ok(s.certStatus),
  });
}

export function get() {
  const { k, b64 } = pick();
  const res = http.get(`${BASE}/${encodeURIComponent(b64)}`, {
    responseType: 'binary',
    tags: { kind: k.kind, name: 'GET /{request}' },
  });
  verify(res, k);
}

export function post() {
  const { k, b64 } = pick();
  const res = http.post(`${BASE}/`, encoding.b64decode(b64, 'std'), {
    headers: { 'Content-Type': 'application/ocsp-request' },
    responseType: 'binary',
    tags: { kind: k.kind },
  });
  verify(res, k);
}
