#!/usr/bin/env bash
# Reproduces the "Ingest" figures of bench/RESULTS.md in one run on one
# machine: `ingest mimic` against the Python reference (bench/ingest/reference.py)
# on the DICOM and the JPEG paths, at equal cores, on a synthetic world at
# the real image size; then `ingest mimic` on N and 2N images to show that
# its peak memory does not grow with the dataset.
#
#   bench/ingest/run.sh   # ~25 min on a busy 2-core VM, 8 of them generating the
#                         # world (kept under $WORK and reused by later runs)
#
# Settings (environment): STUDIES (studies in the timed N half, default 200,
# about 190 PA/AP images; the world holds twice as many), SIZE (image height
# in pixels, default 2500: MIMIC-CXR is about 3000x2500, a small-image benchmark measures the
# wrong thing), SEED (default 7), CORES (core counts to time, default "2 1";
# each run is pinned with taskset to that many cores), WORK (scratch folder,
# default target/bench-ingest), REPEAT (rounds of timed runs, the fastest of
# each counts, default 3), PROFILE (default 1: also time the reference's
# steps one by one and record `perf` profiles of `ingest mimic` on one core).
#
# Output: a Markdown table on stdout and in bench/ingest/last-run.md; raw
# measurements under $WORK/run/.
set -euo pipefail
cd "$(dirname "$0")/../.."
HERE=bench/ingest
STUDIES=${STUDIES:-200}
SIZE=${SIZE:-2500}
SEED=${SEED:-7}
CORES=${CORES:-"2 1"}
WORK=${WORK:-target/bench-ingest}
PY=.venv/bin/python
TOKENIZER=.cache/clip/tokenizer.json

say() { printf '\033[1m[bench]\033[0m %s\n' "$*" >&2; }

# --- tools -------------------------------------------------------------------
if [ ! -x /usr/bin/time ]; then
  say "installing GNU time (Debian package 'time')"
  SUDO=; [ "$(id -u)" -ne 0 ] && SUDO=sudo
  $SUDO apt-get update -qq && $SUDO apt-get install -y -qq time >/dev/null
fi
if [ ! -x "$PY" ] || [ ! -s "$TOKENIZER" ]; then
  say "running scripts/setup.sh (venv, CLIP tokenizer)"
  scripts/setup.sh
fi
say "Python packages: python/requirements.txt + $HERE/requirements.txt"
"$PY" -m pip install -q -r python/requirements.txt -r "$HERE/requirements.txt"

say "building release binaries (ingest, synth)"
# Only the two binaries the benchmark runs (the workspace's others need
# libtorch); CARGO_TARGET_DIR is honoured, so a separate one keeps this
# build off another user's cargo lock.
TARGET=${CARGO_TARGET_DIR:-target}
cargo build --release -p ingest -p synth
# Copies, so that a rebuild by someone else during the run cannot swap the
# binary between two timed runs.
mkdir -p "$WORK/bin"
cp "$TARGET/release/synth" "$TARGET/release/ingest" "$WORK/bin/"
SYNTH=$WORK/bin/synth
INGEST=$WORK/bin/ingest
PROFILE=${PROFILE:-1}
REPEAT=${REPEAT:-3}

# --- the world ---------------------------------------------------------------
WORLD=$WORK/world-s$((2 * STUDIES))-px$SIZE-seed$SEED
SYNTH_CMD="$SYNTH --out $WORLD --studies $((2 * STUDIES)) --padchest-images 0 --size $SIZE --mimic-format both --seed $SEED"
if [ ! -f "$WORLD/.complete" ]; then
  say "generating $WORLD"
  rm -rf "$WORLD"
  $SYNTH_CMD >&2
  touch "$WORLD/.complete"
fi
HALF=$WORK/half-s$((2 * STUDIES))-px$SIZE-seed$SEED
for kind in mimic-cxr mimic-cxr-jpg; do
  "$PY" $HERE/subset.py "$WORLD/$kind" "$HALF/$kind" >&2
done
# Read every input once so that each timed run finds it in the page cache:
# the first run would otherwise pay for the disk and the others not.
say "warming the page cache ($(du -shL "$WORLD" | cut -f1))"
find "$WORLD" -type f -exec cat {} + >/dev/null

# --- timed runs --------------------------------------------------------------
RUN=$WORK/run
rm -rf "$RUN"
mkdir -p "$RUN"

# pin N CMD...: run CMD on the first N cores only (equal cores for both sides).
pin() { local n=$1; shift; taskset -c "0-$((n - 1))" "$@"; }

timed() { # NAME COMMAND... -> $RUN/NAME.json and output $RUN/NAME.out: the fastest try so far
  local name=$1; shift
  say "$name"
  rm -rf "$RUN/$name.try.out"
  "$PY" $HERE/measure.py --json "$RUN/$name.try.json" -- "$@" \
    >"$RUN/$name.log" 2>&1 || say "$name failed (exit $?): see $RUN/$name.log"
  "$PY" - "$RUN/$name" <<'PY'
import json, os, shutil, sys
base = sys.argv[1]
new = json.load(open(base + ".try.json"))
old = json.load(open(base + ".json")) if os.path.exists(base + ".json") else None
walls = (old or {}).get("all_walls_s", []) + [new["wall_s"]]
if old is None or (new["rc"] == 0 and (old["rc"] != 0 or new["wall_s"] < old["wall_s"])):
    shutil.rmtree(base + ".out", ignore_errors=True)
    os.makedirs(base + ".try.out", exist_ok=True)
    os.rename(base + ".try.out", base + ".out")
    old = new
else:
    shutil.rmtree(base + ".try.out", ignore_errors=True)
old["all_walls_s"] = walls
json.dump(old, open(base + ".json", "w"), indent=1)
os.remove(base + ".try.json")
PY
}

