#!/usr/bin/env bash
# The web page of qdiff serve in headless Chromium (Debian's chromium, driven over the
# DevTools protocol by tests/web/drive_page.js): fill the form, generate with the fixture
# model shapes-sd, see the live preview and progress, the image (its pixels equal to
# `qdiff generate` with the same settings), its parameters and the session's history.
# The screenshot is kept in the build directory: BUILD/test-artifacts/cli_web.png.
# Chromium or Node missing is a failure, not a skip.
# usage: cli_web.sh path/to/qdiff path/to/tests/fixtures
set -u
qdiff=$1
fx=$(cd "$2" && pwd)
here=$(cd "$(dirname "$0")" && pwd)
chk="$here/tools/serve_check.py"
artifacts="$(cd "$(dirname "$qdiff")" && pwd)/test-artifacts"
spid=
cleanup() {
  [[ -n $spid ]] && kill "$spid" 2>/dev/null
  wait 2>/dev/null
  rm -rf "$tmp"
}
. "$(dirname "$0")/tools/cli_common.sh"
trap cleanup EXIT   # after cli_common.sh: also stops the server

chromium=$(command -v chromium || command -v chromium-browser)
[[ -n $chromium ]] && ok "chromium: $chromium" || { bad "chromium is not installed (scripts/install-deps.sh installs it)"; finish; exit 1; }
command -v node >/dev/null && ok "node $(node --version)" || { bad "node is not installed (scripts/install-deps.sh installs nodejs)"; finish; exit 1; }
command -v python3 >/dev/null || { bad "python3 is not installed"; finish; exit 1; }

log="$tmp/serve.log"
"$qdiff" serve --port 0 -m "$fx/models/shapes-sd" -t 2 --preview-vae "$fx/models/shapes-sd/vae" --preview-every 5 2>"$log" &
spid=$!
U=
for _ in $(seq 300); do
  U=$(grep -o 'http://127\.0\.0\.1:[0-9]*' "$log" | head -1)
  [[ -n $U ]] && break
  sleep 0.1
done
[[ -n $U ]] && ok "server at $U" || { bad "server did not start: $(cat "$log")"; finish; exit 1; }

mkdir -p "$artifacts"
init_pic="$fx/goldens/shapes-sd/pipe_03.png"   # the img2img upload
mask_pic="$tmp/mask.png"   # the inpainting upload: the left half repainted
wide_pic="$tmp/wide.png"   # the img2img upload of "crop and resize"
"${QD_PYTHON:-/usr/bin/python3}" -c "
from PIL import Image
h = Image.new('L', (64, 64), 0); h.paste(255, (0, 0, 32, 64)); h.save('$mask_pic')
# the crop-and-resize upload: the picture between two 24 px bands (its centre 64x64 is the picture)
w = Image.new('RGB', (112, 64), (250, 220, 40)); w.paste((30, 200, 60), (88, 0, 112, 64))
w.paste(Image.open('$init_pic').convert('RGB'), (24, 0)); w.save('$wide_pic')
" || bad "making the mask and the wide picture with PIL"
if node "$here/web/drive_page.js" "$chromium" "$U/" "$tmp" "$init_pic" "$mask_pic" "$wide_pic" >"$tmp/drive.out" 2>"$tmp/drive.err"; then
  ok "page driven: $(cat "$tmp/drive.out")"
else
  bad "driving the page: $(cat "$tmp/drive.err") $(cat "$tmp/drive.out")"
  finish
  exit 1
fi
cp "$tmp/screenshot.png" "$artifacts/cli_web.png" && ok "screenshot kept: $artifacts/cli_web.png ($(python3 "$chk" size "$tmp/screenshot.png" 2>/dev/null || echo '?'))"
st="$tmp/state.json"
[[ $(python3 "$chk" get "$st" samplers) -gt 20 ]] && ok "sampler list filled from /sdapi/v1/samplers ($(python3 "$chk" get "$st" samplers) entries)" \
  || bad "sampler list: $(cat "$st")"
[[ $(python3 "$chk" get "$st" sawProgress) == true ]] && ok "live progress shown (step k/n)" || bad "no live progress"
[[ $(python3 "$chk" get "$st" sawPreview) -ge 1 ]] && ok "live preview image shown $(python3 "$chk" get "$st" sawPreview) time(s)" \
  || bad "no preview shown"
[[ $(python3 "$chk" get "$st" first.w) == 64 && $(python3 "$chk" get "$st" first.h) == 64 ]] \
  && ok "the image is shown (64x64)" || bad "image size: $(cat "$st")"
params=$(python3 "$chk" get "$st" first.params)
[[ $params == *"a red circle on a blue background"* && $params == *"Negative prompt: blurry"* && $params == *"Seed: 1234"* && \
   $params == *"Sampler: euler_ancestral"* && $params == *"Steps: 100"* ]] && ok "its parameters are shown: ${params//$'\n'/ | }" \
  || bad "parameters shown: $params"
