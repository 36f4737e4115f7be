/* Small file helpers shared by the loaders and writers. */
#ifndef QD_IO_FILE_H
#define QD_IO_FILE_H

#include <stddef.h>
#include "base/ctx.h"

/* Read a whole file into a NUL-terminated malloc'd buffer. */
qd_status qd_read_file(qd_ctx *ctx, const char *path, char **out, size_t *len);
int qd_file_exists(const char *path);
int qd_dir_exists(const char *path);
/* Join a directory and a relative name into buf (always NUL-terminated). */
void qd_path_join(char *buf, size_t size, const char *dir, const char *name);

/* Atomic output: open a temporary file beside `path`; commit renames it into
 * place, abort removes it. Callers never leave partial output behind. */
typedef struct { char tmp[4096]; char path[4096]; void *fp; } qd_outfile;
qd_status qd_outfile_open(qd_ctx *ctx, qd_outfile *f, const char *path);
qd_status qd_outfile_commit(qd_ctx *ctx, qd_outfile *f);
void qd_outfile_abort(qd_outfile *f);

#endif
