#!/usr/bin/env bash
# The ComfyUI node pack (bindings/comfyui) driven without ComfyUI by tests/comfyui/test_node.py,
# against the libqdiff.so built beside the qdiff binary and the CLI's own output.
# Needs Debian's python3 with python3-torch, python3-numpy and python3-pil: a missing one FAILS
# the test (it never skips). $QD_PYTHON overrides the interpreter (default /usr/bin/python3,
# where Debian's packages are, whatever python3 comes first in PATH).
# In the AddressSanitizer build the instrumented library is loaded into python with libasan
# preloaded (it must come first in the process); python's and torch's own leaks at exit are
# expected, so leak reports count only when a frame is in libqdiff, and any ASan or UBSan error
# fails the test.
# usage: cli_comfyui_node.sh path/to/qdiff path/to/tests/fixtures
set -u
qdiff=$(realpath "$1")
fx=$(realpath "$2")
here=$(cd "$(dirname "$0")" && pwd)
repo=$(dirname "$here")
lib=$(dirname "$qdiff")/libqdiff.so
py=${QD_PYTHON:-/usr/bin/python3}
[[ -x "$py" ]] || py=python3
if [[ ! -e "$lib" ]]; then
  echo "FAIL: $lib not built (cmake target qdiff_shared)"
  exit 1
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
export QDIFF_LIB=$lib QD_QDIFF=$qdiff QD_FIXTURES=$fx PYTHONDONTWRITEBYTECODE=1   # no __pycache__ in the source tree

asan=$(ldd "$lib" | awk '/libasan/ {print $3}')
if [[ -z "$asan" ]]; then
  "$py" "$repo/tests/comfyui/test_node.py"
  exit $?
fi

echo "ASan build: preloading $asan into $py"
# exitcode=0: python's expected leaks must not decide the status; the log scan below does.
LD_PRELOAD=$asan ASAN_OPTIONS="detect_leaks=1:exitcode=0:log_path=$tmp/asan" \
  UBSAN_OPTIONS="print_stacktrace=1:log_path=$tmp/ubsan" \
  "$py" "$repo/tests/comfyui/test_node.py" | tee "$tmp/out"
rc=${PIPESTATUS[0]}
fail=0
if [[ $rc -ne 0 ]] || ! grep -qE '^[0-9]+ passed, 0 failed$' "$tmp/out"; then
  echo "FAIL: test_node.py exited $rc"
  fail=1
fi
for f in "$tmp"/asan.* "$tmp"/ubsan.*; do
  [[ -e "$f" ]] || continue
  if grep -qE 'ERROR: AddressSanitizer|runtime error' "$f"; then
    echo "FAIL: sanitizer error in $f:"; cat "$f"; fail=1
  fi
  # one leak report per blank-line separated block; ours have a frame in the library's sources
  ours=$(awk -v RS= -v src="$repo/src/" 'index($0, "leak of") && (index($0, src) || index($0, "libqdiff.so")) {print; print ""}' "$f")
  if [[ -n "$ours" ]]; then
    echo "FAIL: libqdiff leaked ($f):"; echo "$ours"; fail=1
  fi
done
[[ $fail -eq 0 ]] && echo "ASan: no error and no leak from libqdiff"
exit $fail
