"""ctypes binding of libqdiff's public API (include/qdiff.h), as much of it as the
ComfyUI node needs: contexts, models, TAESD preview VAEs, qd_list and qd_generate.

No torch here: buffers are passed as addresses, so the binding works with any
contiguous float32 storage (torch tensors, numpy arrays, ctypes arrays).

Library lookup: $QDIFF_LIB, else the repository's build/libqdiff.so (relative to
this file), else ctypes.util.find_library("qdiff").
"""
import ctypes
import ctypes.util
import logging
import os
import threading

QD_OK, QD_ERR_ARG, QD_ERR_IO, QD_ERR_FORMAT, QD_ERR_NOMEM, QD_ERR_UNSUPPORTED, QD_ERR_CANCELLED = range(7)
QD_LOG_ERROR, QD_LOG_WARN, QD_LOG_INFO = range(3)
QD_MATMUL = {"auto": 0, "exact": 1, "int8": 2}
QD_PRECISION = {"auto": 0, "fp32": 1, "bf16": 2}


def default_precision():
    """$QD_PRECISION (fp32, bf16 or auto) as the CLI reads it; auto when unset or unknown."""
    v = os.environ.get("QD_PRECISION", "auto")
    return v if v in QD_PRECISION else "auto"


QD_LIST_SAMPLERS, QD_LIST_SCHEDULES, QD_LIST_SCHEDULER_CLASSES = range(3)
QD_IMAGE_F32, QD_IMAGE_RGB8 = 0, 1
QD_NOISE_COMFYUI, QD_NOISE_DIFFUSERS = 0, 1

log = logging.getLogger("qdiff")

PROGRESS_FN = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_int, ctypes.c_int, ctypes.c_double)
PREVIEW_FN = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_int, ctypes.c_int,
                              ctypes.POINTER(ctypes.c_uint8), ctypes.c_int, ctypes.c_int)
LOG_FN = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_int, ctypes.c_char_p)


class GenParams(ctypes.Structure):
    """Mirror of qd_gen_params, field for field; qd_gen_params_size() guards it."""
    _fields_ = [
        ("prompt", ctypes.c_char_p),
        ("negative_prompt", ctypes.c_char_p),
        ("width", ctypes.c_int),
        ("height", ctypes.c_int),
        ("steps", ctypes.c_int),
        ("cfg_scale", ctypes.c_float),
        ("guidance", ctypes.c_float),
        ("max_sequence_length", ctypes.c_int),
        ("guidance_rescale", ctypes.c_float),
        ("seed", ctypes.c_uint64),
        ("batch", ctypes.c_int),
        ("scheduler", ctypes.c_char_p),
        ("karras", ctypes.c_int),
        ("scheduler_options", ctypes.c_char_p),
        ("progress", PROGRESS_FN),
        ("progress_user", ctypes.c_void_p),
        ("preview_vae", ctypes.c_void_p),
        ("preview_every", ctypes.c_int),
        ("preview", PREVIEW_FN),
        ("preview_user", ctypes.c_void_p),
        ("sampler", ctypes.c_char_p),
        ("schedule", ctypes.c_char_p),
        ("noise_mode", ctypes.c_int),
        ("preview_max_size", ctypes.c_int),
        ("loras", ctypes.POINTER(ctypes.c_char_p)),
        ("lora_scales", ctypes.POINTER(ctypes.c_float)),
        ("n_loras", ctypes.c_int),
        ("init_image", ctypes.POINTER(ctypes.c_float)),
        ("init_latents", ctypes.POINTER(ctypes.c_float)),
        ("init_count", ctypes.c_int),
        ("strength", ctypes.c_double),
        ("mask", ctypes.POINTER(ctypes.c_float)),
        ("mask_count", ctypes.c_int),
        ("masked_content", ctypes.c_int),
    ]


class QdiffError(RuntimeError):
    """A libqdiff call failed; the message is qd_last_error()'s text."""

    def __init__(self, message, status=None):
        super().__init__(message)
        self.status = status


class QdiffCancelled(QdiffError):
    """The run was stopped (progress callback or qd_cancel)."""


class LibraryNotFound(QdiffError):
    pass


def _default_candidates():
    here = os.path.dirname(os.path.abspath(__file__))
    repo = os.path.dirname(os.path.dirname(here))   # bindings/comfyui -> repository root
    yield os.path.join(repo, "build", "libqdiff.so")
    found = ctypes.util.find_library("qdiff")
    if found:
        yield found


