/* pixbox's calls into libjpeg-turbo: open a JPEG held in memory, read its header, decode it at
 * a scale of n/8 into RGB or grey rows.
 *
 * libjpeg reports a fatal error by calling error_exit, which must not return; the library's
 * usual answer is setjmp/longjmp. pixbox needs none: a plugin instance lives for one call, so
 * error_exit hands the message to pixbox_jpeg_fatal (Rust), which tells the host why the input is
 * unusable and traps. Warnings about damaged data (a truncated file, a bad Huffman code) are fatal
 * too: libjpeg would pad the picture with grey and carry on, and a damaged image must be refused,
 * not stored. */

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include "jpeglib.h"
#include "jerror.h"

/* Never returns (Rust: records the reason, then traps or panics). */
extern void pixbox_jpeg_fatal(const char *message) __attribute__((noreturn));

typedef struct {
  struct jpeg_decompress_struct cinfo;
  struct jpeg_error_mgr err;
} pixbox_jpeg;

static void fail(j_common_ptr cinfo) {
  char message[JMSG_LENGTH_MAX];
  (*cinfo->err->format_message)(cinfo, message);
  pixbox_jpeg_fatal(message);
}

static void warn(j_common_ptr cinfo, int level) {
  if (level >= 0) return; /* trace messages */
  switch (cinfo->err->msg_code) {
  /* Harmless: stray bytes before a marker are skipped, an odd JFIF version or Adobe transform
   * code is read as usual, a bad ICC marker only loses the profile. */
  case JWRN_EXTRANEOUS_DATA:
  case JWRN_JFIF_MAJOR:
  case JWRN_ADOBE_XFORM:
  case JWRN_BOGUS_ICC:
    return;
  default:
    fail(cinfo);
  }
}

static void quiet(j_common_ptr cinfo) { (void)cinfo; }

/* Reads the header of the `len` bytes at `data`, which must outlive the decoder. */
pixbox_jpeg *pixbox_jpeg_open(const uint8_t *data, size_t len) {
  pixbox_jpeg *d = calloc(1, sizeof(pixbox_jpeg));
  if (!d) pixbox_jpeg_fatal("out of memory");
  d->cinfo.err = jpeg_std_error(&d->err);
  d->err.error_exit = fail;
  d->err.emit_message = warn;
  d->err.output_message = quiet;
  jpeg_create_decompress(&d->cinfo);
  jpeg_mem_src(&d->cinfo, data, (unsigned long)len);
  jpeg_save_markers(&d->cinfo, JPEG_APP0 + 1, 0xFFFF); /* EXIF, for the orientation */
  jpeg_save_markers(&d->cinfo, JPEG_APP0 + 2, 0xFFFF); /* ICC profile chunks */
  jpeg_read_header(&d->cinfo, TRUE);
  return d;
}

/* The frame's size, its number of components, its colour space (libjpeg's J_COLOR_SPACE) and
 * whether it is progressive. */
void pixbox_jpeg_info(const pixbox_jpeg *d, uint32_t *width, uint32_t *height, int *components, int *color_space,
                      int *progressive) {
  *width = d->cinfo.image_width;
  *height = d->cinfo.image_height;
  *components = d->cinfo.num_components;
  *color_space = d->cinfo.jpeg_color_space;
  *progressive = d->cinfo.progressive_mode ? 1 : 0;
}

/* The first APP1 segment that holds EXIF, from its TIFF header on; NULL when there is none. */
const uint8_t *pixbox_jpeg_exif(const pixbox_jpeg *d, size_t *len) {
  for (jpeg_saved_marker_ptr m = d->cinfo.marker_list; m; m = m->next) {
    if (m->marker == JPEG_APP0 + 1 && m->data_length > 6 && m->data[0] == 'E' && m->data[1] == 'x' &&
        m->data[2] == 'i' && m->data[3] == 'f' && m->data[4] == 0 && m->data[5] == 0) {
      *len = m->data_length - 6;
      return m->data + 6;
    }
  }
  return NULL;
}

/* The ICC profile, reassembled from its chunks (malloc'd: the caller frees it with
 * pixbox_jpeg_free); NULL when there is none or it is malformed. */
uint8_t *pixbox_jpeg_icc(pixbox_jpeg *d, size_t *len) {
  JOCTET *icc = NULL;
  unsigned int icc_len = 0;
  if (!jpeg_read_icc_profile(&d->cinfo, &icc, &icc_len)) return NULL;
  *len = icc_len;
  return icc;
}

void pixbox_jpeg_free(void *p) { free(p); }

/* Starts decoding at `eighths`/8 of the full size (1..=16), into grey (one byte per pixel) or
 * RGB; says the size the rows will have. */
void pixbox_jpeg_start(pixbox_jpeg *d, unsigned eighths, int gray, uint32_t *width, uint32_t *height) {
  d->cinfo.scale_num = eighths;
  d->cinfo.scale_denom = 8;
  d->cinfo.out_color_space = gray ? JCS_GRAYSCALE : JCS_RGB;
  d->cinfo.dct_method = JDCT_ISLOW;
  jpeg_start_decompress(&d->cinfo);
  *width = d->cinfo.output_width;
  *height = d->cinfo.output_height;
}

/* Decodes every row into `pixels`, `stride` bytes apart. */
void pixbox_jpeg_read(pixbox_jpeg *d, uint8_t *pixels, size_t stride) {
  while (d->cinfo.output_scanline < d->cinfo.output_height) {
    JSAMPROW row = pixels + (size_t)d->cinfo.output_scanline * stride;
    jpeg_read_scanlines(&d->cinfo, &row, 1);
  }
}

void pixbox_jpeg_close(pixbox_jpeg *d) {
  jpeg_destroy_decompress(&d->cinfo);
  free(d);
}

