/* Reading PNG and JPEG files as RGB8. Declared in the public header
 * (qd_read_image); the format is detected from the file's first bytes, never
 * from its name. Every file is untrusted: sizes are limited and decoder errors
 * come back as messages naming the file. */
#ifndef QD_IO_IMAGE_READ_H
#define QD_IO_IMAGE_READ_H

#include "qdiff.h"

/* Largest image accepted: each side and the total pixel count. */
#define QD_IMAGE_MAX_SIDE 32768
#define QD_IMAGE_MAX_PIXELS (1LL << 28)

#endif
