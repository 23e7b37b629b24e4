/* libjpeg-turbo's SIMD hooks for pixbox: YCbCr -> RGB colour conversion in WebAssembly SIMD
 * (simd128), everything else as jsimd_none.c leaves it (libjpeg's C code).
 *
 * libjpeg's own conversion looks every sample up in four tables, which no compiler vectorises;
 * this computes the same fixed-point formulas (jdcolor.c: 16 fraction bits, rounding, clamped to
 * 0..255) 16 pixels at a time, so the output is identical to libjpeg's. Built natively (benchmarks,
 * tests), the same formulas run one pixel at a time. */

#define JPEG_INTERNALS
/* jsimd_none.c with its two colour-conversion hooks renamed out of the way; they are defined
 * below. */
#define jsimd_can_ycc_rgb pixbox_none_can_ycc_rgb
#define jsimd_ycc_rgb_convert pixbox_none_ycc_rgb_convert
#include "jsimd_none.c"
#undef jsimd_can_ycc_rgb
#undef jsimd_ycc_rgb_convert

#ifdef __wasm_simd128__
#include <wasm_simd128.h>
#endif

#define SCALEBITS 16
#define ONE_HALF ((int32_t)1 << (SCALEBITS - 1))
#define FIX(x) ((int32_t)((x) * (1L << SCALEBITS) + 0.5))

GLOBAL(int) jsimd_can_ycc_rgb(void);
GLOBAL(void) jsimd_ycc_rgb_convert(j_decompress_ptr cinfo, JSAMPIMAGE input_buf, JDIMENSION input_row,
                                   JSAMPARRAY output_buf, int num_rows);

GLOBAL(int)
jsimd_can_ycc_rgb(void)
{
  return 1;
}

static inline JSAMPLE clamp(int32_t value)
{
  return (JSAMPLE)(value < 0 ? 0 : value > MAXJSAMPLE ? MAXJSAMPLE : value);
}

/* One pixel, as jdcolext.c's ycc_rgb_convert_internal computes it from jdcolor.c's tables. */
static inline void ycc_pixel(int y, int cb, int cr, JSAMPROW out, int red, int green, int blue)
{
  int32_t x_cb = cb - CENTERJSAMPLE, x_cr = cr - CENTERJSAMPLE;
  out[red] = clamp(y + ((FIX(1.40200) * x_cr + ONE_HALF) >> SCALEBITS));
  out[green] = clamp(y + ((-FIX(0.34414) * x_cb + ONE_HALF - FIX(0.71414) * x_cr) >> SCALEBITS));
  out[blue] = clamp(y + ((FIX(1.77200) * x_cb + ONE_HALF) >> SCALEBITS));
}

#ifdef __wasm_simd128__
/* The three channels of four pixels, 32-bit lanes, before clamping. */
static inline void ycc_four(v128_t y, v128_t cb, v128_t cr, v128_t *r, v128_t *g, v128_t *b)
{
  const v128_t center = wasm_i32x4_splat(CENTERJSAMPLE), half = wasm_i32x4_splat(ONE_HALF);
  v128_t x_cb = wasm_i32x4_sub(cb, center), x_cr = wasm_i32x4_sub(cr, center);
  const v128_t cr_r = wasm_i32x4_add(wasm_i32x4_mul(x_cr, wasm_i32x4_splat(FIX(1.40200))), half);
  const v128_t cb_g = wasm_i32x4_add(wasm_i32x4_mul(x_cb, wasm_i32x4_splat(-FIX(0.34414))), half);
  const v128_t cr_g = wasm_i32x4_mul(x_cr, wasm_i32x4_splat(-FIX(0.71414)));
  const v128_t cb_b = wasm_i32x4_add(wasm_i32x4_mul(x_cb, wasm_i32x4_splat(FIX(1.77200))), half);
  *r = wasm_i32x4_add(y, wasm_i32x4_shr(cr_r, SCALEBITS));
  *g = wasm_i32x4_add(y, wasm_i32x4_shr(wasm_i32x4_add(cb_g, cr_g), SCALEBITS));
  *b = wasm_i32x4_add(y, wasm_i32x4_shr(cb_b, SCALEBITS));
}

