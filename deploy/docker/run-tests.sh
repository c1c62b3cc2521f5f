#!/bin/sh
# A test target's step: run those of the named test files (globs allowed) that exist, in `make test`'s
# order; fail when none does. Usage: run-tests.sh "<files or globs>" (PYTEST_ARGS is passed to pytest).
set -u
selected=$(for f in $1; do [ -e "$f" ] && echo "$f"; done | sort)
[ -n "$selected" ] || { echo "no tests found among: $1" >&2; exit 1; }
# shellcheck disable=SC2086  # both lists are word lists on purpose
python -m pytest ${PYTEST_ARGS:-} --basetemp=/tmp/pytest $selected
rc=$?
rm -rf /tmp/pytest  # keep pytest's temporary servers out of the layer
exit $rc
