/* Shared pieces of the qdiff command line: each subcommand is cmd_<name>(). */
#ifndef QD_TOOLS_CLI_H
#define QD_TOOLS_CLI_H

#include "qdiff.h"

#define EXIT_BAD 2

int cmd_generate(int argc, char **argv);
int cmd_vae(int argc, char **argv);
int cmd_inspect(int argc, char **argv);

/* Parse a whole-string integer in [lo, hi] / a finite float; print why not and return -1. */
int cli_parse_int(const char *s, const char *opt, long lo, long hi, long *out);
int cli_parse_float(const char *s, const char *opt, float *out);
/* Fail before a long run, not after it, when `path` cannot be created. */
int cli_check_writable(const char *path);

#endif