[[ $(python3 "$chk" get "$st" history) == 2 && $(python3 "$chk" get "$st" historyClickShows) == true ]] \
  && ok "the history keeps both images; a thumbnail click shows it again" || bad "history: $(cat "$st")"

"$qdiff" generate -m "$fx/models/shapes-sd" -t 2 -q -p "a red circle on a blue background" -n blurry -W 64 -H 64 \
  --steps 100 --cfg 5 --seed 1234 --sampler euler_ancestral -o "$tmp/cli-1.png"
"$qdiff" generate -m "$fx/models/shapes-sd" -t 2 -q -p "a red circle on a blue background" -n blurry -W 64 -H 64 \
  --steps 8 --cfg 5 --seed 99 --sampler euler_ancestral -o "$tmp/cli-2.png"
"$qdiff" generate -m "$fx/models/shapes-sd" -t 2 -q -p "a red circle on a blue background" -n blurry -W 64 -H 64 \
  --steps 10 --cfg 5 --seed 7 --sampler euler_ancestral --init-image "$init_pic" --strength 0.5 -o "$tmp/cli-3.png"
"$qdiff" generate -m "$fx/models/shapes-sd" -t 2 -q -p "a red circle on a blue background" -n blurry -W 64 -H 64 \
  --steps 10 --cfg 5 --seed 7 --sampler euler_ancestral --init-image "$init_pic" --strength 0.75 --mask "$mask_pic" --mask-overlay -o "$tmp/cli-4.png"
"$qdiff" generate -m "$fx/models/shapes-sd" -t 2 -q -p "a red circle on a blue background" -n blurry -W 64 -H 64 \
  --steps 10 --cfg 5 --seed 7 --sampler euler_ancestral --init-image "$init_pic" --strength 0.75 --mask "$mask_pic" --only-masked 8 -o "$tmp/cli-5.png"
"$qdiff" generate -m "$fx/models/shapes-sd" -t 2 -q -p "a red circle on a blue background" -n blurry -W 64 -H 64 \
  --steps 10 --cfg 5 --seed 7 --sampler euler_ancestral --init-image "$wide_pic" --strength 0.5 --resize-mode crop -o "$tmp/cli-6.png"
"$qdiff" generate -m "$fx/models/shapes-sd" -t 2 -q -p "a red circle on a blue background" -n blurry -W 64 -H 64 \
  --steps 10 --cfg 5 --seed 7 --sampler euler_ancestral --init-image "$wide_pic" --strength 0.5 -o "$tmp/cli-6-just.png"
params=$(python3 "$chk" get "$st" sixth.params)
[[ $params == *"Denoising strength: 0.5"* ]] && ok "img2img 'crop and resize' from the page: parameters ${params//$'\n'/ | }" \
  || bad "crop-and-resize parameters shown: $params $(python3 "$chk" get "$st" sixth.error)"
python3 "$chk" same "$tmp/cli-6.png" "$tmp/cli-6-just.png" >/dev/null 2>&1 \
  && bad "the wide picture gives the same image under crop and just resize: the resize-mode check would not see a difference" \
  || ok "the wide picture's image depends on the resize mode"
params=$(python3 "$chk" get "$st" fifth.params)
[[ $params == *"Inpaint area: Only masked, Masked area padding: 8"* ]] && ok "'Only masked' from the page: parameters ${params//$'\n'/ | }" \
  || bad "only-masked parameters shown: $params $(python3 "$chk" get "$st" fifth.error)"
params=$(python3 "$chk" get "$st" fourth.params)
[[ $params == *"Denoising strength: 0.75"* && $params == *"Mask blur: 0"* ]] && ok "inpainting from the page's mask input: parameters ${params//$'\n'/ | }" \
  || bad "inpainting parameters shown: $params $(python3 "$chk" get "$st" fourth.error)"
params=$(python3 "$chk" get "$st" third.params)
[[ $params == *"Denoising strength: 0.5"* ]] && ok "img2img from the page's file input: parameters ${params//$'\n'/ | }" \
  || bad "img2img parameters shown: $params $(python3 "$chk" get "$st" third.error)"
for k in 1 2 3 4 5 6; do
  if why=$(python3 "$chk" same "$tmp/result-$k.png" "$tmp/cli-$k.png"); then
    ok "image $k shown by the page = qdiff generate's pixels"
  else bad "image $k differs from qdiff generate: $why"; fi
done

kill -TERM "$spid"
wait "$spid"
rc=$?
spid=
[[ $rc -eq 0 ]] && ! grep -q -E "Sanitizer|runtime error" "$log" && ok "server stopped cleanly" \
  || bad "server exit $rc: $(tail -30 "$log")"
finish
