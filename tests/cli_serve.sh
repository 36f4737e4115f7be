#!/usr/bin/env bash
# qdiff serve driven with curl on a free loopback port: every endpoint's happy path
# (images decoded and compared pixel for pixel with `qdiff generate` for the same
# parameters), LoRAs per request (<lora:NAME:WEIGHT> = generate --lora), each error with its status and message, a queue of concurrent requests,
# interrupting a long job and a queued one, progress with live previews, lazy model
# loading (503 while loading), and a clean shutdown on SIGTERM/SIGINT (under ASan: no
# leak report, exit 0).
# usage: cli_serve.sh path/to/qdiff path/to/tests/fixtures
set -u
qdiff=$1
fx=$(cd "$2" && pwd)
here=$(cd "$(dirname "$0")" && pwd)
chk="$here/tools/serve_check.py"
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null; done
  wait 2>/dev/null
  rm -rf "$tmp"
}
. "$(dirname "$0")/tools/cli_common.sh"
trap cleanup EXIT   # after cli_common.sh: also stops the server
for tool in curl python3; do
  command -v "$tool" >/dev/null || { bad "$tool is missing (scripts/install-deps.sh installs it)"; finish; exit 1; }
done

jget() { python3 "$chk" get "$@"; }
# The CLI reference for the same parameters; the server runs with the same thread count.
cli() { local model=$1 out=$2; shift 2; "$qdiff" generate -m "$fx/models/$model" -t 2 -q -o "$out" "$@"; }
# req METHOD PATH [curl args...]: body in $tmp/r.json, headers in $tmp/r.hdr, status in $code
req() {
  local m=$1 p=$2
  shift 2
  code=$(curl -s -o "$tmp/r.json" -D "$tmp/r.hdr" -w '%{http_code}' -X "$m" "$@" "$U$p")
}
# same_png NAME SERVER.png CLI.png: pixels equal, and the same "parameters" text
same_png() {
  local why
  if ! why=$(python3 "$chk" same "$2" "$3"); then bad "$1: pixels differ from qdiff generate: $why"; return; fi
  if [[ "$(python3 "$chk" text "$2")" != "$(python3 "$chk" text "$3")" ]]; then
    bad "$1: parameters text differs: '$(python3 "$chk" text "$2")' vs '$(python3 "$chk" text "$3")'"
    return
  fi
  ok "$1: $(python3 "$chk" size "$2") pixels and parameters equal to qdiff generate's"
}
# expect_error NAME STATUS PARAM MESSAGE-PART METHOD PATH [curl args...]
expect_error() {
  local name=$1 st=$2 param=$3 part=$4
  shift 4
  req "$@"
  local msg pr ec
  msg=$(jget "$tmp/r.json" error.message)
  pr=$(jget "$tmp/r.json" error.param)
  ec=$(jget "$tmp/r.json" error.code)
  if [[ $code == "$st" && $ec == "$st" && ( -z $param || $pr == "$param" ) && $msg == *"$part"* ]]; then
    ok "$name -> $code: $msg"
  else
    bad "$name: expected $st ($param, '$part'), got $code $(head -c 400 "$tmp/r.json")"
  fi
}
# start_server LOG ARGS...: sets $spid and $U once it listens
start_server() {
  local log=$1
  shift
  "$qdiff" serve --port 0 "$@" 2>"$log" &
  spid=$!
  pids+=("$spid")
  U=
  for _ in $(seq 300); do
    U=$(grep -o 'http://127\.0\.0\.1:[0-9]*' "$log" | head -1)
    [[ -n $U ]] && return 0
    kill -0 "$spid" 2>/dev/null || return 1
    sleep 0.1
  done
  return 1
}
# wait_health: until /health says ok (the -m model loaded)
wait_health() {
  for _ in $(seq 600); do
    [[ "$(curl -s -o /dev/null -w '%{http_code}' "$U/health")" == 200 ]] && return 0
    sleep 0.1
  done
  return 1
}
# stop_server SIGNAL NAME: the server exits 0 within 60 s, without sanitizer reports
stop_server() {
  local sig=$1 name=$2 log=$3 rc=
  kill "-$sig" "$spid"
  for _ in $(seq 600); do
    kill -0 "$spid" 2>/dev/null || break
    sleep 0.1
  done
  if kill -0 "$spid" 2>/dev/null; then bad "$name: still running 60 s after SIG$sig"; kill -9 "$spid"; return; fi
  wait "$spid"
  rc=$?
  if [[ $rc -eq 0 ]] && ! grep -q -E "Sanitizer|runtime error" "$log"; then ok "$name: SIG$sig stops the server cleanly (exit 0)"
  else bad "$name: exit $rc after SIG$sig: $(grep -E -A12 'Sanitizer|runtime error' "$log" | head -40)"; fi
}

# ---- start-up failures and --help ----
if "$qdiff" serve --help | grep -q "/sdapi/v1/txt2img"; then ok "serve --help lists the endpoints"; else bad "serve --help"; fi
"$qdiff" serve --port 0 -m "$tmp/none" 2>"$tmp/err"
if [[ $? -eq 2 ]] && grep -q "$tmp/none" "$tmp/err"; then ok "serve -m missing folder: exit 2, $(cat "$tmp/err")"
else bad "serve -m missing: $(cat "$tmp/err")"; fi
mkdir -p "$tmp/broken"
echo '{"_class_name": "StableDiffusionPipeline", "unet": ["diffusers", "UNet2DConditionModel"]}' >"$tmp/broken/model_index.json"
"$qdiff" serve --port 0 -m "$tmp/broken" 2>"$tmp/err"
if [[ $? -eq 2 ]] && grep -q "failed to load" "$tmp/err"; then ok "serve -m broken model: exit 2, $(grep 'failed to load' "$tmp/err")"
else bad "serve -m broken: $(cat "$tmp/err")"; fi

# ---- the server under test ----
# LoRAs for <lora:NAME:WEIGHT> (tests/tools/lora_reference.py: kohya, a PEFT folder, one matching nothing)
py=${QD_PYTHON:-/usr/bin/python3}
if "$py" "$here/tools/lora_reference.py" make "$fx/models/sd15-tiny" "$tmp/lora-src" 2>"$tmp/err"; then
  mkdir -p "$tmp/loras"
  cp "$tmp/lora-src/kohya.safetensors" "$tmp/lora-src/nomatch.safetensors" "$tmp/loras/"
  cp -r "$tmp/lora-src/peft" "$tmp/loras/peftlora"
