/* pixbox_heif.c: the few calls pixbox makes into libheif, behind plain integer-returning functions,
 * so the Rust side passes no structs by value across the C boundary and holds one opaque handle.
 * The primary image is decoded with libheif's own transformations applied (irot, imir, clap:
 * HEIF's orientation, which wins over any EXIF orientation), to 8-bit interleaved RGB or RGBA. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "libheif/heif.h"

/* What a decode holds between the calls: the context, the primary image's handle and, once
 * decoded, the image. */
struct pixbox_heif {
  struct heif_context *context;
  struct heif_image_handle *handle;
  struct heif_image *image;
};

/* Outcomes; the message buffer says more. */
enum {
  PIXBOX_HEIF_OK = 0,
  PIXBOX_HEIF_BAD_INPUT = 1,
  PIXBOX_HEIF_UNSUPPORTED = 2,
  PIXBOX_HEIF_OUT_OF_MEMORY = 3,
  PIXBOX_HEIF_INTERNAL = 4,
};

static int outcome(struct heif_error error, char *message, size_t message_len) {
  if (error.code == heif_error_Ok) {
    return PIXBOX_HEIF_OK;
  }
  if (message_len > 0) {
    const char *text = error.message != NULL ? error.message : "unknown libheif error";
    size_t n = strlen(text);
    if (n >= message_len) {
      n = message_len - 1;
    }
    memcpy(message, text, n);
    message[n] = 0;
  }
  switch (error.code) {
    case heif_error_Unsupported_filetype:
    case heif_error_Unsupported_feature:
      return PIXBOX_HEIF_UNSUPPORTED;
    case heif_error_Memory_allocation_error:
      return PIXBOX_HEIF_OUT_OF_MEMORY;
    case heif_error_Usage_error:
    case heif_error_Plugin_loading_error:
    case heif_error_Encoder_plugin_error:
    case heif_error_Encoding_error:
    case heif_error_Color_profile_does_not_exist:
      return PIXBOX_HEIF_INTERNAL;
    default:
      /* Invalid_input, Decoder_plugin_error, Input_does_not_exist (a missing item): the file. */
      return PIXBOX_HEIF_BAD_INPUT;
  }
}

/* Reads the container (no pixels yet) and finds the primary image; images wider or taller than
 * `max_side` are refused by libheif as it reads their sizes (tiles and grids included). `data`
 * must outlive the handle: libheif reads it in place. */
int pixbox_heif_open(const uint8_t *data, size_t len, uint32_t max_side, struct pixbox_heif **out, char *message,
                     size_t message_len) {
  struct pixbox_heif *heif = calloc(1, sizeof *heif);
  if (heif == NULL) {
    return PIXBOX_HEIF_OUT_OF_MEMORY;
  }
  *out = heif;
  /* Registers the built-in decoder (libde265); counted, and the instance ends with the call. */
  int result = outcome(heif_init(NULL), message, message_len);
  if (result != PIXBOX_HEIF_OK) {
    return result;
  }
  heif->context = heif_context_alloc();
  if (heif->context == NULL) {
    return PIXBOX_HEIF_OUT_OF_MEMORY;
  }
  heif_context_set_maximum_image_size_limit(heif->context, max_side > INT32_MAX ? INT32_MAX : (int) max_side);
  result = outcome(heif_context_read_from_memory_without_copy(heif->context, data, len, NULL), message, message_len);
  if (result != PIXBOX_HEIF_OK) {
    return result;
  }
  return outcome(heif_context_get_primary_image_handle(heif->context, &heif->handle), message, message_len);
}

/* The primary image's size in display orientation, and whether it has an alpha plane. */
void pixbox_heif_size(const struct pixbox_heif *heif, uint32_t *width, uint32_t *height, int *has_alpha) {
  *width = (uint32_t) heif_image_handle_get_width(heif->handle);
  *height = (uint32_t) heif_image_handle_get_height(heif->handle);
  *has_alpha = heif_image_handle_has_alpha_channel(heif->handle);
}

