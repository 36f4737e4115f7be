/* Shared pieces of the qdiff command line: each subcommand is cmd_<name>(). */
#ifndef QD_TOOLS_CLI_H
#define QD_TOOLS_CLI_H

#include "qdiff.h"

#define EXIT_BAD 2

int cmd_generate(int argc, char **argv);
int cmd_vae(int argc, char **argv);
int cmd_inspect(int argc, char **argv);
int cmd_samplers(int argc, char **argv);
int cmd_quantize(int argc, char **argv);

/* Parse a whole-string integer in [lo, hi] / a finite float; print why not and return -1. */
int cli_parse_int(const char *s, const char *opt, long lo, long hi, long *out);
int cli_parse_float(const char *s, const char *opt, float *out);
/* Fail before a long run, not after it, when `path` cannot be created. */
int cli_check_writable(const char *path);

/* A sampler / schedule / scheduler class name (what: QD_LIST_*) generate accepts;
 * else print the valid ones and return -1. */
int cli_check_name(int what, const char *name, const char *opt);
/* Fold one of generate's scheduler options into the JSON object text buf (cap
 * bytes, "" = {}): --scheduler-options J merges J's keys, --scheduler-opt KEY=VALUE
 * sets one (VALUE as JSON when it is a JSON scalar such as 0.5, true, null or
 * "text", else as a string), --eta X sets "eta". Later settings win. Prints why
 * and returns -1 on bad input. */
int cli_scheduler_option(char *buf, size_t cap, const char *opt, const char *arg);

#endif
