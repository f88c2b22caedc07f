#!/bin/sh
# Viaduct step launcher: the main process of a job container.
#
# The runner sends step numbers, one per line, through /.viaduct/requests.
# Step N's files are in /.viaduct/steps/N (read-only here): `script`, `env`
# (KEY='value' lines), `cwd`, and three FIFOs the runner holds open: `out`
# (the step's stdout and stderr), `signal` (signal names to send to the
# step's process group), `done` (where its exit status is written). Its
# outputs go to /.viaduct-out/N ($VIADUCT_OUTPUT). A program a plugin step
# runs comes as `xN` with an `err` FIFO of its own. "exit" ends the job.
exec 3< /.viaduct/requests
if command -v setsid >/dev/null 2>&1; then own_group=setsid; else own_group=; fi
while read -r n <&3; do
  [ "$n" = exit ] && exit 0
  d=/.viaduct/steps/$n
  # A plugin's program has its own stderr FIFO; a step's stderr joins stdout.
  if [ -p "$d/err" ]; then err="$d/err"; else err="$d/out"; fi
  $own_group sh -c 'cd "$2" || { echo "viaduct: no directory $2" >&2; exit 127; }
set -a; . "$1/env"; set +a
exec sh -e "$1/script"' step "$d" "$(cat "$d/cwd")" >"$d/out" 2>"$err" </dev/null &
  pid=$!
  ( while read -r sig; do kill -s "$sig" -- "-$pid" 2>/dev/null || kill -s "$sig" "$pid" 2>/dev/null; done <"$d/signal" ) &
  watcher=$!
  wait "$pid"
  code=$?
  # What the step left running dies with it: its group, and whatever left
  # the group (every process but this launcher and the init; services run
  # in their own containers). Between steps nothing in the container runs,
  # so nothing changes the workspace while the runner reads it.
  kill -s KILL -- "-$pid" 2>/dev/null
  kill -s KILL -1 2>/dev/null
  kill "$watcher" 2>/dev/null
  echo "$code" >"$d/done"
done