def library_path():
    """Where the library will be loaded from (QDIFF_LIB wins and must exist)."""
    env = os.environ.get("QDIFF_LIB")
    if env:
        if not os.path.exists(env):
            raise LibraryNotFound(f"QDIFF_LIB={env}: no such file")
        return env
    tried = []
    for cand in _default_candidates():
        # find_library returns a bare soname ("libqdiff.so.0") that the loader resolves
        if os.path.sep not in cand or os.path.exists(cand):
            return cand
        tried.append(cand)
    raise LibraryNotFound(
        "libqdiff.so not found (looked at $QDIFF_LIB, %s and the system library path); build it with "
        "'cmake -S . -B build -DCMAKE_BUILD_TYPE=Release && cmake --build build --target qdiff_shared' "
        "in the qdiff repository, or set QDIFF_LIB" % ", ".join(tried or ["build/libqdiff.so"]))


class Library:
    """The loaded shared library with its prototypes declared."""

    def __init__(self, path):
        self.path = path
        try:
            self.dll = ctypes.CDLL(path)
        except OSError as e:
            raise LibraryNotFound(f"cannot load {path}: {e}") from e
        d = self.dll
        P, I, S, F = ctypes.c_void_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_float

        def proto(name, res, *args):
            try:
                f = getattr(d, name)
            except AttributeError as e:
                raise QdiffError(f"{path} has no {name}: it is older than these bindings; rebuild qdiff") from e
            f.restype, f.argtypes = res, list(args)

        proto("qd_gen_params_size", ctypes.c_size_t)
        proto("qd_ctx_new", P, I)
        proto("qd_ctx_free", None, P)
        proto("qd_ctx_threads", I, P)
        proto("qd_last_error", S, P)
        proto("qd_set_log", None, P, LOG_FN, P)
        proto("qd_cancel", None, P)
        proto("qd_set_matmul", None, P, I)
        proto("qd_set_precision", None, P, I)
        proto("qd_ctx_precision", I, P)
        proto("qd_model_open", I, P, S, ctypes.POINTER(P))
        proto("qd_model_free", None, P)
        proto("qd_model_family", S, P)
        proto("qd_model_scheduler", S, P)
        proto("qd_model_default_size", I, P)
        proto("qd_list", S, I, I, ctypes.POINTER(S))
        proto("qd_gen_params_default", None, ctypes.POINTER(GenParams))
        proto("qd_gen_params_resolve", None, P, ctypes.POINTER(GenParams))
        proto("qd_image_size", ctypes.c_size_t, P, ctypes.POINTER(GenParams), I)
        proto("qd_latent_shape", ctypes.c_size_t, P, ctypes.POINTER(GenParams),
              ctypes.POINTER(ctypes.c_int64), ctypes.POINTER(I))
        proto("qd_generate", I, P, P, ctypes.POINTER(GenParams), I, P, P)
        proto("qd_vae_open", I, P, S, ctypes.POINTER(P))
        proto("qd_vae_close", None, P)
        proto("qd_vae_encode_image", I, P, P, I, P, I, I, I, P)

        # The struct mirror must match the library it talks to, or every call after
        # qd_gen_params_default would read and write the wrong fields.
        c_size, py_size = d.qd_gen_params_size(), ctypes.sizeof(GenParams)
        if c_size != py_size:
            raise QdiffError(
                f"{path}: qd_gen_params is {c_size} bytes in the library but {py_size} bytes in "
                f"{os.path.abspath(__file__)}: the library and these bindings come from different qdiff "
                "versions; rebuild the library from the same checkout")

    def names(self, what):
        """Names qd_list gives for QD_LIST_SAMPLERS / _SCHEDULES / _SCHEDULER_CLASSES."""
        out, i = [], 0
        while True:
            s = self.dll.qd_list(what, i, None)
            if s is None:
                return out
            out.append(s.decode())
            i += 1


_lib = None
_lib_lock = threading.Lock()


def load():
    """The process-wide Library (loaded on first use)."""
    global _lib
    with _lib_lock:
        if _lib is None:
            _lib = Library(library_path())
        return _lib


def _on_log(user, level, msg):
    text = msg.decode(errors="replace") if msg else ""
    log.log({QD_LOG_ERROR: logging.ERROR, QD_LOG_WARN: logging.WARNING}.get(level, logging.INFO), "%s", text)


