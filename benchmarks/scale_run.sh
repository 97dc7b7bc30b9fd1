#!/usr/bin/env bash
# Full-size synthetic data through `metaselector reproduce`, with time and peak memory per stage
# (in each run's report.md). Usage: bash benchmarks/scale_run.sh movielens-1m|amazon-electronics [WORK]
set -euo pipefail
like="$1"; work="${2:-/tmp/metaselector-scale}"
marker=$([ "$like" = movielens-1m ] && echo ml-1m/ratings.dat || echo meta_Electronics.json.gz)
[ -f "$work/$like/$marker" ] || metaselector synth --like "$like" --out "$work/$like"
config=benchmarks/scale.toml
[ "$like" = amazon-electronics ] && config=benchmarks/scale_amazon.toml
metaselector reproduce --dataset "$like" --data-dir "$work/$like" --config "$config" \
  --out "$work/run-$like" --threads 2
grep -A 30 "Time per stage" "$work/run-$like/report.md"
