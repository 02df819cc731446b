// Ramp the request rate through the load balancer until latency or errors give: the highest
// stage that still meets p99 < P99_MS with no failures is the cluster's maximum rate (read it
// from the per-stage output, or from the `rate` at which the thresholds abort the run).
//   k6 run -e VIGIL_URL=$LB_URL -e CORPUS=$STATE/corpus.json -e MAX_RATE=4000 cluster-ramp.js
// `-e POST_SHARE=0.5` sets the POST share (default 0.4); failures are counted per method.
import { ocsp, POST_SHARE } from './cluster-lib.js';

const MAX = Number(__ENV.MAX_RATE || 4000);

export const options = {
  scenarios: {
    ramp: {
      executor: 'ramping-arrival-rate',
      exec: 'mixed',
      startRate: Math.ceil(MAX / 20),
      timeUnit: '1s',
      preAllocatedVUs: 50,
      maxVUs: 400,
      stages: [
        { target: Math.ceil(MAX / 4), duration: '20s' },
        { target: Math.ceil(MAX / 2), duration: '20s' },
        { target: MAX, duration: '20s' },
      ],
    },
  },
  thresholds: {
    failed_validations: [{ threshold: 'count==0', abortOnFail: true }],
    'failed_validations{method:GET}': ['count==0'],
    'failed_validations{method:POST}': ['count==0'],
    wrong_answers: ['count==0'],
    http_req_duration: [{ threshold: `p(99)<${__ENV.P99_MS || 250}`, abortOnFail: true, delayAbortEval: '5s' }],
  },
};

export function mixed() { ocsp(Math.random() < POST_SHARE ? 'POST' : 'GET'); }
