/* qdiff samplers: every sampler, schedule and diffusers scheduler class generate
 * accepts, one line each; and the sampler-name / scheduler-option helpers of
 * generate. */
#include "cli.h"

#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *const list_title[] = {
    "samplers (generate --sampler NAME; ComfyUI's names)",
    "schedules (generate --schedule NAME, with --sampler)",
    "diffusers scheduler classes (generate --scheduler NAME)",
};
static const char *const list_kind[] = {"sampler", "schedule", "scheduler class"};

static void usage_samplers(FILE *f) {
    fprintf(f,
        "usage: qdiff samplers\n"
        "\n"
        "Lists the samplers, schedules and diffusers scheduler classes of qdiff generate,\n"
        "one per line with what it does.\n");
}

int cmd_samplers(int argc, char **argv) {
    if (argc > 1) {
        if (!strcmp(argv[1], "-h") || !strcmp(argv[1], "--help")) {
            usage_samplers(stdout);
            return 0;
        }
        fprintf(stderr, "qdiff: samplers takes no arguments, got '%s'\n", argv[1]);
        usage_samplers(stderr);
        return EXIT_BAD;
    }
    for (int w = 0; w < 3; w++) {
        printf("%s%s:\n", w ? "\n" : "", list_title[w]);
        const char *name, *about;
        for (int i = 0; (name = qd_list(w, i, &about)); i++) printf("  %-32s %s\n", name, about ? about : "");
    }
    printf("\nWith --sampler, --scheduler-opt KEY=VALUE sets sampler and schedule parameters: eta, s_noise,\n"
           "s_churn, s_tmin, s_tmax, order, r, sigma_min, sigma_max, rho, shift, threshold_noise,\n"
           "linear_steps, vp_beta_d, vp_beta_min, vp_eps_s, rtol, atol, h_init, pcoeff, icoeff,\n"
           "dcoeff, accept_safety (dpm_adaptive), predictor_order, corrector_order,\n"
           "sde_start_percent, sde_end_percent (sa_solver); thresholding=true with\n"
           "dynamic_thresholding_ratio, sample_max_value (diffusers' dynamic thresholding of x0);\n"
           "and scheduler_config keys such as\n"
           "prediction_type=v_prediction or rescale_betas_zero_snr=true.\n");
    return 0;
}

int cli_check_name(int what, const char *name, const char *opt) {
    const char *n;
    for (int i = 0; (n = qd_list(what, i, NULL)); i++)
        if (!strcmp(n, name)) return 0;
    fprintf(stderr, "qdiff: %s: unknown %s '%s'; valid:", opt, list_kind[what], name);
    for (int i = 0; (n = qd_list(what, i, NULL)); i++) fprintf(stderr, " %s", n);
    fprintf(stderr, "\n");
    return -1;
}

/* A scalar written the JSON way (0.5, true, null, "text"), else NULL. */
static cJSON *json_scalar(const char *text) {
    cJSON *v = cJSON_ParseWithOpts(text, NULL, 1);
    if (v && (cJSON_IsNumber(v) || cJSON_IsBool(v) || cJSON_IsNull(v) || cJSON_IsString(v))) return v;
    cJSON_Delete(v);
    return NULL;
}

int cli_scheduler_option(char *buf, size_t cap, const char *opt, const char *arg) {
    cJSON *obj = buf[0] ? cJSON_Parse(buf) : cJSON_CreateObject();
    int rc = -1;
    if (!obj) {
        fprintf(stderr, "qdiff: out of memory\n");
        return -1;
    }
    if (!strcmp(opt, "--scheduler-options")) {
        cJSON *in = cJSON_ParseWithOpts(arg, NULL, 1);
        if (!cJSON_IsObject(in)) {
            fprintf(stderr, "qdiff: %s expects a JSON object, got '%s'\n", opt, arg);
        } else {
            for (cJSON *it = in->child; it; it = it->next) {
                cJSON_DeleteItemFromObjectCaseSensitive(obj, it->string);
                cJSON_AddItemToObject(obj, it->string, cJSON_Duplicate(it, 1));
            }
            rc = 0;
        }
        cJSON_Delete(in);
    } else {
        char key[256];
        const char *value = arg, *eq = strchr(arg, '=');
        if (!strcmp(opt, "--eta")) {
            snprintf(key, sizeof key, "eta");
        } else if (!eq || eq == arg || (size_t)(eq - arg) >= sizeof key) {
            fprintf(stderr, "qdiff: %s expects KEY=VALUE, got '%s'\n", opt, arg);
            key[0] = 0;
        } else {
            snprintf(key, sizeof key, "%.*s", (int)(eq - arg), arg);
            value = eq + 1;
        }
        if (key[0]) {
            cJSON *v = json_scalar(value);
            if (!strcmp(opt, "--eta") && !cJSON_IsNumber(v)) {
                fprintf(stderr, "qdiff: --eta expects a number, got '%s'\n", value);
                cJSON_Delete(v);
                v = NULL;
            } else if (!v) {
                v = cJSON_CreateString(value);
            }
            if (v) {
                cJSON_DeleteItemFromObjectCaseSensitive(obj, key);
                cJSON_AddItemToObject(obj, key, v);
                rc = 0;
            }
        }
    }
    char *text = rc == 0 ? cJSON_PrintUnformatted(obj) : NULL;
    if (rc == 0 && (!text || strlen(text) >= cap)) {
        fprintf(stderr, "qdiff: scheduler options too long (at most %zu bytes)\n", cap - 1);
        rc = -1;
    }
    if (rc == 0) memcpy(buf, text, strlen(text) + 1);
    free(text);
    cJSON_Delete(obj);
    return rc;
}
