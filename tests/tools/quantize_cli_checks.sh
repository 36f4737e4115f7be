# Shared by the quantize CLI tests (source it after setting qdiff, tmp, pass=0, fail=0).
ok() { echo "ok   $1"; pass=$((pass + 1)); }
bad() { echo "FAIL $1"; fail=$((fail + 1)); }
clean() { ! grep -q "AddressSanitizer\|runtime error\|LeakSanitizer" "$tmp/stderr"; }
no_leftovers() { ! ls -d "$tmp"/out* >/dev/null 2>&1; }

# expect NAME WANT_TEXT -- ARGS: exit 2, stderr contains WANT_TEXT, no out* file or folder left
expect() {
  local name=$1 want=$2
  shift 3
  "$qdiff" "$@" >"$tmp/stdout" 2>"$tmp/stderr"
  local rc=$?
  if [[ $rc -eq 2 ]] && grep -qF -- "$want" "$tmp/stderr" && clean && no_leftovers; then
    ok "$name: $(head -c 300 "$tmp/stderr" | tr '\n' ' ')"
  else
    bad "$name: rc=$rc leftovers: $(ls -d "$tmp"/out* 2>/dev/null) stderr: $(head -c 600 "$tmp/stderr")"
  fi
}
