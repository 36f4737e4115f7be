/* JSON text the way Python's json.dumps(obj, indent=2, sort_keys=True) writes it
 * (what diffusers and transformers write for config.json, and sdnq for
 * quantization_config.json), and inserting a key into such a file's text so the
 * rest of the original bytes stay as they were. Numbers print as integers when
 * integral; cJSON raw items print verbatim (for floats that must keep a ".0"). */
#ifndef QD_CONVERT_PYJSON_H
#define QD_CONVERT_PYJSON_H

#include <cjson/cJSON.h>

/* malloc'd text; `indent` is the nesting level the value starts at. NULL on OOM. */
char *qd_pyjson_print(const cJSON *v, int indent);

/* Python's repr of a double (shortest text that reads back the same, ".0" kept). */
void qd_pyjson_float(double v, char *buf, size_t n);

/* The text of a config.json with top-level key set to value_text (printed at
 * nesting level 1): replaces the key if present, else inserts it at its sorted
 * place. Falls back to re-printing the whole object when the text is not in the
 * indent-2 layout. malloc'd; NULL on failure. */
char *qd_pyjson_set_key(const char *text, const char *key, const cJSON *value);

#endif
