/* pixbox's calls into libjpeg-turbo: open a JPEG held in memory, read its header, decode it at
 * a scale of n/8 into RGB or grey rows.
 *
 * libjpeg reports a fatal error by calling error_exit, which must not return; the library's
 * usual answer is setjmp/longjmp. pixbox needs none: a plugin instance lives for one call, so
 * error_exit hands the message, classed, to pixbox_jpeg_fatal (Rust), which calls the caller's
 * handler: in a plugin it tells the host why and traps. (Built natively, for benchmarks, the
 * handler cannot unwind through C: the process aborts.) Warnings about damaged data (a truncated
 * file, a bad Huffman code) are fatal too: libjpeg would pad the picture with grey and carry on,
 * and a damaged image must be refused, not stored. */

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include "jpeglib.h"
#include "jerror.h"

/* How a failure is reported: the input is damaged, it uses a JPEG feature this build lacks, or
 * pixbox called libjpeg wrongly (a bug, not the input's fault). */
enum { PIXBOX_BAD_INPUT = 0, PIXBOX_UNSUPPORTED = 1, PIXBOX_INTERNAL = 2 };

/* Never returns: calls `handler` (a Rust fn pointer) with the class and the message. */
extern void pixbox_jpeg_fatal(void *handler, int kind, const char *message) __attribute__((noreturn));

/* The most scans a file may have: a small progressive file can hold thousands of scans, each of
 * which walks every block of the image (libjpeg-turbo's own limit for its TurboJPEG API). */
#define MAX_SCANS 500

typedef struct {
  struct jpeg_decompress_struct cinfo; /* first: error callbacks get its address */
  struct jpeg_error_mgr err;
  struct jpeg_progress_mgr progress;
  int decoding; /* scan data is being read (set by pixbox_jpeg_start) */
} pixbox_jpeg;

static int kind_of(int code) {
  switch (code) {
  case JERR_SOF_UNSUPPORTED: /* lossless, hierarchical */
  case JERR_BAD_PRECISION:   /* 12- and 16-bit samples */
  case JERR_NOT_COMPILED:
  case JERR_NOTIMPL:
  case JERR_CCIR601_NOTIMPL:
    return PIXBOX_UNSUPPORTED;
  case JERR_BAD_STATE:
  case JERR_BAD_BUFFER_MODE:
  case JERR_BAD_STRUCT_SIZE:
  case JERR_BAD_LIB_VERSION:
  case JERR_BAD_ALLOC_CHUNK:
  case JERR_BAD_POOL_ID:
  case JERR_CONVERSION_NOTIMPL:
  case JERR_OUT_OF_MEMORY: /* the host sees its memory cap first when that is the cause */
  case JERR_VIRTUAL_BUG:
    return PIXBOX_INTERNAL;
  default:
    return PIXBOX_BAD_INPUT;
  }
}

static void fail(j_common_ptr cinfo) {
  char message[JMSG_LENGTH_MAX];
  (*cinfo->err->format_message)(cinfo, message);
  pixbox_jpeg_fatal(cinfo->client_data, kind_of(cinfo->err->msg_code), message);
}

static void warn(j_common_ptr cinfo, int level) {
  if (level >= 0) return; /* trace messages */
  pixbox_jpeg *d = (pixbox_jpeg *)cinfo;
  switch (cinfo->err->msg_code) {
  /* Harmless: an odd JFIF version or Adobe transform code is read as usual, a bad ICC marker
   * only loses the profile, and some baseline encoders write zeros where a sequential scan's
   * spectral parameters go. */
  case JWRN_JFIF_MAJOR:
  case JWRN_ADOBE_XFORM:
  case JWRN_BOGUS_ICC:
  case JWRN_NOT_SEQUENTIAL:
    return;
  case JWRN_EXTRANEOUS_DATA:
    /* Stray bytes between segments are skipped; before a restart marker they mean the decoder
     * lost its place in the interval, whose rest it would show as garbage. */
    if (cinfo->err->msg_parm.i[1] >= 0xD0 && cinfo->err->msg_parm.i[1] <= 0xD7) break;
    return;
  case JWRN_JPEG_EOF:
    /* The file ends without its end marker. In the one scan of a sequential file libjpeg reads
     * ahead for bits it may not need: if it needed them, it says "premature end of data
     * segment" next, which is fatal. Anywhere else (a header, a progressive file's or a
     * component's missing scans) the rest of the picture is missing. */
    if (d->decoding && !d->cinfo.progressive_mode && d->cinfo.comps_in_scan == d->cinfo.num_components) return;
    break;
  default:
    break;
  }
  fail(cinfo);
}

static void quiet(j_common_ptr cinfo) { (void)cinfo; }

static void count_scans(j_common_ptr cinfo) {
  j_decompress_ptr d = (j_decompress_ptr)cinfo;
  if (d->input_scan_number > MAX_SCANS) {
    char message[64];
    snprintf(message, sizeof message, "the JPEG has more than %d scans", MAX_SCANS);
    pixbox_jpeg_fatal(cinfo->client_data, PIXBOX_BAD_INPUT, message);
  }
}

/* Reads the header of the `len` bytes at `data`, which must outlive the decoder; failures go to
 * `handler` through pixbox_jpeg_fatal. */
pixbox_jpeg *pixbox_jpeg_open(const uint8_t *data, size_t len, void *handler) {
  pixbox_jpeg *d = calloc(1, sizeof(pixbox_jpeg));
  if (!d) pixbox_jpeg_fatal(handler, PIXBOX_INTERNAL, "out of memory");
  d->cinfo.err = jpeg_std_error(&d->err);
  d->err.error_exit = fail;
  d->err.emit_message = warn;
  d->err.output_message = quiet;
  d->cinfo.client_data = handler; /* kept by jpeg_create_decompress */
  jpeg_create_decompress(&d->cinfo);
  d->progress.progress_monitor = count_scans;
  d->cinfo.progress = &d->progress;
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
  d->decoding = 1;
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
