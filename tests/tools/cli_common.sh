# Shared by the tests/cli_*.sh scripts: source it after setting qdiff.
#   tmp      a scratch folder, removed on exit
#   ok/bad   count and print a check's result; the script ends with `finish`
#   expect NAME WANT_TEXT -- ARGS...   qdiff ARGS must exit 2 with WANT_TEXT on stderr, no
#            sanitizer report, and leave no "out*" file or folder in $tmp (no partial output)
#   clean    no sanitizer report in $tmp/stderr;  no_leftovers: no $tmp/out* left
#   png_param FILE   the PNG's "parameters" tEXt chunk (what A1111/qdiff record)
py=${QD_PYTHON:-/usr/bin/python3}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
pass=0
fail=0
ok() { echo "ok   $*"; pass=$((pass + 1)); }
bad() { echo "FAIL $*"; fail=$((fail + 1)); }

clean() { ! grep -q "AddressSanitizer\|LeakSanitizer\|runtime error" "$tmp/stderr"; }
no_leftovers() { ! ls -d "$tmp"/out* >/dev/null 2>&1; }

expect() {
  local name=$1 want=$2
  shift 3
  rm -rf "$tmp"/out*
  "$qdiff" "$@" >"$tmp/stdout" 2>"$tmp/stderr"
  local rc=$? left
  left=$(ls "$tmp" | grep -E '^out' || true)
  if [[ $rc -eq 2 ]] && grep -qF -- "$want" "$tmp/stderr" && [[ -z "$left" ]] && clean; then
    ok "$name: $(head -c 300 "$tmp/stderr" | tr '\n' ' ')"
  else
    bad "$name: rc=$rc left='$left' stderr: $(head -c 600 "$tmp/stderr")"
  fi
}

png_param() {
  "$py" - "$1" <<'PY'
import struct, sys
d = open(sys.argv[1], "rb").read()
i = 8
while i < len(d):
    n, t = struct.unpack(">I4s", d[i:i + 8])
    if t == b"tEXt":
        k, v = d[i + 8:i + 8 + n].split(b"\0", 1)
        if k == b"parameters":
            print(v.decode("latin-1"))
    i += 12 + n
PY
}

finish() {
  echo "$pass passed, $fail failed"
  [[ $fail -eq 0 ]]
}
