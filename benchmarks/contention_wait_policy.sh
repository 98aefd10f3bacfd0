#!/bin/bash
# Times `python -m injcert invert` at 64^2 alone and next to a competing PyTorch loop under one
# OpenMP wait setting (run from a folder holding astronaut64.png): see injcert/threads.py.
# usage: run.sh LABEL ENV...  -> prints label alone contended
PY=${PY:-python}
label=$1; shift
t() { local s=$(date +%s.%N); env "$@" $PY -m injcert invert astronaut64.png --out l.safetensors --quiet >/dev/null 2>&1; echo "$(date +%s.%N) - $s" | bc; }
a1=$(t "$@"); a2=$(t "$@")
$PY -c 'import torch; a=torch.randn(2000,2000); [a@a for _ in range(10**6)]' & cp=$!
sleep 2
c1=$(t "$@"); c2=$(t "$@")
kill $cp; wait $cp 2>/dev/null
echo "$label | alone $a1 $a2 | contended $c1 $c2 | load $(cut -d' ' -f1 /proc/loadavg)"
