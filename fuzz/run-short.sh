#!/usr/bin/env bash
# A short run of every fuzz target (CI): seeds the corpora, then fuzzes each target for
# FUZZ_SECONDS (default 20). cargo-fuzz needs nightly-only compiler flags; RUSTC_BOOTSTRAP lets
# the one stable toolchain on these machines accept them.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
cd "$here"
seconds="${FUZZ_SECONDS:-20}"
# vigil forbids unsafe code, so the short CI run fuzzes for panics, hangs and memory blow-ups
# without AddressSanitizer: an instrumented build is about twice the size on disk and CI machines
# are short of disk. FUZZ_SANITIZER=address brings it back for a long local run.
sanitizer="${FUZZ_SANITIZER:-none}"
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked --quiet
bash ./seed.sh >/dev/null
export RUSTC_BOOTSTRAP=1
cargo fuzz build -O -s "$sanitizer"
failed=0
for t in $(cargo fuzz list); do
  mkdir -p "corpus/$t"
  if cargo fuzz run -O -s "$sanitizer" "$t" "corpus/$t" -- -max_total_time="$seconds" -rss_limit_mb=2048 >"/tmp/vigil-fuzz-$t.log" 2>&1; then
    echo "fuzz $t: ok ($(grep -o 'Done [0-9]* runs' "/tmp/vigil-fuzz-$t.log" || echo 'no summary'))"
  else
    echo "fuzz $t: FAILED, see /tmp/vigil-fuzz-$t.log and fuzz/artifacts/$t"
    tail -30 "/tmp/vigil-fuzz-$t.log"
    failed=1
  fi
done
exit "$failed"