else bad "making test LoRAs (needs python3-numpy): $(cat "$tmp/err")"; mkdir -p "$tmp/loras"; fi
mkdir -p "$tmp/models"
ln -s "$fx/models/shapes-sd" "$tmp/models/shapes-sd"
ln -s "$tmp/broken" "$tmp/models/broken"
log="$tmp/serve.log"
if ! start_server "$log" -m "$fx/models/sd15-tiny" --models "$tmp/models" -t 2 --preview-vae "$fx/models/sd15-tiny/vae" \
     --max-steps 1000 --max-batch 8 --max-size 256 --max-body 65536 --lora-dir "$tmp/loras"; then
  bad "server did not start: $(cat "$log")"
  finish
  exit 1
fi
ok "listening at $U"
"$qdiff" serve --port "${U##*:}" -m "$fx/models/sd15-tiny" 2>"$tmp/err"
if [[ $? -eq 2 ]] && grep -q "cannot listen" "$tmp/err"; then ok "a second server on the same port: exit 2, $(cat "$tmp/err")"
else bad "port in use: $(cat "$tmp/err")"; fi
if wait_health; then ok "GET /health: 200 once the model is loaded"; else bad "/health never became 200: $(cat "$log")"; fi
req GET /health
[[ $code == 200 && $(jget "$tmp/r.json" status) == ok && $(jget "$tmp/r.json" model) == sd15-tiny ]] \
  && ok "/health: $(cat "$tmp/r.json")" || bad "/health: $code $(cat "$tmp/r.json")"

# ---- listing endpoints ----
req GET /
if [[ $code == 200 ]] && grep -qi "content-type: text/html" "$tmp/r.hdr" && grep -q "<title>qdiff</title>" "$tmp/r.json" \
   && grep -q "/sdapi/v1/txt2img" "$tmp/r.json"; then ok "GET /: the web page ($(wc -c <"$tmp/r.json") bytes)"
else bad "GET /: $code"; fi
req GET /sdapi/v1/samplers
if [[ $code == 200 ]] && python3 -c '
import json, sys
d = {s["name"]: s for s in json.load(open(sys.argv[1]))}
assert "euler_ancestral" in d["Euler a"]["aliases"], d["Euler a"]
assert d["DPM++ 2M"]["options"]["scheduler"] == "karras"
assert "EulerDiscreteScheduler" in d and "heunpp2" in d
' "$tmp/r.json"; then ok "GET /sdapi/v1/samplers: A1111 names with qdiff aliases, other k-samplers, diffusers classes"
else bad "samplers: $code $(head -c 300 "$tmp/r.json")"; fi
req GET /sdapi/v1/schedulers
if [[ $code == 200 ]] && python3 -c '
import json, sys
d = {s["name"]: s for s in json.load(open(sys.argv[1]))}
assert d["karras"]["label"] == "Karras" and "automatic" in d and d["ddim"]["aliases"] == ["ddim_uniform"]
' "$tmp/r.json"; then ok "GET /sdapi/v1/schedulers"
else bad "schedulers: $code $(head -c 300 "$tmp/r.json")"; fi
req GET /sdapi/v1/sd-models
if [[ $code == 200 ]] && python3 -c '
import json, sys
d = {m["model_name"]: m for m in json.load(open(sys.argv[1]))}
assert d["sd15-tiny"]["default"] and d["sd15-tiny"]["state"] == "ready", d
assert d["shapes-sd"]["state"] == "unloaded" and "broken" in d, d
' "$tmp/r.json"; then ok "GET /sdapi/v1/sd-models: -m model ready, --models ones unloaded"
else bad "sd-models: $code $(cat "$tmp/r.json")"; fi
req GET /sdapi/v1/options
[[ $code == 200 && $(jget "$tmp/r.json" sd_model_checkpoint) == sd15-tiny ]] && ok "GET /sdapi/v1/options" || bad "options: $code"
req GET /sdapi/v1/progress
[[ $code == 200 && $(jget "$tmp/r.json" progress) == 0 && $(jget "$tmp/r.json" status) == idle ]] \
  && ok "GET /sdapi/v1/progress when idle: progress 0" || bad "idle progress: $(cat "$tmp/r.json")"

# ---- txt2img happy paths, each against the CLI ----
P="a red circle on a blue background"
req POST /sdapi/v1/txt2img -d "{\"prompt\":\"$P\",\"negative_prompt\":\"blurry\",\"steps\":6,\"cfg_scale\":5,\"seed\":42,\"width\":64,\"height\":64}"
if [[ $code == 200 && $(python3 "$chk" images "$tmp/r.json" "$tmp/a") == 1 ]]; then
  cli sd15-tiny "$tmp/cli-a.png" -p "$P" -n blurry --steps 6 --cfg 5 --seed 42 -W 64 -H 64
  same_png "txt2img, the model's scheduler" "$tmp/a-0.png" "$tmp/cli-a.png"
  [[ $(jget "$tmp/r.json" info.seed) == 42 && $(jget "$tmp/r.json" info.infotexts.0) == "$(python3 "$chk" text "$tmp/a-0.png")" \
     && $(jget "$tmp/r.json" parameters.steps) == 6 && $(jget "$tmp/r.json" info.sd_model_name) == sd15-tiny ]] \
    && ok "txt2img info: seed, infotexts = the PNG's parameters, model" || bad "txt2img info: $(jget "$tmp/r.json" info)"
else bad "txt2img: $code $(head -c 300 "$tmp/r.json")"; fi

req POST /sdapi/v1/txt2img -d "{\"prompt\":\"$P\",\"steps\":5,\"seed\":9,\"width\":64,\"height\":48,\"sampler_name\":\"Euler a\",\"batch_size\":2}"
if [[ $code == 200 && $(python3 "$chk" images "$tmp/r.json" "$tmp/b") == 2 ]]; then
  cli sd15-tiny "$tmp/cli-b.png" -p "$P" --steps 5 --seed 9 -W 64 -H 48 --sampler euler_ancestral --batch 2
  same_png "txt2img 'Euler a' batch_size 2, image 1" "$tmp/b-0.png" "$tmp/cli-b-1.png"
  same_png "txt2img 'Euler a' batch_size 2, image 2" "$tmp/b-1.png" "$tmp/cli-b-2.png"
else bad "txt2img Euler a: $code $(head -c 300 "$tmp/r.json")"; fi

