#!/bin/sh
# A test target's step: run those of the named test files (globs allowed) that exist, in `make test`'s
# order; fail when none does. Usage: run-tests.sh "<files or globs>" (PYTEST_ARGS is passed to pytest).
# TEST_KINDS (default "e2e integration unit") keeps only the files under tests/<kind>/ for those kinds: the
# arm64 images, built under emulation, run "integration unit". TEST_DESELECT (one word) leaves out the test
# files whose names contain it and the tests it matches as a -k keyword (pytest counts those as deselected).
set -u
kinds="${TEST_KINDS:-e2e integration unit}"
selected=$(for f in $1; do
    [ -e "$f" ] || continue
    for kind in $kinds; do case "$f" in "tests/$kind/"*) echo "$f" ;; esac; done
done | sort)
[ -n "$selected" ] || { echo "no $kinds tests found among: $1" >&2; exit 1; }
echo "run-tests.sh: $(echo "$selected" | wc -l) test paths of kinds: $kinds"
# shellcheck disable=SC2086  # both lists are word lists on purpose
if [ -n "${TEST_DESELECT:-}" ]; then
    # Files are not even collected (a module may import the library at its top), other tests are deselected.
    echo "run-tests.sh: leaving out the test files named *${TEST_DESELECT}* and the tests matching -k '${TEST_DESELECT}'"
    python -m pytest ${PYTEST_ARGS:-} --basetemp=/tmp/pytest --ignore-glob="*${TEST_DESELECT}*" \
        -k "not ${TEST_DESELECT}" $selected
else
    python -m pytest ${PYTEST_ARGS:-} --basetemp=/tmp/pytest $selected
fi
rc=$?
rm -rf /tmp/pytest  # keep pytest's temporary servers out of the layer
exit $rc
