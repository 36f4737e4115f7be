/* qdiff serve: LoRAs per request, as AUTOMATIC1111 takes them: "<lora:NAME:WEIGHT>" tags in
 * the prompt (WEIGHT default 1) name files in --lora-dir; the tags are removed from the
 * prompt, the files go to qd_gen_params.loras. NAME is DIR/NAME.safetensors, DIR/NAME if it
 * ends in .safetensors, or a PEFT folder DIR/NAME/adapter_model.safetensors (with its
 * adapter_config.json); sub-folders are allowed, ".." and absolute names are not.
 * GET /sdapi/v1/loras lists what --lora-dir holds. */
#include "server.h"

#include <ctype.h>
#include <dirent.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

static int is_file(const char *path) {
    struct stat st;
    return stat(path, &st) == 0 && S_ISREG(st.st_mode);
}

static int ends_with(const char *s, const char *suf) {
    size_t n = strlen(s), m = strlen(suf);
    return n >= m && !strcmp(s + n - m, suf);
}

static int lora_fail(srv_error *err, const char *fmt, const char *a, const char *b) {
    snprintf(err->message, sizeof err->message, fmt, a, b);
    err->status = 400;
    snprintf(err->param, sizeof err->param, "prompt");
    return -1;
}

/* The file a NAME stands for, into path; -1 with err when there is none. */
static int resolve(const char *dir, const char *name, char *path, size_t size, srv_error *err) {
    if (!*name || name[0] == '/' || strstr(name, "..") || strchr(name, '\\'))
        return lora_fail(err, "prompt: <lora:%s> is not a LoRA name (a file name in --lora-dir, no '..')%s", name, "");
    snprintf(path, size, "%s/%s.safetensors", dir, name);
    if (is_file(path)) return 0;
    snprintf(path, size, "%s/%s", dir, name);
    if (ends_with(name, ".safetensors") && is_file(path)) return 0;
    snprintf(path, size, "%s/%s/adapter_model.safetensors", dir, name);
    if (is_file(path)) return 0;
    return lora_fail(err, "prompt: no LoRA '%s' in --lora-dir %s (GET /sdapi/v1/loras lists them)", name, dir);
}

int srv_lora_extract(const srv_options *o, char *prompt, srv_job *j, srv_error *err) {
    char *p = prompt;
    while ((p = strstr(p, "<lora:"))) {
        char *end = strchr(p, '>');
        if (!end) return lora_fail(err, "prompt: '%.40s' has no closing '>'%s", p, "");
        char inner[1024];
        size_t n = (size_t)(end - p - 6);
        if (n >= sizeof inner) return lora_fail(err, "prompt: a <lora:...> tag is too long%s%s", "", "");
        memcpy(inner, p + 6, n);
        inner[n] = 0;
        /* NAME[:WEIGHT]: a second number (A1111's separate text-encoder weight) is refused */
        float scale = 1.0f;
        char *colon = strchr(inner, ':');
        if (colon) {
            *colon = 0;
            char *e;
            double v = strtod(colon + 1, &e);
            if (e == colon + 1 || *e || !isfinite(v))
                return lora_fail(err, "prompt: <lora:%s:%s>: the weight must be one number (qdiff applies one weight "
                                 "to the UNet and text encoders)", inner, colon + 1);
            scale = (float)v;
        }
        if (!o->lora_dir)
            return lora_fail(err, "prompt: <lora:%s> needs the server started with --lora-dir DIR%s", inner, "");
        if (j->n_loras == SRV_MAX_LORAS) return lora_fail(err, "prompt: more than %s LoRAs%s", "16", "");
        char path[4096];
        if (resolve(o->lora_dir, inner, path, sizeof path, err)) return -1;
        if (!(j->lora_paths[j->n_loras] = strdup(path))) {
            err->status = 500;
            snprintf(err->message, sizeof err->message, "out of memory");
            return -1;
        }
        j->lora_scales[j->n_loras++] = scale;
        memmove(p, end + 1, strlen(end + 1) + 1);   /* the tag leaves the prompt */
    }
    j->p.loras = (const char *const *)j->lora_paths;
    j->p.lora_scales = j->lora_scales;
    j->p.n_loras = j->n_loras;
    return 0;
}

/* One entry of GET /sdapi/v1/loras. */
static void add_lora(cJSON *arr, const char *name, const char *path) {
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "name", name);
    cJSON_AddStringToObject(o, "alias", name);
    cJSON_AddStringToObject(o, "path", path);
    cJSON_AddItemToObject(o, "metadata", cJSON_CreateObject());
    cJSON_AddItemToArray(arr, o);
}

static int cmp_str(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

void a1111_loras(srv *s, const srv_request *rq, srv_reply *rp) {
    (void)rq;
    cJSON *arr = cJSON_CreateArray();
    DIR *d = s->opt.lora_dir ? opendir(s->opt.lora_dir) : NULL;
    char **names = NULL;
    size_t n = 0, cap = 0;
    for (struct dirent *e; d && (e = readdir(d));) {
        if (e->d_name[0] == '.') continue;
        if (n == cap) {
            char **g = realloc(names, sizeof *g * (cap = cap ? 2 * cap : 32));
            if (!g) break;
            names = g;
        }
        if (!(names[n] = strdup(e->d_name))) break;
        n++;
    }
    if (d) closedir(d);
    qsort(names, n, sizeof *names, cmp_str);
    for (size_t i = 0; i < n; i++) {
        char path[4096];
        snprintf(path, sizeof path, "%s/%s", s->opt.lora_dir, names[i]);
        if (ends_with(names[i], ".safetensors") && is_file(path)) {
            names[i][strlen(names[i]) - 12] = 0;
            add_lora(arr, names[i], path);
        } else {
            snprintf(path, sizeof path, "%s/%s/adapter_model.safetensors", s->opt.lora_dir, names[i]);
            if (is_file(path)) add_lora(arr, names[i], path);
        }
        free(names[i]);
    }
    free(names);
    srv_reply_json(rp, 200, arr);
}