# ---- img2img: A1111's init_images (base64) + denoising_strength, against generate --init-image ----
pic="$fx/goldens/shapes-sd/pipe_00.png"
b64=$(base64 -w0 "$pic")
req POST /sdapi/v1/img2img -d "{\"prompt\":\"$P\",\"steps\":6,\"seed\":42,\"denoising_strength\":0.5,\"init_images\":[\"data:image/png;base64,$b64\"]}"
if [[ $code == 200 && $(python3 "$chk" images "$tmp/r.json" "$tmp/i") == 1 ]]; then
  cli sd15-tiny "$tmp/cli-i.png" -p "$P" --steps 6 --seed 42 --init-image "$pic" --strength 0.5
  same_png "img2img (init image, denoising_strength 0.5)" "$tmp/i-0.png" "$tmp/cli-i.png"
  [[ $(jget "$tmp/r.json" parameters.denoising_strength) == 0.5 ]] && ok "img2img parameters: denoising_strength 0.5" \
    || bad "img2img parameters: $(jget "$tmp/r.json" parameters)"
else bad "img2img: $code $(head -c 300 "$tmp/r.json")"; fi
req POST /sdapi/v1/img2img -d "{\"prompt\":\"$P\",\"steps\":4,\"seed\":7,\"sampler_name\":\"Euler\",\"width\":64,\"height\":48,\"init_images\":[\"$b64\"]}"
if [[ $code == 200 && $(python3 "$chk" images "$tmp/r.json" "$tmp/j") == 1 ]]; then
  cli sd15-tiny "$tmp/cli-j.png" -p "$P" --steps 4 --seed 7 --sampler euler -W 64 -H 48 --init-image "$pic" --strength 0.75
  same_png "img2img Euler, resized to 64x48, A1111's default strength 0.75" "$tmp/j-0.png" "$tmp/cli-j.png"
else bad "img2img Euler: $code $(head -c 300 "$tmp/r.json")"; fi
for bad_case in '"init_images":[]|init_images' '"init_images":["!!!"]|base64' '"init_images":["aGVsbG8="]|not a PNG or JPEG' \
                "\"init_images\":[\"$b64\"],\"denoising_strength\":0|denoising_strength" \
                "\"init_images\":[\"$b64\"],\"denoising_strength\":0.1,\"steps\":4|no step"; do
  req POST /sdapi/v1/img2img -d "{\"prompt\":\"$P\",${bad_case%|*}}"
  [[ $code == 400 ]] && grep -q "${bad_case#*|}" "$tmp/r.json" && ok "img2img bad input ('${bad_case#*|}') -> 400 $(head -c 200 "$tmp/r.json")" \
    || bad "img2img bad input ('${bad_case#*|}'): $code $(head -c 300 "$tmp/r.json")"
done

# resize_mode 1 (crop and resize): a 128x64 picture into 64x64 = generate --resize-mode crop
"${QD_PYTHON:-/usr/bin/python3}" -c "
from PIL import Image
Image.open('$pic').convert('RGB').resize((128, 64)).save('$tmp/wide.png')" || bad "making the wide picture"
req POST /sdapi/v1/img2img -d "{\"prompt\":\"$P\",\"steps\":4,\"seed\":3,\"width\":64,\"height\":64,\"resize_mode\":1,\"init_images\":[\"$(base64 -w0 "$tmp/wide.png")\"]}"
if [[ $code == 200 && $(python3 "$chk" images "$tmp/r.json" "$tmp/rm") == 1 ]]; then
  cli sd15-tiny "$tmp/cli-rm.png" -p "$P" --steps 4 --seed 3 --init-image "$tmp/wide.png" --strength 0.75 -W 64 -H 64 --resize-mode crop
  same_png "img2img resize_mode 1 = generate --resize-mode crop" "$tmp/rm-0.png" "$tmp/cli-rm.png"
else bad "img2img resize_mode 1: $code $(head -c 300 "$tmp/r.json")"; fi
expect_error "img2img resize_mode 3 (latent upscale)" 400 resize_mode "not supported" POST /sdapi/v1/img2img -d "{\"prompt\":\"$P\",\"resize_mode\":3,\"init_images\":[\"$b64\"]}"

# ---- inpainting: A1111's mask (+ mask_blur, inpainting_mask_invert), against generate --mask ----
"${QD_PYTHON:-/usr/bin/python3}" -c "
from PIL import Image
h = Image.new('L', (64, 64), 0); h.paste(255, (0, 0, 32, 64)); h.save('$tmp/mhalf.png')
inv = Image.new('L', (64, 64), 255); inv.paste(0, (0, 0, 32, 64)); inv.save('$tmp/mhalf_inv.png')
a = Image.new('RGBA', (64, 64), (0, 0, 0, 255)); a.paste((0, 0, 0, 0), (0, 0, 32, 64)); a.save('$tmp/mhalf_openai.png')
Image.new('L', (64, 64), 255).save('$tmp/mopaque.png')
" || bad "making masks with PIL"
mb64=$(base64 -w0 "$tmp/mhalf.png")
req POST /sdapi/v1/img2img -d "{\"prompt\":\"$P\",\"steps\":4,\"seed\":3,\"denoising_strength\":0.75,\"mask_blur\":0,\"inpainting_fill\":1,\"inpaint_full_res\":false,\"init_images\":[\"$b64\"],\"mask\":\"$mb64\"}"
if [[ $code == 200 && $(python3 "$chk" images "$tmp/r.json" "$tmp/m") == 1 ]]; then
  cli sd15-tiny "$tmp/cli-m.png" -p "$P" --steps 4 --seed 3 --init-image "$pic" --strength 0.75 --mask "$tmp/mhalf.png" --mask-overlay
  same_png "img2img with a mask (mask_blur 0)" "$tmp/m-0.png" "$tmp/cli-m.png"
else bad "img2img mask: $code $(head -c 300 "$tmp/r.json")"; fi
req POST /sdapi/v1/img2img -d "{\"prompt\":\"$P\",\"steps\":4,\"seed\":3,\"sampler_name\":\"Euler\",\"inpainting_mask_invert\":1,\"init_images\":[\"$b64\"],\"mask\":\"data:image/png;base64,$(base64 -w0 "$tmp/mhalf_inv.png")\"}"
if [[ $code == 200 && $(python3 "$chk" images "$tmp/r.json" "$tmp/n") == 1 ]]; then
  cli sd15-tiny "$tmp/cli-n.png" -p "$P" --steps 4 --seed 3 --sampler euler --init-image "$pic" --strength 0.75 --mask "$tmp/mhalf.png" --mask-blur 4 --mask-overlay
  same_png "img2img Euler, inverted mask + inpainting_mask_invert, A1111's default mask_blur 4" "$tmp/n-0.png" "$tmp/cli-n.png"
  [[ $(jget "$tmp/r.json" info.infotexts.0) == *"Mask blur: 4"* ]] && ok "img2img infotext records Mask blur: 4" \
    || bad "img2img mask infotext: $(jget "$tmp/r.json" info.infotexts.0)"