_log_cb = LOG_FN(_on_log)   # module-level: must outlive every context


class Context:
    """A qd_ctx: worker threads, error text, cancellation flag."""

    def __init__(self, lib, threads=0):
        self.lib = lib
        self.ptr = lib.dll.qd_ctx_new(int(threads))
        if not self.ptr:
            raise QdiffError("qd_ctx_new failed (out of memory)", QD_ERR_NOMEM)
        lib.dll.qd_set_log(self.ptr, _log_cb, None)
        self.threads = lib.dll.qd_ctx_threads(self.ptr)

    def last_error(self):
        s = self.lib.dll.qd_last_error(self.ptr)
        return s.decode(errors="replace") if s else "unknown error"

    def check(self, status):
        if status == QD_OK:
            return
        cls = QdiffCancelled if status == QD_ERR_CANCELLED else QdiffError
        raise cls(self.last_error(), status)

    def cancel(self):
        self.lib.dll.qd_cancel(self.ptr)

    def set_matmul(self, mode):
        self.lib.dll.qd_set_matmul(self.ptr, QD_MATMUL[mode])

    def set_precision(self, precision):
        self.lib.dll.qd_set_precision(self.ptr, QD_PRECISION[precision])

    def precision(self):
        """What the dense math runs in on this CPU: "fp32" or "bf16" (auto resolved)."""
        return "bf16" if self.lib.dll.qd_ctx_precision(self.ptr) == QD_PRECISION["bf16"] else "fp32"

    def close(self):
        if self.ptr:
            self.lib.dll.qd_ctx_free(self.ptr)
            self.ptr = None


class Model:
    """A diffusers folder opened with qd_model_open (weights memory-mapped)."""

    def __init__(self, ctx, folder):
        self.ctx, self.folder = ctx, folder
        out = ctypes.c_void_p()
        ctx.check(ctx.lib.dll.qd_model_open(ctx.ptr, os.fsencode(folder), ctypes.byref(out)))
        self.ptr = out.value
        d = ctx.lib.dll
        self.family = d.qd_model_family(self.ptr).decode()
        self.scheduler = d.qd_model_scheduler(self.ptr).decode()
        self.default_size = d.qd_model_default_size(self.ptr)

    def close(self):
        if self.ptr:
            self.ctx.lib.dll.qd_model_free(self.ptr)
            self.ptr = None


class PreviewVae:
    """A VAE for live previews (normally the family's TAESD decoder)."""

    def __init__(self, ctx, path):
        self.ctx, self.path = ctx, path
        out = ctypes.c_void_p()
        ctx.check(ctx.lib.dll.qd_vae_open(ctx.ptr, os.fsencode(path), ctypes.byref(out)))
        self.ptr = out.value

    def close(self):
        if self.ptr:
            self.ctx.lib.dll.qd_vae_close(self.ptr)
            self.ptr = None

    def encode(self, image_addr, batch, width, height, latent_addr):
        """qd_vae_encode_image of an F32 NHWC image into float latents (the model's space)."""
        self.ctx.check(self.ctx.lib.dll.qd_vae_encode_image(self.ctx.ptr, self.ptr, QD_IMAGE_F32,
                                                            ctypes.c_void_p(image_addr), int(batch), int(width),
                                                            int(height), ctypes.c_void_p(latent_addr)))


def _bytes(s):
    return None if s is None else s.encode()


def make_params(lib, prompt, negative_prompt=None, width=0, height=0, steps=0, cfg=-1.0, guidance=3.5,
                seed=0, batch=1, scheduler=None, karras=-1, sampler=None, schedule=None, noise_mode=QD_NOISE_COMFYUI):
    """qd_gen_params from qd_gen_params_default, with the given fields set."""
    p = GenParams()
    lib.dll.qd_gen_params_default(ctypes.byref(p))
    p.prompt = _bytes(prompt)
    p.negative_prompt = _bytes(negative_prompt)
    p.width, p.height, p.steps = int(width), int(height), int(steps)
    p.cfg_scale, p.guidance = float(cfg), float(guidance)
    if not 0 <= int(seed) < 2 ** 64:
        raise QdiffError(f"seed {seed} is outside 0..2^64-1", QD_ERR_ARG)
    p.seed, p.batch = int(seed), int(batch)
    p.scheduler, p.karras = _bytes(scheduler), int(karras)
    p.sampler, p.schedule, p.noise_mode = _bytes(sampler), _bytes(schedule), int(noise_mode)
    return p