ours() { # NAME ROOT CORES
  timed "$1" taskset -c "0-$(($3 - 1))" "$INGEST" --threads "$3" mimic --root "$2" --out "$RUN/$1.try.out" --tokenizer "$TOKENIZER"
}

ref() { # NAME ROOT FORMAT CORES
  timed "$1" taskset -c "0-$(($4 - 1))" "$PY" $HERE/reference.py --root "$2" --out "$RUN/$1.try.out" --format "$3" \
    --workers "$4" --tokenizer "$TOKENIZER"
}

# REPEAT rounds, each timing every run once, interleaved so that a burst of
# other work on the machine hits both sides alike; the fastest try counts.
C_FLAT=${CORES%% *}
for round in $(seq "$REPEAT"); do
  say "round $round of $REPEAT"
  for c in $CORES; do
    ours "ours-dicom-c$c" "$HALF/mimic-cxr" "$c"
    ref "ref-dicom-c$c" "$HALF/mimic-cxr" dicom "$c"
    ours "ours-jpg-c$c" "$HALF/mimic-cxr-jpg" "$c"
    ref "ref-jpg-c$c" "$HALF/mimic-cxr-jpg" jpg "$c"
  done
  # Flat memory: the same run on N and on 2N images.
  ours "ours-dicom-c$C_FLAT-N" "$HALF/mimic-cxr" "$C_FLAT"
  ours "ours-dicom-c$C_FLAT-2N" "$WORLD/mimic-cxr" "$C_FLAT"
done

for fmt in dicom jpg; do
  "$PY" $HERE/compare.py "$RUN/ours-$fmt-c$C_FLAT.out" "$RUN/ref-$fmt-c$C_FLAT.out" \
    --json "$RUN/parity-$fmt.json" >&2
done

# --- where the time goes ----------------------------------------------------
if [ "$PROFILE" = 1 ]; then
  for fmt in dicom jpg; do
    root=$HALF/mimic-cxr; [ $fmt = jpg ] && root=$HALF/mimic-cxr-jpg
    say "profile: reference steps ($fmt, one core)"
    pin 1 "$PY" $HERE/phases.py "$root" --format $fmt --limit 40 --tokenizer "$TOKENIZER" \
      >"$RUN/phases-$fmt.json" 2>>"$RUN/phases.log" || say "phases.py failed: see $RUN/phases.log"
    if command -v perf >/dev/null; then
      say "profile: perf record of ingest mimic ($fmt, one core)"
      rm -rf "$RUN/perf-$fmt.out"
      if pin 1 perf record -q -F 499 -o "$RUN/perf-$fmt.data" -- "$INGEST" --threads 1 mimic --root "$root" \
          --out "$RUN/perf-$fmt.out" --tokenizer "$TOKENIZER" >>"$RUN/perf.log" 2>&1; then
        perf report -i "$RUN/perf-$fmt.data" --no-children --sort dso,symbol --percent-limit 1.5 \
          --stdio 2>>"$RUN/perf.log" | grep -v '^#' | grep -v '^$' >"$RUN/perf-$fmt.txt" || true
      else
        say "perf record failed: see $RUN/perf.log"
      fi
      rm -rf "$RUN/perf-$fmt.out"
    fi
  done
fi

# --- report ------------------------------------------------------------------
COMMIT="$(git rev-parse --short HEAD)"
git diff --quiet HEAD -- crates Cargo.toml Cargo.lock 2>/dev/null || COMMIT="$COMMIT + uncommitted changes"
COMMAND="bench/ingest/run.sh"
[ "$STUDIES/$SIZE/$SEED/$CORES/$REPEAT" = "200/2500/7/2 1/3" ] ||
  COMMAND="STUDIES=$STUDIES SIZE=$SIZE SEED=$SEED CORES='$CORES' REPEAT=$REPEAT $COMMAND"
MACHINE="$(lscpu | sed -n 's/^Model name: *//p' | head -1), nproc $(nproc), $(free -g | awk '/Mem:/ {print $2}') GiB RAM"
REPEAT=$REPEAT COMMIT=$COMMIT COMMAND=$COMMAND MACHINE=$MACHINE SYNTH_CMD=$SYNTH_CMD WORLD=$WORLD CORES=$CORES \
  "$PY" - "$RUN/meta.json" <<'PY'
import datetime, json, os, sys
e = os.environ
m = json.load(open(os.path.join(e["WORLD"], "world.json"))).get("mimic", {})
syntaxes = ", ".join(f"{uid}: {n}" for uid, n in sorted(m.get("dicom_per_transfer_syntax", {}).items()))
json.dump({
    "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    "machine": e["MACHINE"],
    "commit": e["COMMIT"],
    "synth": e["SYNTH_CMD"],
    "world": f"{m.get('studies', '?')} studies, {m.get('images', '?')} images of all views; "
             f"DICOM transfer syntaxes {syntaxes}",
    "half": "the first half of the subjects (bench/ingest/subset.py)",
    "command": e["COMMAND"],
    "cores": e["CORES"].split(),
    "repeat": int(e["REPEAT"]),
}, open(sys.argv[1], "w"), indent=1)
PY
"$PY" $HERE/table.py "$RUN" | tee $HERE/last-run.md
