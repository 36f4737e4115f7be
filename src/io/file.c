#include "io/file.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

qd_status qd_read_file(qd_ctx *ctx, const char *path, char **out, size_t *len) {
    *out = NULL;
    FILE *f = fopen(path, "rb");
    if (!f) return qd_fail(ctx, QD_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fileno(f), &st) != 0 || !S_ISREG(st.st_mode)) {
        fclose(f);
        return qd_fail(ctx, QD_ERR_IO, "%s: not a regular file", path);
    }
    size_t n = (size_t)st.st_size;
    char *buf = malloc(n + 1);
    if (!buf) { fclose(f); return qd_fail(ctx, QD_ERR_NOMEM, "%s: out of memory (%zu bytes)", path, n); }
    if (n && fread(buf, 1, n, f) != n) {
        free(buf); fclose(f);
        return qd_fail(ctx, QD_ERR_IO, "%s: read error", path);
    }
    fclose(f);
    buf[n] = 0;
    *out = buf;
    if (len) *len = n;
    return QD_OK;
}

int qd_file_exists(const char *path) {
    struct stat st;
    return stat(path, &st) == 0 && S_ISREG(st.st_mode);
}

int qd_dir_exists(const char *path) {
    struct stat st;
    return stat(path, &st) == 0 && S_ISDIR(st.st_mode);
}

void qd_path_join(char *buf, size_t size, const char *dir, const char *name) {
    size_t n = strlen(dir);
    if (n && dir[n - 1] == '/') snprintf(buf, size, "%s%s", dir, name);
    else snprintf(buf, size, "%s/%s", dir, name);
}

qd_status qd_outfile_open(qd_ctx *ctx, qd_outfile *f, const char *path) {
    memset(f, 0, sizeof *f);
    if (strlen(path) + 32 >= sizeof f->tmp)
        return qd_fail(ctx, QD_ERR_ARG, "%s: path too long", path);
    snprintf(f->path, sizeof f->path, "%s", path);
    snprintf(f->tmp, sizeof f->tmp, "%s.tmp-%ld", path, (long)getpid());
    f->fp = fopen(f->tmp, "wb");
    if (!f->fp) return qd_fail(ctx, QD_ERR_IO, "%s: cannot write: %s", path, strerror(errno));
    return QD_OK;
}

qd_status qd_outfile_commit(qd_ctx *ctx, qd_outfile *f) {
    FILE *fp = f->fp;
    f->fp = NULL;
    int bad = ferror(fp);
    if (fclose(fp) != 0) bad = 1;
    if (bad) {
        remove(f->tmp);
        return qd_fail(ctx, QD_ERR_IO, "%s: write failed: %s", f->path, strerror(errno));
    }
    if (rename(f->tmp, f->path) != 0) {
        int e = errno;
        remove(f->tmp);
        return qd_fail(ctx, QD_ERR_IO, "%s: cannot write: %s", f->path, strerror(e));
    }
    return QD_OK;
}

void qd_outfile_abort(qd_outfile *f) {
    if (f->fp) { fclose(f->fp); f->fp = NULL; remove(f->tmp); }
}