def set_loras(p, loras):
    """Point p's lora fields at (path, scale) pairs; returns the ctypes arrays, which must stay
    alive while p is used."""
    loras = list(loras)
    paths = (ctypes.c_char_p * max(len(loras), 1))(*[os.fsencode(path) for path, _ in loras])
    scales = (ctypes.c_float * max(len(loras), 1))(*[float(s) for _, s in loras])
    p.loras = ctypes.cast(paths, ctypes.POINTER(ctypes.c_char_p))
    p.lora_scales = ctypes.cast(scales, ctypes.POINTER(ctypes.c_float))
    p.n_loras = len(loras)
    return paths, scales


def resolve(model, p):
    """Fill the 'model default' fields (size, steps, cfg) in place."""
    model.ctx.lib.dll.qd_gen_params_resolve(model.ptr, ctypes.byref(p))


def image_shape(model, p):
    """[batch, H, W, 3] of the F32 image qd_generate writes for p."""
    q = GenParams.from_buffer_copy(p)
    resolve(model, q)
    return (max(q.batch, 1), q.height, q.width, 3)


def latent_shape(model, p):
    shape, ndim = (ctypes.c_int64 * 4)(), ctypes.c_int()
    model.ctx.lib.dll.qd_latent_shape(model.ptr, ctypes.byref(p), shape, ctypes.byref(ndim))
    return tuple(shape[:ndim.value])


def generate(model, p, image_addr, image_nbytes, latents_addr=None, latents_count=0, progress=None, preview=None,
             preview_vae=None, preview_every=1):
    """qd_generate into caller buffers (F32 NHWC image, optional float latents).

    progress(step, total, elapsed) -> truthy to cancel; preview(step, total, rgb_bytes, width, height).
    An exception raised by a callback stops the run and is re-raised here; a cancel
    requested by the callback (or ctx.cancel()) raises QdiffCancelled.
    """
    ctx, d = model.ctx, model.ctx.lib.dll
    need = d.qd_image_size(model.ptr, ctypes.byref(p), QD_IMAGE_F32)
    if image_nbytes != need:
        raise QdiffError(f"image buffer is {image_nbytes} bytes, qd_generate needs {need}", QD_ERR_ARG)
    if latents_addr is not None:
        n = d.qd_latent_shape(model.ptr, ctypes.byref(p), (ctypes.c_int64 * 4)(), None)
        if latents_count != n:
            raise QdiffError(f"latent buffer holds {latents_count} floats, qd_generate needs {n}", QD_ERR_ARG)
    failure = []   # a callback's exception: ctypes would only print it, so it is carried out

    def on_progress(user, step, total, elapsed):
        if failure:
            return 1
        try:
            return 1 if progress(step, total, elapsed) else 0
        except BaseException as e:   # noqa: B036 - includes ComfyUI's interrupt exception
            failure.append(e)
            return 1

    def on_preview(user, step, total, rgb, width, height):
        if failure:
            ctx.cancel()
            return
        try:
            preview(step, total, ctypes.string_at(rgb, width * height * 3), width, height)
        except BaseException as e:   # noqa: B036
            failure.append(e)
            ctx.cancel()

    q = GenParams.from_buffer_copy(p)
    q.prompt, q.negative_prompt = p.prompt, p.negative_prompt   # from_buffer_copy keeps no references
    q.scheduler, q.sampler, q.schedule, q.scheduler_options = p.scheduler, p.sampler, p.schedule, p.scheduler_options
    cb_progress = PROGRESS_FN(on_progress) if progress else PROGRESS_FN()
    cb_preview = PREVIEW_FN(on_preview) if preview and preview_vae else PREVIEW_FN()
    q.progress = cb_progress
    if preview and preview_vae:
        q.preview, q.preview_vae, q.preview_every = cb_preview, preview_vae.ptr, max(int(preview_every), 1)
    st = d.qd_generate(ctx.ptr, model.ptr, ctypes.byref(q), QD_IMAGE_F32, ctypes.c_void_p(image_addr),
                       ctypes.c_void_p(latents_addr) if latents_addr is not None else None)
    if failure:
        raise failure[0]
    ctx.check(st)
