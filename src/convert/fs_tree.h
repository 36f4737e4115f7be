/* Folder helpers for writers that build a whole output folder: copy a tree
 * (hard links where the filesystem allows, else byte copies), remove a tree. */
#ifndef QD_CONVERT_FS_TREE_H
#define QD_CONVERT_FS_TREE_H

#include "base/ctx.h"

/* dst must not exist; symlinks are followed (their targets are copied). */
qd_status qd_tree_copy(qd_ctx *ctx, const char *src, const char *dst);
qd_status qd_file_copy(qd_ctx *ctx, const char *src, const char *dst);
/* rm -r without following symlinks; errors are ignored (best-effort cleanup). */
void qd_tree_remove(const char *path);

#endif
