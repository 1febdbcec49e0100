#!/bin/bash
# On the device machine (bench/gpu_screen.py says how to get here): every lever x toy seed
# as its own process on the one GPU, each cut at DEADLINE s; the curves come back in $OUT.
# 9 processes ran at 0.34 s/step each (session 22): they share the GPU, so more of them
# are not faster in all.
DEADLINE=${DEADLINE:-400}; STEPS=${STEPS:-1000}; EVERY=${EVERY:-250}
# No ffmpeg there: the end-of-run clip grids get empty files (the screen reads no clips).
mkdir -p /tmp/bin && printf '#!/bin/sh\ncat >/dev/null\nfor a; do last=$a; done\n: > "$last"\n' > /tmp/bin/ffmpeg
chmod +x /tmp/bin/ffmpeg && export PATH=/tmp/bin:$PATH
python3 -m pip install -q --no-index --no-deps --target /tmp/site gx/whl/*.whl && export PYTHONPATH=/tmp/site
export OMP_NUM_THREADS=1 PYTHONUNBUFFERED=1
declare -A LEVER=([base]="" [lr1e3]="lr_g=1e-3 lr_d=1e-3" [lr2e3]="lr_g=2e-3 lr_d=2e-3")
R=/tmp/runs; mkdir -p $R  # not under the checkout: each call replaces it with this machine's copy
for name in ${LEVERS:-base lr1e3 lr2e3}; do
  for s in ${SEEDS:-1 4 0}; do
    timeout "$DEADLINE" python3 bench/gpu_screen.py one gx/s$s $R/${name}_s$s max_steps=$STEPS \
      eval_every=$EVERY ${LEVER[$name]} > $R/${name}_s$s.log 2>&1 &
  done
done
wait
grep -h -A3 Traceback $R/*.log | head -20
cd /tmp && tar czf "$OUT/res.tgz" runs/*.log runs/*/eval/curve.jsonl runs/*/config.json runs/*/generator.pt 2>/dev/null
python3 "$OLDPWD/bench/gpu_screen.py" summary /tmp/runs
