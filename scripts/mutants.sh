#!/usr/bin/env bash
# Proves that the battle suite bites: applies each mutant of fixtures/mutants/
# to a scratch copy of the tree, builds gauntlet there (the orchestrator it
# runs is built in), runs the suite's scenarios against it and prints which
# scenario and check caught each mutant.
#
# usage: scripts/mutants.sh [--all] [--out DIR] [MUTANT...]
#
#   MUTANT   names of fixtures/mutants/*.patch to run (default: every one)
#   --all    run every scenario for every mutant, listing every check that
#            caught it; by default a mutant's run stops at the first scenario
#            that fails, trying the scenarios its patch names first
#   --out    where the scratch tree, the reports and mutants.md go
#            (default: $GAUNTLET_MUTANTS_DIR, else /tmp/gauntlet-mutants)
#
# A patch starts with three header lines that `git apply` ignores:
#   Mutant: what it breaks, in one line
#   Guarantee: the row of design.md's seed-guarantee table it breaks
#   Scenarios: the scenarios expected to catch it, tried first
#
# Exit codes: 0 every mutant caught, 1 a mutant survived the suite, 2 bad
# input or environment (a patch that does not apply or build, a scenario that
# cannot run). Mutants must stay out of system/src/config and system/src/yaml,
# which the harness itself uses to read scenarios.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
repo=$(pwd)

all=0
out="${GAUNTLET_MUTANTS_DIR:-/tmp/gauntlet-mutants}"
names=()
while [ $# -gt 0 ]; do
  case "$1" in
    --all) all=1 ;;
    --out) out="$2"; shift ;;
    -h|--help) sed -n '2,27p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    -*) echo "mutants.sh: unknown option $1" >&2; exit 2 ;;
    *) names+=("$1") ;;
  esac
  shift
done
if [ "${#names[@]}" -eq 0 ]; then
  for patch in fixtures/mutants/*.patch; do
    names+=("$(basename "$patch" .patch)")
  done
fi
for name in "${names[@]}"; do
  if [ ! -f "fixtures/mutants/$name.patch" ]; then
    echo "mutants.sh: no mutant $name (fixtures/mutants/$name.patch)" >&2
    exit 2
  fi
  if grep -Eq '^\+\+\+ b/system/src/(config|yaml)/' "fixtures/mutants/$name.patch"; then
    echo "mutants.sh: $name patches system/src/config or system/src/yaml, which the harness reads scenarios with" >&2
    exit 2
  fi
done

# A build cache of its own, so that mutated builds never replace the main
# tree's binaries. Seeded with hard links to the main cache's dependencies,
# which are identical (same lock file, same flags) and so stay fresh: only
# the two workspace crates are built per mutant.
main_target="${CARGO_TARGET_DIR:-$repo/target}"
target="${GAUNTLET_MUTANTS_TARGET:-$(dirname "$main_target")/mutants-target}"
if [ ! -d "$target/debug/deps" ] && [ -d "$main_target/debug/deps" ]; then
  mkdir -p "$target/debug"
  for part in deps build .fingerprint; do
    cp -al "$main_target/debug/$part" "$target/debug/$part"
  done
fi

tree="$out/tree"
reports="$out/reports"
mkdir -p "$out"
rm -rf "$tree" "$reports"
mkdir -p "$tree" "$reports"
# The tracked files as they are in the working tree.
copy_tracked() { git ls-files -z -- "$@" | tar --null -T - -cf - | tar -xf - -C "$tree"; }
copy_tracked .
mapfile -t suite < <(cd "$tree" && ls scenarios/*.yaml)
# Stop a run still going (Ctrl-C) without leaving the scratch tree mutated
# for the next one: it is rebuilt from the repository at every start.
trap 'echo "mutants.sh: interrupted" >&2; exit 2' INT TERM

caught_all=1
broken=0
rows=()
for name in "${names[@]}"; do
  patch="$repo/fixtures/mutants/$name.patch"
  what=$(sed -n 's/^Mutant: //p' "$patch" | head -n 1)
  first=$(sed -n 's/^Scenarios: //p' "$patch" | head -n 1)
  # A clean system/ for every mutant, then the mutant.
  rm -rf "$tree/system"
  copy_tracked system
  if ! (cd "$tree" && git apply "$patch"); then
    echo "mutants.sh: $name does not apply" >&2
    rows+=("| \`$name\` | broken | - | the patch does not apply |")
    broken=1
    continue
  fi
  printf '\n==> %s: %s\n' "$name" "$what"
  if ! (cd "$tree" && CARGO_TARGET_DIR="$target" cargo build --quiet --locked -p gauntlet --bin gauntlet); then
    echo "mutants.sh: $name does not build" >&2
    rows+=("| \`$name\` | broken | - | the mutated tree does not build |")
    broken=1
    continue
  fi
  bin="$out/gauntlet-$name"
  cp "$target/debug/gauntlet" "$bin"
  order=()
  for s in $first; do order+=("scenarios/$s.yaml"); done
  for s in "${suite[@]}"; do
    case " ${order[*]} " in *" $s "*) ;; *) order+=("$s") ;; esac
  done
  by=()
  for scenario in "${order[@]}"; do
    [ -f "$tree/$scenario" ] || { echo "mutants.sh: $name names $scenario, which does not exist" >&2; broken=1; continue; }
    base=$(basename "$scenario" .yaml)
    dir="$reports/$name"
    status=0
    # A scenario runs well under five minutes; a mutant that hangs one is
    # killed and counts as caught by the timeout.
    (cd "$tree" && timeout 600 "$bin" run "$scenario" --report-dir "$dir" >"$dir.$base.log" 2>&1) || status=$?
    case "$status" in
      0) continue ;;
      1)
        checks=$(python3 - "$dir/$base/report.json" <<'PY'
import json, sys
report = json.load(open(sys.argv[1]))
failed = [c["name"] + (f" ({c['window']})" if c.get("window") else "")
          for c in report["checks"] if c["verdict"] != "pass"]
print(", ".join(f"`{f}`" for f in failed))
PY
)
        by+=("$base: $checks")
        echo "    caught by $base: $checks"
        ;;
      124)
        by+=("$base: timed out")
        echo "    caught by $base: the run timed out"
        ;;
      *)
        echo "mutants.sh: $name: gauntlet run $scenario exited $status (see $dir.$base.log)" >&2
        broken=1
        ;;
    esac
    if [ "${#by[@]}" -gt 0 ] && [ "$all" -eq 0 ]; then
      break
    fi
  done
  if [ "${#by[@]}" -eq 0 ]; then
    echo "    SURVIVED: every scenario passed"
    rows+=("| \`$name\` | **survived** | - | $what |")
    caught_all=0
  else
    joined=$(printf '%s; ' "${by[@]}")
    rows+=("| \`$name\` | caught | ${joined%; } | $what |")
  fi
done

{
  echo "| mutant | verdict | caught by (scenario: checks) | what it breaks |"
  echo "|---|---|---|---|"
  printf '%s\n' "${rows[@]}"
} >"$out/mutants.md"
echo
cat "$out/mutants.md"
echo
echo "table: $out/mutants.md"
if [ "$broken" -ne 0 ]; then
  exit 2
fi
if [ "$caught_all" -ne 1 ]; then
  exit 1
fi
