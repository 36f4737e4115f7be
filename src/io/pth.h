/* PyTorch .pth/.pt files (torch.save since 1.6: a store-only zip holding
 * <name>/data.pkl and <name>/data/<key> storages) read as a state dict of
 * tensors, WITHOUT executing anything: the pickle is interpreted by a small VM
 * that knows only the opcodes of plain containers and the few callables a
 * state dict uses (collections.OrderedDict, torch._utils._rebuild_tensor_v2 /
 * _rebuild_parameter, torch.*Storage as persistent storage references). Any
 * other global (os.system, builtins.eval, ...) or opcode is refused with an
 * error naming the file and the callable.
 *
 * Tensors come back as qd_st_tensor views into the memory-mapped file (or
 * contiguous copies for strided ones), bounds-checked against their storages.
 * Nested dicts are flattened with "." (e.g. {"state_dict": {...}}); other
 * non-tensor values are ignored. */
#ifndef QD_IO_PTH_H
#define QD_IO_PTH_H

#include <stddef.h>
#include <stdint.h>
#include "base/ctx.h"
#include "io/safetensors.h"

typedef struct {
    char *path;
    void *map;
    size_t size;
    qd_st_tensor *tensors;      /* sorted by name */
    int64_t n_tensors;
    void **owned;               /* names and strided copies */
    int64_t n_owned, cap_owned;
} qd_pth;

/* 1 if the bytes look like a zip archive (what torch.save writes). */
int qd_pth_sniff(const void *head, size_t n);

qd_status qd_pth_open(qd_ctx *ctx, const char *path, qd_pth **out);
void qd_pth_close(qd_pth *p);

#endif
