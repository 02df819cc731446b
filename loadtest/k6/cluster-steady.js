// Steady mix against the cluster's load balancer: good / revoked / unissued serials over GET
// and POST, plus CRL downloads. Thresholds: no failed validation, no wrong answer, p99.
//   k6 run -e VIGIL_URL=$LB_URL -e CORPUS=$STATE/corpus.json -e RATE=200 -e DURATION=60s cluster-steady.js
// `-e POST_SHARE=0.5` sets the POST share of the OCSP requests (default 0.4); the thresholds
// hold for GET and POST each on its own.
import { ocsp, crl, POST_SHARE, perMethodThresholds } from './cluster-lib.js';

const RATE = Number(__ENV.RATE || 200);
const DURATION = __ENV.DURATION || '60s';

export const options = {
  discardResponseBodies: false,
  scenarios: {
    ocsp_get: { executor: 'constant-arrival-rate', exec: 'get', rate: Math.max(1, Math.ceil(RATE * 0.95 * (1 - POST_SHARE))), timeUnit: '1s', duration: DURATION, preAllocatedVUs: 20, maxVUs: 100 },
    ocsp_post: { executor: 'constant-arrival-rate', exec: 'post', rate: Math.max(1, Math.ceil(RATE * 0.95 * POST_SHARE)), timeUnit: '1s', duration: DURATION, preAllocatedVUs: 10, maxVUs: 60 },
    crl: { executor: 'constant-arrival-rate', exec: 'crlGet', rate: Math.max(1, Math.ceil(RATE * 0.05)), timeUnit: '1s', duration: DURATION, preAllocatedVUs: 2, maxVUs: 10 },
  },
  thresholds: {
    failed_validations: ['count==0'],
    wrong_answers: ['count==0'],
    http_req_failed: ['rate==0'],
    'http_req_duration{kind:good}': [`p(99)<${__ENV.P99_MS || 250}`],
    'http_req_duration{kind:revoked}': [`p(99)<${__ENV.P99_MS || 250}`],
    ...perMethodThresholds(__ENV.P99_MS || 250),
  },
};

export function get() { ocsp('GET'); }
export function post() { ocsp('POST'); }
export function crlGet() { crl(); }
