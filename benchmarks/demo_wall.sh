#!/bin/bash
# The demo's wall time from an empty folder, with an optional self-made load (docs/front-door.md,
# "The demo's time, processes and threads").
#
#   bash benchmarks/demo_wall.sh NAME LOAD WORKERS THREADS
#
# NAME: the run's label (output in /tmp/m-NAME, removed first); LOAD: busy-looping processes started
# before the demo and stopped after it (0 = none); WORKERS, THREADS: `cemaps demo --workers --threads`.
# CAP (seconds, default 900) stops a run that takes longer. Prints the demo's phase line, the face's
# subject checks, and /usr/bin/time's wall time and peak RSS (of the largest process).
name=$1; load=$2; workers=$3; threads=$4
cemaps=${CEMAPS:-$(dirname "$0")/../.venv/bin/cemaps}
rm -rf /tmp/m-$name
spin=()
for i in $(seq 1 $load); do python3 -c "while True: pass" & spin+=($!); done
echo "[$name] start $(date +%T) load=$load workers=$workers threads=$threads loadavg $(cut -d' ' -f1-3 /proc/loadavg)"
/usr/bin/time -f "[$name] wall %e s, max RSS %M kB" timeout ${CAP:-900} "$cemaps" demo --out /tmp/m-$name --workers $workers --threads $threads 2>&1 | tr '\r' '\n' | grep -E "time \(|done in|subject check db-toyface|subject check lora-toyface|wall|Error|error"
echo "[$name] rc ${PIPESTATUS[0]} end $(date +%T)"
[ ${#spin[@]} -gt 0 ] && kill ${spin[@]}
