#!/bin/bash
# Alternating before/after runs of benchmarks.bench_cpu_vs_torch: release 0.1.0 (commit 1ec347c)
# against the working tree, each in its own processes. Prepared with:
#   git worktree add /tmp/before 1ec347c && (cd /tmp/before && pip wheel --no-deps . -w /tmp/before_wheel)
#   pip install --no-deps --target /tmp/before_site /tmp/before_wheel/gpucnn-0.1.0-py3-none-any.whl
#   mkdir /tmp/before_run && cp -r /tmp/before/benchmarks /tmp/before_run/   # no gpucnn/ beside it
. /work/main/.venv/bin/activate
for round in 1 2 3 4 5; do
  for backend in numba numpy; do
    (cd /tmp/before_run && PYTHONPATH=/tmp/before_site python -m benchmarks.bench_cpu_vs_torch --backend $backend --batch-sizes 100 --rounds 3 --no-compile --retries 2 --out /tmp/ab/before_${backend}_$round.md > /dev/null 2>&1)
    (cd /work/main && python -m benchmarks.bench_cpu_vs_torch --backend $backend --batch-sizes 100 --rounds 3 --no-compile --retries 2 --out /tmp/ab/after_${backend}_$round.md > /dev/null 2>&1)
  done
done
echo done
