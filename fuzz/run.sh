#!/usr/bin/env bash
# Runs every fuzz target for SECONDS each (default 600), one after another, on the nightly
# toolchain (cargo install cargo-fuzz once). Runs start from fuzz/seeds/<target> (committed)
# and fuzz/corpus/<target> (local, where new inputs go); crashes land in
# fuzz/artifacts/<target>; each run's log goes to fuzz/logs/<target>.log.
#   bash fuzz/run.sh 600            # all targets, 10 minutes each
#   bash fuzz/run.sh 60 authority   # one target
set -euo pipefail
cd "$(dirname "$0")"
secs="${1:-600}"
shift || true
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  targets=(path_normalize authority request_head yaml_config client_hello)
fi
mkdir -p logs
for t in "${targets[@]}"; do
  mkdir -p "corpus/$t" "seeds/$t"
  cargo +nightly fuzz run "$t" "corpus/$t" "seeds/$t" -- -max_total_time="$secs" -rss_limit_mb=4096 -timeout=10 \
    > "logs/$t.log" 2>&1 && status=clean || status="FAILED ($?)"
  echo "$t: $status; $(grep -E '^Done [0-9]+ runs' "logs/$t.log" || tail -1 "logs/$t.log")"
done