else bad "img2img inverted mask: $code $(head -c 300 "$tmp/r.json")"; fi
# inpaint_full_res ("Only masked"): a 128x96 picture, the mask's box generated at 64x64 and
# pasted back = generate --only-masked (tested against an independent composite in
# cli_only_masked.sh)
"${QD_PYTHON:-/usr/bin/python3}" -c "
from PIL import Image
Image.open('$pic').convert('RGB').resize((128, 96), Image.BICUBIC).save('$tmp/om_init.png')
m = Image.new('L', (128, 96), 0); m.paste(255, (60, 20, 80, 40)); m.save('$tmp/om_mask.png')
" || bad "making the only-masked pictures with PIL"
req POST /sdapi/v1/img2img -d "{\"prompt\":\"$P\",\"steps\":4,\"seed\":3,\"width\":64,\"height\":64,\"mask_blur\":0,\"inpaint_full_res\":true,\"inpaint_full_res_padding\":22,\"init_images\":[\"$(base64 -w0 "$tmp/om_init.png")\"],\"mask\":\"$(base64 -w0 "$tmp/om_mask.png")\"}"
if [[ $code == 200 && $(python3 "$chk" images "$tmp/r.json" "$tmp/om") == 1 ]]; then
  cli sd15-tiny "$tmp/cli-om.png" -p "$P" --steps 4 --seed 3 --init-image "$tmp/om_init.png" --strength 0.75 --mask "$tmp/om_mask.png" \
    --only-masked 22 -W 64 -H 64
  same_png "img2img inpaint_full_res, padding 22 = generate --only-masked 22" "$tmp/om-0.png" "$tmp/cli-om.png"
else bad "img2img inpaint_full_res: $code $(head -c 300 "$tmp/r.json")"; fi
# inpainting_fill 0 (fill), 2 (latent noise), 3 (latent nothing) = generate --masked-content
for fc in "0 fill" "2 latent-noise" "3 latent-nothing"; do
  req POST /sdapi/v1/img2img -d "{\"prompt\":\"$P\",\"steps\":4,\"seed\":3,\"sampler_name\":\"Euler\",\"mask_blur\":0,\"inpainting_fill\":${fc% *},\"init_images\":[\"$b64\"],\"mask\":\"$mb64\"}"
  if [[ $code == 200 && $(python3 "$chk" images "$tmp/r.json" "$tmp/fc${fc% *}") == 1 ]]; then
    cli sd15-tiny "$tmp/cli-fc.png" -p "$P" --steps 4 --seed 3 --sampler euler --init-image "$pic" --strength 0.75 --mask "$tmp/mhalf.png" \
      --mask-overlay --masked-content "${fc#* }"
    same_png "img2img inpainting_fill ${fc% *} = generate --masked-content ${fc#* }" "$tmp/fc${fc% *}-0.png" "$tmp/cli-fc.png"
  else bad "img2img inpainting_fill ${fc% *}: $code $(head -c 300 "$tmp/r.json")"; fi
done
for bad_case in "\"mask\":\"$mb64\",\"inpainting_fill\":4|inpainting_fill" "\"mask\":\"$mb64\",\"inpaint_full_res\":\"yes\"|inpaint_full_res" \
                "\"mask\":\"$mb64\",\"inpaint_full_res\":true,\"inpaint_full_res_padding\":-1|inpaint_full_res_padding" \
                '"mask":"!!!"|base64' '"mask":"aGVsbG8="|not a PNG or JPEG' "\"mask\":\"$mb64\",\"mask_blur\":-2|mask_blur" '"mask":7|mask'; do
  req POST /sdapi/v1/img2img -d "{\"prompt\":\"$P\",\"steps\":4,\"init_images\":[\"$b64\"],${bad_case%|*}}"
  [[ $code == 400 ]] && grep -q "${bad_case#*|}" "$tmp/r.json" && ok "img2img bad mask input ('${bad_case#*|}') -> 400 $(head -c 200 "$tmp/r.json")" \
    || bad "img2img bad mask input ('${bad_case#*|}'): $code $(head -c 300 "$tmp/r.json")"
done

cli sd15-tiny "$tmp/cli-c.png" -p "$P" --steps 5 --seed 11 -W 64 -H 64 --sampler dpmpp_2m --schedule karras
for s in '"sampler_name":"DPM++ 2M Karras"' '"sampler_name":"DPM++ 2M"' '"sampler_name":"dpmpp_2m","scheduler":"Karras"'; do
  req POST /sdapi/v1/txt2img -d "{\"prompt\":\"$P\",\"steps\":5,\"seed\":11,\"width\":64,\"height\":64,$s}"
  if [[ $code == 200 ]] && python3 "$chk" images "$tmp/r.json" "$tmp/c" >/dev/null; then
    same_png "txt2img {$s} = dpmpp_2m + karras" "$tmp/c-0.png" "$tmp/cli-c.png"
  else bad "txt2img $s: $code $(head -c 300 "$tmp/r.json")"; fi
done

req POST /sdapi/v1/txt2img -d "{\"prompt\":\"$P\",\"steps\":4,\"seed\":7,\"width\":64,\"height\":64,\"sampler_name\":\"EulerDiscreteScheduler\",\"scheduler\":\"karras\",\"n_iter\":2}"
if [[ $code == 200 && $(python3 "$chk" images "$tmp/r.json" "$tmp/d") == 2 && $(jget "$tmp/r.json" info.all_seeds) == "[7, 8]" ]]; then
  cli sd15-tiny "$tmp/cli-d7.png" -p "$P" --steps 4 --seed 7 -W 64 -H 64 --scheduler EulerDiscreteScheduler --karras
  cli sd15-tiny "$tmp/cli-d8.png" -p "$P" --steps 4 --seed 8 -W 64 -H 64 --scheduler EulerDiscreteScheduler --karras
  same_png "txt2img diffusers class + Karras, n_iter 2: seed 7" "$tmp/d-0.png" "$tmp/cli-d7.png"
  same_png "txt2img diffusers class + Karras, n_iter 2: seed 8" "$tmp/d-1.png" "$tmp/cli-d8.png"
else bad "txt2img n_iter: $code $(head -c 300 "$tmp/r.json")"; fi

