/* Tree copy (link or copy) and removal. */
#include "convert/fs_tree.h"
#include "io/file.h"

#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

qd_status qd_file_copy(qd_ctx *ctx, const char *src, const char *dst) {
    FILE *in = fopen(src, "rb");
    if (!in) return qd_fail(ctx, QD_ERR_IO, "%s: cannot open: %s", src, strerror(errno));
    FILE *out = fopen(dst, "wb");
    if (!out) {
        fclose(in);
        return qd_fail(ctx, QD_ERR_IO, "%s: cannot write: %s", dst, strerror(errno));
    }
    char buf[1 << 16];
    size_t n;
    int bad = 0;
    while ((n = fread(buf, 1, sizeof buf, in)) > 0)
        if (fwrite(buf, 1, n, out) != n) { bad = 1; break; }
    if (ferror(in)) bad = 1;
    fclose(in);
    if (fclose(out) != 0) bad = 1;
    if (bad) return qd_fail(ctx, QD_ERR_IO, "%s: copy to %s failed: %s", src, dst, strerror(errno));
    return QD_OK;
}

qd_status qd_tree_copy(qd_ctx *ctx, const char *src, const char *dst) {
    struct stat st;
    if (stat(src, &st) != 0) return qd_fail(ctx, QD_ERR_IO, "%s: %s", src, strerror(errno));
    if (S_ISREG(st.st_mode)) {
        if (link(src, dst) == 0) return QD_OK;
        return qd_file_copy(ctx, src, dst);
    }
    if (!S_ISDIR(st.st_mode)) return QD_OK;   /* sockets, fifos: nothing a model needs */
    if (mkdir(dst, 0755) != 0) return qd_fail(ctx, QD_ERR_IO, "%s: cannot create: %s", dst, strerror(errno));
    DIR *d = opendir(src);
    if (!d) return qd_fail(ctx, QD_ERR_IO, "%s: cannot list: %s", src, strerror(errno));
    struct dirent *e;
    qd_status rc = QD_OK;
    while (rc == QD_OK && (e = readdir(d))) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
        char a[4096], b[4096];
        qd_path_join(a, sizeof a, src, e->d_name);
        qd_path_join(b, sizeof b, dst, e->d_name);
        rc = qd_tree_copy(ctx, a, b);
    }
    closedir(d);
    return rc;
}

void qd_tree_remove(const char *path) {
    struct stat st;
    if (lstat(path, &st) != 0) return;
    if (S_ISDIR(st.st_mode)) {
        DIR *d = opendir(path);
        if (d) {
            struct dirent *e;
            while ((e = readdir(d))) {
                if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
                char a[4096];
                qd_path_join(a, sizeof a, path, e->d_name);
                qd_tree_remove(a);
            }
            closedir(d);
        }
        rmdir(path);
    } else {
        unlink(path);
    }
}