/* 16 bytes as four vectors of four 32-bit lanes. */
static inline void widen(v128_t bytes, v128_t out[4])
{
  v128_t low = wasm_u16x8_extend_low_u8x16(bytes), high = wasm_u16x8_extend_high_u8x16(bytes);
  out[0] = wasm_u32x4_extend_low_u16x8(low);
  out[1] = wasm_u32x4_extend_high_u16x8(low);
  out[2] = wasm_u32x4_extend_low_u16x8(high);
  out[3] = wasm_u32x4_extend_high_u16x8(high);
}

/* Four vectors of 32-bit lanes back to 16 bytes; the saturating narrowing is the clamp. */
static inline v128_t narrow(const v128_t in[4])
{
  return wasm_u8x16_narrow_i16x8(wasm_i16x8_narrow_i32x4(in[0], in[1]), wasm_i16x8_narrow_i32x4(in[2], in[3]));
}

/* 16 pixels: r, g and b interleaved into 48 bytes (r0 g0 b0 r1 ...). */
static inline void store_rgb(JSAMPROW out, v128_t r, v128_t g, v128_t b)
{
  v128_t rg0 = wasm_i8x16_shuffle(r, g, 0, 16, 0, 1, 17, 0, 2, 18, 0, 3, 19, 0, 4, 20, 0, 5);
  v128_t rg1 = wasm_i8x16_shuffle(r, g, 21, 0, 6, 22, 0, 7, 23, 0, 8, 24, 0, 9, 25, 0, 10, 26);
  v128_t rg2 = wasm_i8x16_shuffle(r, g, 0, 11, 27, 0, 12, 28, 0, 13, 29, 0, 14, 30, 0, 15, 31, 0);
  wasm_v128_store(out, wasm_i8x16_shuffle(rg0, b, 0, 1, 16, 3, 4, 17, 6, 7, 18, 9, 10, 19, 12, 13, 20, 15));
  wasm_v128_store(out + 16, wasm_i8x16_shuffle(rg1, b, 0, 21, 2, 3, 22, 5, 6, 23, 8, 9, 24, 11, 12, 25, 14, 15));
  wasm_v128_store(out + 32, wasm_i8x16_shuffle(rg2, b, 26, 1, 2, 27, 4, 5, 28, 7, 8, 29, 10, 11, 30, 13, 14, 31));
}
#endif

GLOBAL(void)
jsimd_ycc_rgb_convert(j_decompress_ptr cinfo, JSAMPIMAGE input_buf, JDIMENSION input_row, JSAMPARRAY output_buf,
                      int num_rows)
{
  const JDIMENSION width = cinfo->output_width;
  const int red = rgb_red[cinfo->out_color_space], green = rgb_green[cinfo->out_color_space],
            blue = rgb_blue[cinfo->out_color_space], size = rgb_pixelsize[cinfo->out_color_space];
  const boolean packed = red == 0 && green == 1 && blue == 2 && size == 3;
  while (--num_rows >= 0) {
    JSAMPROW y = input_buf[0][input_row], cb = input_buf[1][input_row], cr = input_buf[2][input_row];
    JSAMPROW out = *output_buf++;
    JDIMENSION col = 0;
    input_row++;
#ifdef __wasm_simd128__
    for (; packed && col + 16 <= width; col += 16) {
      v128_t y4[4], cb4[4], cr4[4], r4[4], g4[4], b4[4];
      widen(wasm_v128_load(y + col), y4);
      widen(wasm_v128_load(cb + col), cb4);
      widen(wasm_v128_load(cr + col), cr4);
      for (int i = 0; i < 4; i++)
        ycc_four(y4[i], cb4[i], cr4[i], &r4[i], &g4[i], &b4[i]);
      store_rgb(out + 3 * col, narrow(r4), narrow(g4), narrow(b4));
    }
#else
    (void)packed;
#endif
    for (; col < width; col++)
      ycc_pixel(y[col], cb[col], cr[col], out + (size_t)size * col, red, green, blue);
    /* RGBX-style layouts: libjpeg fills the unused byte with 0xFF. */
    if (size == 4) {
      const int alpha = 6 - red - green - blue;
      for (col = 0; col < width; col++)
        out[(size_t)4 * col + alpha] = 0xFF;
    }
  }
}