req POST /sdapi/v1/txt2img -d "{\"prompt\":\"$P\",\"steps\":3,\"seed\":-1,\"width\":64,\"height\":64}"
seed=$(jget "$tmp/r.json" info.seed)
if [[ $code == 200 && $(jget "$tmp/r.json" parameters.seed) == -1 && $seed =~ ^[0-9]+$ ]]; then
  python3 "$chk" images "$tmp/r.json" "$tmp/e" >/dev/null
  cli sd15-tiny "$tmp/cli-e.png" -p "$P" --steps 3 --seed "$seed" -W 64 -H 64
  same_png "txt2img seed -1 drew seed $seed" "$tmp/e-0.png" "$tmp/cli-e.png"
else bad "txt2img seed -1: $code $(head -c 300 "$tmp/r.json")"; fi

# ---- LoRAs per request: <lora:NAME:WEIGHT> in the prompt (A1111), files in --lora-dir ----
req GET /sdapi/v1/loras
[[ $code == 200 && $(python3 -c 'import json,sys; print(" ".join(l["name"] for l in json.load(open(sys.argv[1]))))' "$tmp/r.json") \
   == "kohya nomatch peftlora" ]] && ok "GET /sdapi/v1/loras: kohya nomatch peftlora" || bad "loras: $code $(cat "$tmp/r.json")"
req POST /sdapi/v1/txt2img -d "{\"prompt\":\"$P<lora:kohya:0.8>\",\"negative_prompt\":\"blurry\",\"steps\":6,\"cfg_scale\":5,\"seed\":42,\"width\":64,\"height\":64}"
if [[ $code == 200 ]] && python3 "$chk" images "$tmp/r.json" "$tmp/la" >/dev/null; then
  cli sd15-tiny "$tmp/cli-la.png" -p "$P" -n blurry --steps 6 --cfg 5 --seed 42 -W 64 -H 64 --lora "$tmp/loras/kohya.safetensors:0.8"
  same_png "txt2img with <lora:kohya:0.8> = generate --lora kohya.safetensors:0.8" "$tmp/la-0.png" "$tmp/cli-la.png"
  python3 "$chk" same "$tmp/la-0.png" "$tmp/cli-a.png" >/dev/null && bad "the <lora> tag changed nothing" || ok "the LoRA changes the image"
else bad "txt2img <lora:kohya:0.8>: $code $(head -c 300 "$tmp/r.json")"; fi
req POST /sdapi/v1/txt2img -d "{\"prompt\":\"$P\",\"negative_prompt\":\"blurry\",\"steps\":6,\"cfg_scale\":5,\"seed\":42,\"width\":64,\"height\":64}"
if [[ $code == 200 ]] && python3 "$chk" images "$tmp/r.json" "$tmp/la2" >/dev/null; then
  same_png "the next request without a tag runs the model as loaded" "$tmp/la2-0.png" "$tmp/cli-a.png"
else bad "txt2img after a LoRA: $code $(head -c 300 "$tmp/r.json")"; fi
req POST /sdapi/v1/txt2img -d "{\"prompt\":\"<lora:peftlora:1.2><lora:kohya>$P\",\"steps\":4,\"seed\":5,\"width\":64,\"height\":64}"
if [[ $code == 200 ]] && python3 "$chk" images "$tmp/r.json" "$tmp/lb" >/dev/null; then
  cli sd15-tiny "$tmp/cli-lb.png" -p "$P" --steps 4 --seed 5 -W 64 -H 64 --lora "$tmp/loras/peftlora/adapter_model.safetensors:1.2" \
    --lora "$tmp/loras/kohya.safetensors"
  python3 "$chk" same "$tmp/lb-0.png" "$tmp/cli-lb.png" >/dev/null && ok "two tags (a PEFT folder at 1.2, kohya at the default 1) = generate with both" ||
    bad "two LoRA tags: pixels differ from generate"
else bad "txt2img two LoRAs: $code $(head -c 300 "$tmp/r.json")"; fi
expect_error "unknown LoRA name" 400 prompt "no LoRA 'nope'" POST /sdapi/v1/txt2img -d '{"prompt":"x <lora:nope:1>","steps":2}'
expect_error "LoRA name leaving --lora-dir" 400 prompt "not a LoRA name" POST /sdapi/v1/txt2img -d '{"prompt":"x <lora:../loras/kohya:1>","steps":2}'
expect_error "separate text-encoder weight" 400 prompt "one number" POST /sdapi/v1/txt2img -d '{"prompt":"x <lora:kohya:0.5:0.3>","steps":2}'
expect_error "LoRA matching no layer of the model" 400 "" "0 of its 1 LoRA layers matched" POST /sdapi/v1/txt2img \
  -d '{"prompt":"x <lora:nomatch>","steps":2,"width":64,"height":64}'

# ---- OpenAI ----
req POST /v1/images/generations -d "{\"prompt\":\"$P\",\"n\":2,\"size\":\"64x64\",\"response_format\":\"b64_json\",\"seed\":5,\"steps\":4}"
if [[ $code == 200 && $(python3 "$chk" images "$tmp/r.json" "$tmp/o") == 2 && $(jget "$tmp/r.json" created) =~ ^[0-9]+$ ]]; then
  cli sd15-tiny "$tmp/cli-o.png" -p "$P" --steps 4 --seed 5 -W 64 -H 64 --batch 2
  same_png "OpenAI n 2, image 1" "$tmp/o-0.png" "$tmp/cli-o-1.png"
  same_png "OpenAI n 2, image 2" "$tmp/o-1.png" "$tmp/cli-o-2.png"
else bad "OpenAI: $code $(head -c 300 "$tmp/r.json")"; fi

# OpenAI edits: multipart image + fields (image-to-image), against generate --init-image
req POST /v1/images/edits -F "image=@$pic;type=image/png" -F "prompt=$P" -F n=1 -F size=64x48 -F seed=8 -F steps=5 -F strength=0.6
if [[ $code == 200 && $(python3 "$chk" images "$tmp/r.json" "$tmp/e") == 1 ]]; then
  cli sd15-tiny "$tmp/cli-e.png" -p "$P" --steps 5 --seed 8 -W 64 -H 48 --init-image "$pic" --strength 0.6
  same_png "OpenAI edits (image, size 64x48, strength 0.6)" "$tmp/e-0.png" "$tmp/cli-e.png"