/* The ICC profile's size (0 when the image has none, or an nclx colour description). */
size_t pixbox_heif_icc_size(const struct pixbox_heif *heif) {
  if (heif_image_handle_get_color_profile_type(heif->handle) == heif_color_profile_type_not_present ||
      heif_image_handle_get_color_profile_type(heif->handle) == heif_color_profile_type_nclx) {
    return 0;
  }
  return heif_image_handle_get_raw_color_profile_size(heif->handle);
}

/* Copies the ICC profile into `out`, which holds pixbox_heif_icc_size bytes. */
int pixbox_heif_icc(const struct pixbox_heif *heif, uint8_t *out, char *message, size_t message_len) {
  return outcome(heif_image_handle_get_raw_color_profile(heif->handle, out), message, message_len);
}

/* The nclx colour description's primaries and transfer characteristics (ISO/IEC 23091-2 code
 * points); 0 when the image has none. */
int pixbox_heif_nclx(const struct pixbox_heif *heif, uint8_t *primaries, uint8_t *transfer) {
  struct heif_color_profile_nclx *nclx = NULL;
  struct heif_error error = heif_image_handle_get_nclx_color_profile(heif->handle, &nclx);
  if (error.code != heif_error_Ok || nclx == NULL) {
    return 0;
  }
  *primaries = (uint8_t) nclx->color_primaries;
  *transfer = (uint8_t) nclx->transfer_characteristics;
  heif_nclx_color_profile_free(nclx);
  return 1;
}

/* Decodes the primary image to 8-bit interleaved RGB (RGBA with `alpha`). */
int pixbox_heif_decode(struct pixbox_heif *heif, int alpha, char *message, size_t message_len) {
  struct heif_decoding_options *options = heif_decoding_options_alloc();
  if (options == NULL) {
    return PIXBOX_HEIF_OUT_OF_MEMORY;
  }
  /* A broken tile is an error, not a grey square. */
  options->strict_decoding = 1;
  /* 10- and 12-bit images (HDR iPhone photos) come out in 8 bits, like every other format. */
  options->convert_hdr_to_8bit = 1;
  enum heif_chroma chroma = alpha ? heif_chroma_interleaved_RGBA : heif_chroma_interleaved_RGB;
  struct heif_error error = heif_decode_image(heif->handle, &heif->image, heif_colorspace_RGB, chroma, options);
  heif_decoding_options_free(options);
  return outcome(error, message, message_len);
}

/* Copies the decoded rows into `out` (width x height x channels bytes, no padding); fails when
 * libheif's image is not that size. */
int pixbox_heif_copy(const struct pixbox_heif *heif, uint8_t *out, size_t out_len, uint32_t width, uint32_t height,
                     uint32_t channels) {
  if (heif->image == NULL || heif_image_get_width(heif->image, heif_channel_interleaved) != (int) width ||
      heif_image_get_height(heif->image, heif_channel_interleaved) != (int) height ||
      heif_image_get_bits_per_pixel(heif->image, heif_channel_interleaved) != (int) (8 * channels)) {
    return PIXBOX_HEIF_INTERNAL;
  }
  int stride = 0;
  const uint8_t *plane = heif_image_get_plane_readonly(heif->image, heif_channel_interleaved, &stride);
  size_t row = (size_t) width * channels;
  if (plane == NULL || stride < 0 || (size_t) stride < row || out_len != row * height) {
    return PIXBOX_HEIF_INTERNAL;
  }
  for (uint32_t y = 0; y < height; y++) {
    memcpy(out + (size_t) y * row, plane + (size_t) y * (size_t) stride, row);
  }
  return PIXBOX_HEIF_OK;
}

void pixbox_heif_close(struct pixbox_heif *heif) {
  if (heif == NULL) {
    return;
  }
  if (heif->image != NULL) {
    heif_image_release(heif->image);
  }
  if (heif->handle != NULL) {
    heif_image_handle_release(heif->handle);
  }
  if (heif->context != NULL) {
    heif_context_free(heif->context);
  }
  free(heif);
}