else bad "OpenAI edits: $code $(head -c 300 "$tmp/r.json")"; fi
req POST /v1/images/edits -F "image=@$pic;type=image/png" -F "prompt=$P" -F seed=8 -F steps=5
if [[ $code == 200 && $(python3 "$chk" images "$tmp/r.json" "$tmp/f") == 1 ]]; then
  cli sd15-tiny "$tmp/cli-f.png" -p "$P" --steps 5 --seed 8 --init-image "$pic"
  same_png "OpenAI edits without size/strength: the picture's size, the pipeline's strength" "$tmp/f-0.png" "$tmp/cli-f.png"
else bad "OpenAI edits defaults: $code $(head -c 300 "$tmp/r.json")"; fi
expect_error "edits: JSON instead of multipart" 400 "" "multipart/form-data" POST /v1/images/edits -d '{"prompt":"x"}'
expect_error "edits: no image" 400 image "image: required" POST /v1/images/edits -F "prompt=$P"
# OpenAI's mask: fully transparent pixels are repainted; the SD1.5 inpaint default strength (1)
req POST /v1/images/edits -F "image=@$pic;type=image/png" -F "mask=@$tmp/mhalf_openai.png;type=image/png" -F "prompt=$P" -F seed=8 -F steps=4
if [[ $code == 200 && $(python3 "$chk" images "$tmp/r.json" "$tmp/g") == 1 ]]; then
  cli sd15-tiny "$tmp/cli-g.png" -p "$P" --steps 4 --seed 8 --init-image "$pic" --mask "$tmp/mhalf.png"
  same_png "OpenAI edits with a mask (transparent = repaint)" "$tmp/g-0.png" "$tmp/cli-g.png"
else bad "OpenAI edits mask: $code $(head -c 300 "$tmp/r.json")"; fi
expect_error "edits: a mask without transparency" 400 mask "no transparent pixels" POST /v1/images/edits -F "image=@$pic" -F "mask=@$tmp/mopaque.png" -F "prompt=$P"
expect_error "edits: a mask that is not an image" 400 mask "not a PNG or JPEG" POST /v1/images/edits -F "image=@$pic" -F "mask=@$fx/models/sd15-tiny/model_index.json" -F "prompt=$P"
expect_error "edits: not an image" 400 image "not a PNG or JPEG" POST /v1/images/edits -F "image=@$fx/models/sd15-tiny/model_index.json" -F "prompt=$P"
expect_error "edits: strength 2" 400 strength "strength: expected" POST /v1/images/edits -F "image=@$pic" -F "prompt=$P" -F strength=2

# another model from --models: loaded on first use, 503 meanwhile
req POST /v1/images/generations -d "{\"prompt\":\"$P\",\"model\":\"shapes-sd\",\"seed\":3,\"steps\":4,\"size\":\"64x64\"}"
if [[ $code == 503 ]] && grep -qi "^retry-after: 1" "$tmp/r.hdr" && [[ $(jget "$tmp/r.json" error.message) == *"shapes-sd is loading"* ]]; then
  ok "model shapes-sd on first use -> 503 + Retry-After: $(jget "$tmp/r.json" error.message)"
else bad "first use of shapes-sd: $code $(cat "$tmp/r.json")"; fi
for _ in $(seq 300); do
  req POST /v1/images/generations -d "{\"prompt\":\"$P\",\"model\":\"shapes-sd\",\"seed\":3,\"steps\":4,\"size\":\"64x64\"}"
  [[ $code != 503 ]] && break
  sleep 0.1
done
if [[ $code == 200 ]] && python3 "$chk" images "$tmp/r.json" "$tmp/s" >/dev/null; then
  cli shapes-sd "$tmp/cli-s.png" -p "$P" --steps 4 --seed 3 -W 64 -H 64
  same_png "OpenAI model shapes-sd once loaded" "$tmp/s-0.png" "$tmp/cli-s.png"
else bad "shapes-sd after loading: $code $(head -c 300 "$tmp/r.json")"; fi
req POST /sdapi/v1/txt2img -d "{\"prompt\":\"$P\",\"steps\":4,\"seed\":3,\"override_settings\":{\"sd_model_checkpoint\":\"shapes-sd\"}}"
if [[ $code == 200 ]] && python3 "$chk" images "$tmp/r.json" "$tmp/s2" >/dev/null; then
  same_png "txt2img override_settings.sd_model_checkpoint shapes-sd (its native 64 px)" "$tmp/s2-0.png" "$tmp/cli-s.png"
else bad "override_settings: $code $(head -c 300 "$tmp/r.json")"; fi
req POST /sdapi/v1/txt2img -d '{"prompt":"x","override_settings":{"sd_model_checkpoint":"broken"}}'
[[ $code == 503 ]] && ok "broken model on first use -> 503 (loading)" || bad "broken first: $code $(cat "$tmp/r.json")"
for _ in $(seq 100); do
  req POST /sdapi/v1/txt2img -d '{"prompt":"x","override_settings":{"sd_model_checkpoint":"broken"}}'
  [[ $code != 503 ]] && break
  sleep 0.1
done
msg=$(jget "$tmp/r.json" error.message)
[[ $code == 500 && $msg == *"broken failed to load"* && $msg == *"broken/model_index.json"* ]] \
  && ok "broken model -> 500: $msg" || bad "broken model: $code $(cat "$tmp/r.json")"

# ---- errors ----
T=/sdapi/v1/txt2img
O=/v1/images/generations
expect_error "body not JSON" 400 "" "not valid JSON" POST $T -d '{"prompt": '
expect_error "body a JSON array" 400 "" "must be a JSON object" POST $T -d '[1]'
expect_error "no body" 400 "" "needs a JSON object" POST $T
expect_error "steps 0" 400 steps "steps: 0 is out of range 1..1000" POST $T -d '{"steps":0}'
expect_error "steps 1001" 400 steps "out of range" POST $T -d '{"steps":1001}'
expect_error "steps a string" 400 steps "steps: expected an integer" POST $T -d '{"steps":"many"}'
expect_error "width not a multiple of 8" 400 width "width: 68 is not a multiple of 8" POST $T -d '{"width":68}'
expect_error "height over --max-size" 400 height "height: 512 is out of range 8..256" POST $T -d '{"height":512}'
expect_error "batch_size over --max-batch" 400 batch_size "batch_size: 9 is out of range 1..8" POST $T -d '{"batch_size":9}'
expect_error "batch_size x n_iter over --max-batch" 400 n_iter "12 images is over the limit of 8" POST $T -d '{"batch_size":4,"n_iter":3}'
expect_error "seed not an integer" 400 seed "seed: expected an integer" POST $T -d '{"seed":1.5}'
expect_error "seed below -1" 400 seed "out of range" POST $T -d '{"seed":-2}'
expect_error "cfg_scale a string" 400 cfg_scale "cfg_scale: expected a number" POST $T -d '{"cfg_scale":"high"}'
expect_error "prompt a number" 400 prompt "prompt: expected a string" POST $T -d '{"prompt":5}'
expect_error "unknown sampler" 400 sampler_name "unknown sampler 'Foo'" POST $T -d '{"sampler_name":"Foo"}'
expect_error "unknown scheduler" 400 scheduler "unknown scheduler 'Bar'" POST $T -d '{"scheduler":"Bar"}'
expect_error "schedule without a k-sampler" 400 scheduler "needs a k-sampler" POST $T -d '{"scheduler":"Exponential"}'
expect_error "enable_hr" 400 enable_hr "hires fix is not supported" POST $T -d '{"enable_hr":true}'
expect_error "unknown model" 400 override_settings.sd_model_checkpoint "unknown model 'nope' (available: sd15-tiny, broken, shapes-sd)" \
  POST $T -d '{"override_settings":{"sd_model_checkpoint":"nope"}}'
expect_error "OpenAI without prompt" 400 prompt "prompt: required" POST $O -d '{"n":1}'
expect_error "OpenAI response_format url" 400 response_format "'url' is not supported" POST $O -d '{"prompt":"x","response_format":"url"}'
expect_error "OpenAI bad size" 400 size "size: expected \"WIDTHxHEIGHT\"" POST $O -d '{"prompt":"x","size":"big"}'
expect_error "OpenAI size not a multiple of 8" 400 size "size: 100 is not a multiple of 8" POST $O -d '{"prompt":"x","size":"100x64"}'
expect_error "OpenAI n 0" 400 n "n: 0 is out of range 1..8" POST $O -d '{"prompt":"x","n":0}'
expect_error "OpenAI unknown model" 400 model "unknown model 'dall-e-3'" POST $O -d '{"prompt":"x","model":"dall-e-3"}'
expect_error "unknown path" 404 "" "no such endpoint: GET /sdapi/v1/nothing" GET /sdapi/v1/nothing
expect_error "GET on a POST endpoint" 405 "" "method not allowed (use POST)" GET $T
grep -qi "^allow: POST" "$tmp/r.hdr" && ok "405 carries Allow: POST" || bad "405 without Allow: $(cat "$tmp/r.hdr")"
expect_error "POST on a GET endpoint" 405 "" "method not allowed (use GET)" POST /health
head -c 70000 /dev/zero | tr '\0' ' ' >"$tmp/big.json"
expect_error "body over --max-body" 413 "" "over the limit of 65536 bytes" POST $T --data-binary @"$tmp/big.json"
expect_error "chunked body over --max-body" 413 "" "over the limit of 65536 bytes" POST $T -H "Transfer-Encoding: chunked" --data-binary @"$tmp/big.json"

# ---- queue, progress, interrupt, concurrency ----
# A long job (900 steps, 128 px, a preview every step) holds the worker while 9 more queue.
curl -s -o "$tmp/long.json" -w '%{http_code}' -X POST "$U$T" \
  -d "{\"prompt\":\"$P\",\"steps\":900,\"sampler_name\":\"Euler\",\"seed\":3,\"width\":128,\"height\":128,\"force_task_id\":\"long-job\"}" >"$tmp/long.code" &
lpid=$!
running=0
for _ in $(seq 600); do
  curl -s -o "$tmp/p.json" "$U/sdapi/v1/progress?id_task=long-job"
  st=$(jget "$tmp/p.json" status)
  if [[ $st == running && $(jget "$tmp/p.json" state.sampling_step) -ge 2 ]]; then running=1; break; fi
  [[ $st == done || $st == failed || $st == cancelled ]] && break
  sleep 0.1
done
[[ $running == 1 ]] && ok "long job running: step $(jget "$tmp/p.json" state.sampling_step)/$(jget "$tmp/p.json" state.sampling_steps)" \
  || bad "long job never ran: $(cat "$tmp/p.json")"
cpids=()
for i in $(seq 0 7); do
  curl -s -o "$tmp/q$i.json" -w '%{http_code}' -X POST "$U$T" \
    -d "{\"prompt\":\"$P\",\"steps\":4,\"seed\":$((100 + i)),\"width\":64,\"height\":64}" >"$tmp/q$i.code" &
  cpids+=($!)
done
curl -s -o "$tmp/qc.json" -w '%{http_code}' -X POST "$U$T" -d '{"prompt":"x","steps":4,"force_task_id":"queued-job"}' >"$tmp/qc.code" &
qcpid=$!
queued=0
for _ in $(seq 300); do
  curl -s -o "$tmp/h.json" "$U/health"
  if [[ $(jget "$tmp/h.json" queued) == 9 && $(jget "$tmp/h.json" running) == 1 ]]; then queued=1; break; fi
  sleep 0.1
done
[[ $queued == 1 ]] && ok "9 requests wait in the queue behind the long job: $(cat "$tmp/h.json")" || bad "queue: $(cat "$tmp/h.json")"
req GET "/sdapi/v1/progress?id_task=queued-job"
[[ $(jget "$tmp/r.json" status) == queued && $(jget "$tmp/r.json" progress) == 0 && $(jget "$tmp/r.json" queue_position) =~ ^[0-8]$ ]] \
  && ok "progress of a queued job: queued, position $(jget "$tmp/r.json" queue_position)" || bad "queued progress: $(cat "$tmp/r.json")"
req POST /sdapi/v1/interrupt -d '{"id_task":"queued-job"}'
[[ $code == 200 && $(jget "$tmp/r.json" interrupted) == 1 ]] && ok "interrupt one queued job by id_task" || bad "interrupt queued: $code $(cat "$tmp/r.json")"
wait "$qcpid"
[[ $(cat "$tmp/qc.code") == 409 && $(jget "$tmp/qc.json" error.message) == *"cancelled before it started"* ]] \
  && ok "its request -> 409: $(jget "$tmp/qc.json" error.message)" || bad "queued job's reply: $(cat "$tmp/qc.code") $(cat "$tmp/qc.json")"

# progress of the running job, without id_task (A1111 style: the job being made)
req GET /sdapi/v1/progress
pr=$(jget "$tmp/r.json" progress)
if python3 -c 'import sys; p, e = float(sys.argv[1]), float(sys.argv[2]); assert 0 < p < 1 and e > 0' "$pr" "$(jget "$tmp/r.json" eta_relative)" \
   && [[ $(jget "$tmp/r.json" state.job) == long-job && $(jget "$tmp/r.json" state.sampling_steps) -gt 0 ]]; then
  ok "progress of the running job: $pr, ETA $(jget "$tmp/r.json" eta_relative) s, step $(jget "$tmp/r.json" state.sampling_step)"
else bad "running progress: $(head -c 400 "$tmp/r.json")"; fi
if python3 "$chk" b64 "$tmp/r.json" current_image "$tmp/preview.png" && [[ $(python3 "$chk" size "$tmp/preview.png") == 128x128 ]]; then
  ok "progress current_image: a 128x128 PNG preview"
else bad "current_image: $(jget "$tmp/r.json" current_image | head -c 100)"; fi
req GET "/sdapi/v1/progress?skip_current_image=true"
[[ $(jget "$tmp/r.json" current_image) == null ]] && ok "skip_current_image=true leaves it out" || bad "skip_current_image"
t0=$(date +%s)
req POST /sdapi/v1/interrupt
[[ $code == 200 && $(jget "$tmp/r.json" interrupted) == 1 ]] && ok "POST /sdapi/v1/interrupt stops the running job" || bad "interrupt: $code $(cat "$tmp/r.json")"
wait "$lpid"
dt=$(($(date +%s) - t0))
[[ $(cat "$tmp/long.code") == 409 && $(jget "$tmp/long.json" error.message) == *"interrupted"* && $dt -lt 30 ]] \
  && ok "the long job's request -> 409 ${dt}s after the interrupt: $(jget "$tmp/long.json" error.message)" \
  || bad "long job reply: $(cat "$tmp/long.code") $(cat "$tmp/long.json") after ${dt}s"
req GET "/sdapi/v1/progress?id_task=long-job"
[[ $(jget "$tmp/r.json" status) == cancelled && $(jget "$tmp/r.json" state.interrupted) == true ]] \
  && ok "progress of the interrupted job: cancelled" || bad "interrupted progress: $(head -c 300 "$tmp/r.json")"
for i in $(seq 0 7); do
  wait "${cpids[$i]}"
  cli sd15-tiny "$tmp/cli-q$i.png" -p "$P" --steps 4 --seed $((100 + i)) -W 64 -H 64
  if [[ $(cat "$tmp/q$i.code") == 200 ]] && python3 "$chk" images "$tmp/q$i.json" "$tmp/q$i" >/dev/null; then
    same_png "concurrent request $((i + 1))/8 (seed $((100 + i)))" "$tmp/q$i-0.png" "$tmp/cli-q$i.png"
  else bad "concurrent request $i: $(cat "$tmp/q$i.code") $(head -c 300 "$tmp/q$i.json")"; fi
done
req GET "/sdapi/v1/progress?id_task=job-1"
[[ $code == 200 ]] && ok "progress of an unknown/forgotten task answers 200 ($(jget "$tmp/r.json" status))" || bad "old task progress"

# ---- shutdown with a request in flight ----
curl -s -o "$tmp/f.json" -w '%{http_code}' -X POST "$U$T" -d "{\"prompt\":\"$P\",\"steps\":900,\"sampler_name\":\"Euler\",\"width\":128,\"height\":128,\"force_task_id\":\"f\"}" >"$tmp/f.code" &
fpid=$!
for _ in $(seq 600); do
  curl -s -o "$tmp/p.json" "$U/sdapi/v1/progress?id_task=f"
  st=$(jget "$tmp/p.json" status)
  [[ $st == running || $st == done || $st == failed || $st == cancelled ]] && break
  sleep 0.1
done
stop_server TERM "shutdown during a job" "$log"
wait "$fpid"
[[ $(cat "$tmp/f.code") == 503 && $(jget "$tmp/f.json" error.message) == *"shutting down"* ]] \
  && ok "the request in flight -> 503: $(jget "$tmp/f.json" error.message)" || bad "in-flight reply: $(cat "$tmp/f.code") $(cat "$tmp/f.json")"

# a single-file checkpoint (-m FILE --config-from DIR), and another found in --models
mkdir -p "$tmp/ckpts"
if python3 "$here/tools/make_single_file.py" sd1 "$fx/models/sd15-tiny" "$tmp/tiny.safetensors" 2>"$tmp/err"; then
  ln -s "$tmp/tiny.safetensors" "$tmp/ckpts/other.safetensors"
  "$qdiff" serve --port 0 -m "$tmp/tiny.safetensors" 2>"$tmp/err"
  if [[ $? -eq 2 ]] && grep -q "needs --config-from" "$tmp/err"; then ok "serve -m FILE without --config-from: exit 2, $(cat "$tmp/err")"
  else bad "serve -m FILE without --config-from: $(cat "$tmp/err")"; fi
  if start_server "$tmp/serve3.log" -m "$tmp/tiny.safetensors" --config-from "$fx/models/sd15-tiny" \
       --models "$tmp/ckpts" -t 2 && wait_health; then
    for file in "$tmp/tiny.safetensors" "$tmp/ckpts/other.safetensors"; do
      extra=
      [[ $file == */other.safetensors ]] && extra=",\"override_settings\":{\"sd_model_checkpoint\":\"other.safetensors\"}"
      for _ in $(seq 300); do   # a --models entry loads on first use: 503 meanwhile
        req POST /sdapi/v1/txt2img -d "{\"prompt\":\"$P\",\"steps\":4,\"seed\":5,\"width\":64,\"height\":64$extra}"
        [[ $code == 503 ]] || break
        sleep 0.1
      done
      if [[ $code == 200 && $(python3 "$chk" images "$tmp/r.json" "$tmp/sf") == 1 ]]; then
        "$qdiff" generate -m "$file" --config-from "$fx/models/sd15-tiny" -t 2 -q -o "$tmp/cli-sf.png" \
          -p "$P" --steps 4 --seed 5 -W 64 -H 64
        same_png "single-file checkpoint ${file##*/}" "$tmp/sf-0.png" "$tmp/cli-sf.png"
      else bad "single-file txt2img ${file##*/}: $code $(head -c 300 "$tmp/r.json")"; fi
    done
    stop_server INT "single-file server" "$tmp/serve3.log"
  else bad "single-file server: $(cat "$tmp/serve3.log")"; fi
else bad "make_single_file.py sd1: $(cat "$tmp/err")"; fi

# Ctrl-C on an idle server
if start_server "$tmp/serve2.log" -m "$fx/models/sd15-tiny" -t 2 && wait_health; then
  stop_server INT "idle server" "$tmp/serve2.log"
else bad "second server: $(cat "$tmp/serve2.log")"; fi

finish
