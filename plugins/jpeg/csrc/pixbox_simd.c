/* libjpeg-turbo's SIMD hooks for pixbox: YCbCr -> RGB colour conversion and the inverse DCTs a
 * decode at 8/8, 5/8 and 4/8 runs (8x8; 5x5, and 10x10 for halved chroma; 4x4) in WebAssembly SIMD
 * (simd128), everything else as jsimd_none.c leaves it (libjpeg's C code). libjpeg has no hook
 * for the 5x5 and 10x10 transforms: patches/libjpeg-turbo-wasm-idct.patch points jddctmgr.c at
 * the ones here.
 *
 * libjpeg's own conversion looks every sample up in four tables, which no compiler vectorises;
 * this computes the same fixed-point formulas (jdcolor.c: 16 fraction bits, rounding, clamped to
 * 0..255) 16 pixels at a time, so the output is identical to libjpeg's. Built natively (benchmarks,
 * tests), the same formulas run one pixel at a time. The inverse DCTs are jidctint.c's (4x4:
 * jidctred.c's), four columns (then four rows) at a time, with the same 32-bit arithmetic, shortcuts and output table:
 * their output too is libjpeg's, bit for bit; natively libjpeg's C runs. */

#define JPEG_INTERNALS
/* jsimd_none.c with the hooks defined below renamed out of the way. */
#define jsimd_can_ycc_rgb pixbox_none_can_ycc_rgb
#define jsimd_ycc_rgb_convert pixbox_none_ycc_rgb_convert
#ifdef __wasm_simd128__
#define jsimd_can_idct_islow pixbox_none_can_idct_islow
#define jsimd_idct_islow pixbox_none_idct_islow
#define jsimd_can_idct_4x4 pixbox_none_can_idct_4x4
#define jsimd_idct_4x4 pixbox_none_idct_4x4
#endif
#include "jsimd_none.c"
#undef jsimd_can_ycc_rgb
#undef jsimd_ycc_rgb_convert
#undef jsimd_can_idct_islow
#undef jsimd_idct_islow
#undef jsimd_can_idct_4x4
#undef jsimd_idct_4x4

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

#ifdef __wasm_simd128__
/* jidctint.c's constants for 8-bit samples: CONST_BITS 13, PASS1_BITS 2. */
#define ISLOW_CONST_BITS 13
#define ISLOW_PASS1_BITS 2

GLOBAL(int) jsimd_can_idct_islow(void);
GLOBAL(void) jsimd_idct_islow(j_decompress_ptr cinfo, jpeg_component_info *compptr, JCOEFPTR coef_block,
                              JSAMPARRAY output_buf, JDIMENSION output_col);

GLOBAL(int)
jsimd_can_idct_islow(void)
{
  /* The table below holds int multipliers: libjpeg's MULTIPLIER without WITH_SIMD. */
  return sizeof(ISLOW_MULT_TYPE) == 4;
}

static inline v128_t mulc(v128_t v, int32_t c)
{
  return wasm_i32x4_mul(v, wasm_i32x4_splat(c));
}

static inline v128_t descale(v128_t v, int n)
{
  return wasm_i32x4_shr(wasm_i32x4_add(v, wasm_i32x4_splat(1 << (n - 1))), n);
}

/* One 1-D pass of jidctint.c over four lanes: in[0..7] are one column's (or row's) eight inputs,
 * out[0..7] its outputs descaled by `shift` bits. */
static inline void islow_1d(const v128_t in[8], v128_t out[8], int shift)
{
  /* Even part. */
  v128_t z2 = in[2], z3 = in[6];
  v128_t z1 = mulc(wasm_i32x4_add(z2, z3), 4433);               /* FIX_0_541196100 */
  v128_t tmp2 = wasm_i32x4_add(z1, mulc(z3, -15137));          /* -FIX_1_847759065 */
  v128_t tmp3 = wasm_i32x4_add(z1, mulc(z2, 6270));            /* FIX_0_765366865 */
  v128_t tmp0 = wasm_i32x4_shl(wasm_i32x4_add(in[0], in[4]), ISLOW_CONST_BITS);
  v128_t tmp1 = wasm_i32x4_shl(wasm_i32x4_sub(in[0], in[4]), ISLOW_CONST_BITS);
  const v128_t tmp10 = wasm_i32x4_add(tmp0, tmp3), tmp13 = wasm_i32x4_sub(tmp0, tmp3);
  const v128_t tmp11 = wasm_i32x4_add(tmp1, tmp2), tmp12 = wasm_i32x4_sub(tmp1, tmp2);
  /* Odd part. */
  tmp0 = in[7];
  tmp1 = in[5];
  tmp2 = in[3];
  tmp3 = in[1];
  z1 = wasm_i32x4_add(tmp0, tmp3);
  z2 = wasm_i32x4_add(tmp1, tmp2);
  z3 = wasm_i32x4_add(tmp0, tmp2);
  v128_t z4 = wasm_i32x4_add(tmp1, tmp3);
  const v128_t z5 = mulc(wasm_i32x4_add(z3, z4), 9633); /* FIX_1_175875602 */
  tmp0 = mulc(tmp0, 2446);                               /* FIX_0_298631336 */
  tmp1 = mulc(tmp1, 16819);                              /* FIX_2_053119869 */
  tmp2 = mulc(tmp2, 25172);                              /* FIX_3_072711026 */
  tmp3 = mulc(tmp3, 12299);                              /* FIX_1_501321110 */
  z1 = mulc(z1, -7373);                                  /* -FIX_0_899976223 */
  z2 = mulc(z2, -20995);                                 /* -FIX_2_562915447 */
  z3 = wasm_i32x4_add(mulc(z3, -16069), z5);             /* -FIX_1_961570560 */
  z4 = wasm_i32x4_add(mulc(z4, -3196), z5);              /* -FIX_0_390180644 */
  tmp0 = wasm_i32x4_add(tmp0, wasm_i32x4_add(z1, z3));
  tmp1 = wasm_i32x4_add(tmp1, wasm_i32x4_add(z2, z4));
  tmp2 = wasm_i32x4_add(tmp2, wasm_i32x4_add(z2, z3));
  tmp3 = wasm_i32x4_add(tmp3, wasm_i32x4_add(z1, z4));
  out[0] = descale(wasm_i32x4_add(tmp10, tmp3), shift);
  out[7] = descale(wasm_i32x4_sub(tmp10, tmp3), shift);
  out[1] = descale(wasm_i32x4_add(tmp11, tmp2), shift);
  out[6] = descale(wasm_i32x4_sub(tmp11, tmp2), shift);
  out[2] = descale(wasm_i32x4_add(tmp12, tmp1), shift);
  out[5] = descale(wasm_i32x4_sub(tmp12, tmp1), shift);
  out[3] = descale(wasm_i32x4_add(tmp13, tmp0), shift);
  out[4] = descale(wasm_i32x4_sub(tmp13, tmp0), shift);
}

/* Lanes where in[1..7] are all zero: jidctint.c takes a shortcut there (same result, except
 * where the full computation would overflow, so it is kept). */
static inline v128_t only_first(const v128_t in[8])
{
  v128_t any = in[1];
  for (int i = 2; i < 8; i++)
    any = wasm_v128_or(any, in[i]);
  return wasm_i32x4_eq(any, wasm_i32x4_splat(0));
}

/* a, b, c, d (rows) become the columns. */
static inline void transpose4(v128_t *a, v128_t *b, v128_t *c, v128_t *d)
{
  const v128_t t0 = wasm_i32x4_shuffle(*a, *b, 0, 4, 1, 5), t1 = wasm_i32x4_shuffle(*a, *b, 2, 6, 3, 7);
  const v128_t t2 = wasm_i32x4_shuffle(*c, *d, 0, 4, 1, 5), t3 = wasm_i32x4_shuffle(*c, *d, 2, 6, 3, 7);
  *a = wasm_i32x4_shuffle(t0, t2, 0, 1, 4, 5);
  *b = wasm_i32x4_shuffle(t0, t2, 2, 3, 6, 7);
  *c = wasm_i32x4_shuffle(t1, t3, 0, 1, 4, 5);
  *d = wasm_i32x4_shuffle(t1, t3, 2, 3, 6, 7);
}

/* libjpeg's output table for a descaled value x: range_limit[x & RANGE_MASK], i.e. x + 128
 * clamped to 0..255 once x is wrapped into -512..511 (jdmaster.c, prepare_range_limit_table). */
static inline v128_t to_sample(v128_t x)
{
  const v128_t wrapped =
      wasm_i32x4_sub(wasm_v128_and(wasm_i32x4_add(x, wasm_i32x4_splat(512)), wasm_i32x4_splat(1023)),
                     wasm_i32x4_splat(512));
  return wasm_i32x4_add(wrapped, wasm_i32x4_splat(CENTERJSAMPLE));
}

/* Four vectors of 32-bit lanes as 16 bytes, saturating (the clamp to 0..255). */
static inline v128_t narrow4(v128_t a, v128_t b, v128_t c, v128_t d)
{
  return wasm_u8x16_narrow_i16x8(wasm_i16x8_narrow_i32x4(a, b), wasm_i16x8_narrow_i32x4(c, d));
}

/* Byte 4 * col + r of `low` (columns 0-3) and `high` (4-7) is row r's sample of that column. */
#define ROW_BYTES(low, high, r) \
  wasm_i8x16_shuffle(low, high, r, 4 + r, 8 + r, 12 + r, 16 + r, 20 + r, 24 + r, 28 + r, r, r, r, r, r, r, r, r)

/* Writes `rows` rows (1..=4) of `columns` samples (4, 5, 8 or 10) from out[col], lane r = row
 * first_row + r, already offset to 0..255 but not yet clamped. */
static inline void put_rows(JSAMPARRAY output_buf, JDIMENSION output_col, int first_row, int rows, const v128_t *out,
                            int columns)
{
  const v128_t zero = wasm_i32x4_splat(0);
  const v128_t low = narrow4(out[0], out[1], out[2], out[3]);
  const v128_t high = columns == 4   ? zero
                      : columns == 5 ? narrow4(out[4], zero, zero, zero)
                                     : narrow4(out[4], out[5], out[6], out[7]);
  const v128_t tail = columns == 10 ? narrow4(out[8], out[9], zero, zero) : zero;
  const v128_t row[4] = {ROW_BYTES(low, high, 0), ROW_BYTES(low, high, 1), ROW_BYTES(low, high, 2),
                         ROW_BYTES(low, high, 3)};
  const v128_t row_tail[4] = {ROW_BYTES(tail, tail, 0), ROW_BYTES(tail, tail, 1), ROW_BYTES(tail, tail, 2),
                              ROW_BYTES(tail, tail, 3)};
  for (int r = 0; r < rows; r++) {
    JSAMPROW to = output_buf[first_row + r] + output_col;
    if (columns == 4) {
      wasm_v128_store32_lane(to, row[r], 0);
    } else if (columns == 5) {
      wasm_v128_store32_lane(to, row[r], 0);
      wasm_v128_store8_lane(to + 4, row[r], 4);
    } else {
      wasm_v128_store64_lane(to, row[r], 0);
      if (columns == 10)
        wasm_v128_store16_lane(to + 8, row_tail[r], 0);
    }
  }
}

/* 8 dequantized coefficients of row `row` as two vectors of four columns (jidctint.c's
 * DEQUANTIZE with int multipliers). */
static inline void dequantize_row(JCOEFPTR coef_block, const ISLOW_MULT_TYPE *quant, int row, v128_t out[2])
{
  const v128_t coefs = wasm_v128_load(coef_block + 8 * row);
  out[0] = wasm_i32x4_mul(wasm_i32x4_extend_low_i16x8(coefs), wasm_v128_load(quant + 8 * row));
  out[1] = wasm_i32x4_mul(wasm_i32x4_extend_high_i16x8(coefs), wasm_v128_load(quant + 8 * row + 4));
}

GLOBAL(void)
jsimd_idct_islow(j_decompress_ptr cinfo, jpeg_component_info *compptr, JCOEFPTR coef_block, JSAMPARRAY output_buf,
                 JDIMENSION output_col)
{
  const ISLOW_MULT_TYPE *quant = (const ISLOW_MULT_TYPE *)compptr->dct_table;
  /* ws[half][row]: pass 1's output, lanes = columns 4 * half .. 4 * half + 3. */
  v128_t ws[2][8];
  (void)cinfo;
  /* Pass 1: columns, four at a time. */
  for (int half = 0; half < 2; half++) {
    v128_t raw[8], in[8];
    for (int row = 0; row < 8; row++) {
      const v128_t coefs = wasm_v128_load(coef_block + 8 * row);
      raw[row] = half ? wasm_i32x4_extend_high_i16x8(coefs) : wasm_i32x4_extend_low_i16x8(coefs);
      in[row] = wasm_i32x4_mul(raw[row], wasm_v128_load(quant + 8 * row + 4 * half));
    }
    islow_1d(in, ws[half], ISLOW_CONST_BITS - ISLOW_PASS1_BITS);
    const v128_t dc_only = only_first(raw), dc = wasm_i32x4_shl(in[0], ISLOW_PASS1_BITS);
    for (int row = 0; row < 8; row++)
      ws[half][row] = wasm_v128_bitselect(dc, ws[half][row], dc_only);
  }
  /* Pass 2: rows, four at a time (the workspace transposed, lanes = rows). */
  for (int rows = 0; rows < 2; rows++) {
    v128_t in[8], out[8];
    for (int half = 0; half < 2; half++) {
      v128_t *block = &ws[half][4 * rows];
      transpose4(&block[0], &block[1], &block[2], &block[3]);
      for (int i = 0; i < 4; i++)
        in[4 * half + i] = block[i];
    }
    islow_1d(in, out, ISLOW_CONST_BITS + ISLOW_PASS1_BITS + 3);
    const v128_t dc_only = only_first(in), dc = descale(in[0], ISLOW_PASS1_BITS + 3);
    for (int col = 0; col < 8; col++)
      out[col] = to_sample(wasm_v128_bitselect(dc, out[col], dc_only));
    put_rows(output_buf, output_col, 4 * rows, 4, out, 8);
  }
}

/* jidctint.c's FIX() for CONST_BITS 13. */
#define FIX13(x) ((int32_t)((x) * 8192 + 0.5))

static inline v128_t add(v128_t a, v128_t b)
{
  return wasm_i32x4_add(a, b);
}

static inline v128_t sub(v128_t a, v128_t b)
{
  return wasm_i32x4_sub(a, b);
}

/* jpeg_idct_5x5's 1-D transform; `tmp12` is in[0] already scaled and rounded as the pass does. */
static inline void idct5(const v128_t in[5], v128_t out[5], v128_t tmp12, int shift)
{
  v128_t tmp0 = in[2], tmp1 = in[4];
  v128_t z1 = mulc(add(tmp0, tmp1), FIX13(0.790569415)); /* (c2+c4)/2 */
  v128_t z2 = mulc(sub(tmp0, tmp1), FIX13(0.353553391)); /* (c2-c4)/2 */
  v128_t z3 = add(tmp12, z2);
  const v128_t tmp10 = add(z3, z1), tmp11 = sub(z3, z1);
  tmp12 = sub(tmp12, wasm_i32x4_shl(z2, 2));
  z2 = in[1];
  z3 = in[3];
  z1 = mulc(add(z2, z3), FIX13(0.831253876));         /* c3 */
  tmp0 = add(z1, mulc(z2, FIX13(0.513743148)));       /* c1-c3 */
  tmp1 = sub(z1, mulc(z3, FIX13(2.176250899)));       /* c1+c3 */
  out[0] = wasm_i32x4_shr(add(tmp10, tmp0), shift);
  out[4] = wasm_i32x4_shr(sub(tmp10, tmp0), shift);
  out[1] = wasm_i32x4_shr(add(tmp11, tmp1), shift);
  out[3] = wasm_i32x4_shr(sub(tmp11, tmp1), shift);
  out[2] = wasm_i32x4_shr(tmp12, shift);
}

/* jpeg_idct_10x10's 1-D transform: 8 inputs, 10 outputs; its two passes differ in where they
 * round and shift (`first`: the column pass). */
static inline void idct10(const v128_t in[8], v128_t out[10], int first)
{
  const int shift = first ? ISLOW_CONST_BITS - ISLOW_PASS1_BITS : ISLOW_CONST_BITS + ISLOW_PASS1_BITS + 3;
  /* Even part. */
  v128_t z3 = first ? add(wasm_i32x4_shl(in[0], ISLOW_CONST_BITS),
                          wasm_i32x4_splat(1 << (ISLOW_CONST_BITS - ISLOW_PASS1_BITS - 1)))
                    : wasm_i32x4_shl(add(in[0], wasm_i32x4_splat(1 << (ISLOW_PASS1_BITS + 2))), ISLOW_CONST_BITS);
  v128_t z4 = in[4];
  v128_t z1 = mulc(z4, FIX13(1.144122806)); /* c4 */
  v128_t z2 = mulc(z4, FIX13(0.437016024)); /* c8 */
  v128_t tmp10 = add(z3, z1), tmp11 = sub(z3, z2);
  v128_t tmp22 = sub(z3, wasm_i32x4_shl(sub(z1, z2), 1)); /* c0 = (c4-c8)*2 */
  if (first)
    tmp22 = wasm_i32x4_shr(tmp22, shift);
  z2 = in[2];
  z3 = in[6];
  z1 = mulc(add(z2, z3), FIX13(0.831253876));              /* c6 */
  v128_t tmp12 = add(z1, mulc(z2, FIX13(0.513743148)));    /* c2-c6 */
  v128_t tmp13 = sub(z1, mulc(z3, FIX13(2.176250899)));    /* c2+c6 */
  const v128_t tmp20 = add(tmp10, tmp12), tmp24 = sub(tmp10, tmp12);
  const v128_t tmp21 = add(tmp11, tmp13), tmp23 = sub(tmp11, tmp13);
  /* Odd part. */
  z1 = in[1];
  z2 = in[3];
  z3 = in[5];
  z4 = in[7];
  const v128_t z5 = wasm_i32x4_shl(z3, ISLOW_CONST_BITS);
  tmp11 = add(z2, z4);
  tmp13 = sub(z2, z4);
  tmp12 = mulc(tmp13, FIX13(0.309016994));                 /* (c3-c7)/2 */
  z2 = mulc(tmp11, FIX13(0.951056516));                    /* (c3+c7)/2 */
  z4 = add(z5, tmp12);
  tmp10 = add(add(mulc(z1, FIX13(1.396802247)), z2), z4);  /* c1 */
  const v128_t tmp14 = add(sub(mulc(z1, FIX13(0.221231742)), z2), z4); /* c9 */
  z2 = mulc(tmp11, FIX13(0.587785252));                    /* (c1-c9)/2 */
  z4 = sub(sub(z5, tmp12), wasm_i32x4_shl(tmp13, ISLOW_CONST_BITS - 1));
  tmp12 = first ? wasm_i32x4_shl(sub(sub(z1, tmp13), z3), ISLOW_PASS1_BITS)
                : sub(wasm_i32x4_shl(sub(z1, tmp13), ISLOW_CONST_BITS), z5);
  tmp11 = sub(sub(mulc(z1, FIX13(1.260073511)), z2), z4);  /* c3 */
  tmp13 = add(sub(mulc(z1, FIX13(0.642039522)), z2), z4);  /* c7 */
  out[0] = wasm_i32x4_shr(add(tmp20, tmp10), shift);
  out[9] = wasm_i32x4_shr(sub(tmp20, tmp10), shift);
  out[1] = wasm_i32x4_shr(add(tmp21, tmp11), shift);
  out[8] = wasm_i32x4_shr(sub(tmp21, tmp11), shift);
  out[2] = first ? add(tmp22, tmp12) : wasm_i32x4_shr(add(tmp22, tmp12), shift);
  out[7] = first ? sub(tmp22, tmp12) : wasm_i32x4_shr(sub(tmp22, tmp12), shift);
  out[3] = wasm_i32x4_shr(add(tmp23, tmp13), shift);
  out[6] = wasm_i32x4_shr(sub(tmp23, tmp13), shift);
  out[4] = wasm_i32x4_shr(add(tmp24, tmp14), shift);
  out[5] = wasm_i32x4_shr(sub(tmp24, tmp14), shift);
}

/* Lanes of block[0..count) (rows, lanes = columns) transposed into in[] by column, rows past
 * `count` taken as zero. */
static inline void columns_of(v128_t ws[2][10], int first_row, int count, v128_t in[8])
{
  const v128_t zero = wasm_i32x4_splat(0);
  for (int half = 0; half < 2; half++) {
    v128_t a = ws[half][first_row], b = count > 1 ? ws[half][first_row + 1] : zero;
    v128_t c = count > 2 ? ws[half][first_row + 2] : zero, d = count > 3 ? ws[half][first_row + 3] : zero;
    transpose4(&a, &b, &c, &d);
    in[4 * half] = a;
    in[4 * half + 1] = b;
    in[4 * half + 2] = c;
    in[4 * half + 3] = d;
  }
}

GLOBAL(void) pixbox_idct_5x5(j_decompress_ptr cinfo, jpeg_component_info *compptr, JCOEFPTR coef_block,
                             JSAMPARRAY output_buf, JDIMENSION output_col);
GLOBAL(void) pixbox_idct_10x10(j_decompress_ptr cinfo, jpeg_component_info *compptr, JCOEFPTR coef_block,
                               JSAMPARRAY output_buf, JDIMENSION output_col);

/* jpeg_idct_5x5 (decoding at 5/8): the 5x5 top-left coefficients to 5x5 samples. */
GLOBAL(void)
pixbox_idct_5x5(j_decompress_ptr cinfo, jpeg_component_info *compptr, JCOEFPTR coef_block, JSAMPARRAY output_buf,
                JDIMENSION output_col)
{
  const ISLOW_MULT_TYPE *quant = (const ISLOW_MULT_TYPE *)compptr->dct_table;
  v128_t ws[2][10];
  (void)cinfo;
  /* Pass 1: columns 0-3, then 4 (with 5-7, unused). */
  v128_t rows[5][2];
  for (int row = 0; row < 5; row++)
    dequantize_row(coef_block, quant, row, rows[row]);
  for (int half = 0; half < 2; half++) {
    const v128_t in[5] = {rows[0][half], rows[1][half], rows[2][half], rows[3][half], rows[4][half]};
    const v128_t tmp12 = add(wasm_i32x4_shl(in[0], ISLOW_CONST_BITS),
                             wasm_i32x4_splat(1 << (ISLOW_CONST_BITS - ISLOW_PASS1_BITS - 1)));
    idct5(in, ws[half], tmp12, ISLOW_CONST_BITS - ISLOW_PASS1_BITS);
  }
  /* Pass 2: rows 0-3, then 4. */
  for (int first_row = 0; first_row < 5; first_row += 4) {
    const int count = first_row == 0 ? 4 : 1;
    v128_t in[8], out[5];
    columns_of(ws, first_row, count, in);
    const v128_t tmp12 =
        wasm_i32x4_shl(add(in[0], wasm_i32x4_splat(1 << (ISLOW_PASS1_BITS + 2))), ISLOW_CONST_BITS);
    idct5(in, out, tmp12, ISLOW_CONST_BITS + ISLOW_PASS1_BITS + 3);
    for (int col = 0; col < 5; col++)
      out[col] = to_sample(out[col]);
    put_rows(output_buf, output_col, first_row, count, out, 5);
  }
}

/* jpeg_idct_10x10 (chroma of 4:2:0 decoded at 5/8, scaled up in the transform): 8x8
 * coefficients to 10x10 samples. */
GLOBAL(void)
pixbox_idct_10x10(j_decompress_ptr cinfo, jpeg_component_info *compptr, JCOEFPTR coef_block, JSAMPARRAY output_buf,
                  JDIMENSION output_col)
{
  const ISLOW_MULT_TYPE *quant = (const ISLOW_MULT_TYPE *)compptr->dct_table;
  v128_t ws[2][10];
  (void)cinfo;
  v128_t rows[8][2];
  for (int row = 0; row < 8; row++)
    dequantize_row(coef_block, quant, row, rows[row]);
  for (int half = 0; half < 2; half++) {
    v128_t in[8];
    for (int row = 0; row < 8; row++)
      in[row] = rows[row][half];
    idct10(in, ws[half], 1);
  }
  for (int first_row = 0; first_row < 10; first_row += 4) {
    const int count = first_row == 8 ? 2 : 4;
    v128_t in[8], out[10];
    columns_of(ws, first_row, count, in);
    idct10(in, out, 0);
    for (int col = 0; col < 10; col++)
      out[col] = to_sample(out[col]);
    put_rows(output_buf, output_col, first_row, count, out, 10);
  }
}

GLOBAL(int) jsimd_can_idct_4x4(void);
GLOBAL(void) jsimd_idct_4x4(j_decompress_ptr cinfo, jpeg_component_info *compptr, JCOEFPTR coef_block,
                            JSAMPARRAY output_buf, JDIMENSION output_col);

GLOBAL(int)
jsimd_can_idct_4x4(void)
{
  return sizeof(ISLOW_MULT_TYPE) == 4;
}

/* jidctred.c's 4-point transform (from 8 inputs, the fifth unused); outputs descaled by `shift`
 * bits. */
static inline void idct4(const v128_t in[8], v128_t out[4], int shift)
{
  /* Even part. */
  v128_t tmp0 = wasm_i32x4_shl(in[0], ISLOW_CONST_BITS + 1);
  v128_t tmp2 = add(mulc(in[2], 15137), mulc(in[6], -6270)); /* FIX_1_847759065, -FIX_0_765366865 */
  const v128_t tmp10 = add(tmp0, tmp2), tmp12 = sub(tmp0, tmp2);
  /* Odd part. */
  const v128_t z1 = in[7], z2 = in[5], z3 = in[3], z4 = in[1];
  tmp0 = add(add(mulc(z1, -1730), mulc(z2, 11893)), add(mulc(z3, -17799), mulc(z4, 8697)));
  tmp2 = add(add(mulc(z1, -4176), mulc(z2, -4926)), add(mulc(z3, 7373), mulc(z4, 20995)));
  out[0] = descale(add(tmp10, tmp2), shift);
  out[3] = descale(sub(tmp10, tmp2), shift);
  out[1] = descale(add(tmp12, tmp0), shift);
  out[2] = descale(sub(tmp12, tmp0), shift);
}

/* Lanes where every input the 4-point transform reads but the first is zero (its shortcut). */
static inline v128_t only_first4(const v128_t in[8])
{
  const v128_t any = wasm_v128_or(wasm_v128_or(wasm_v128_or(in[1], in[2]), wasm_v128_or(in[3], in[5])),
                                  wasm_v128_or(in[6], in[7]));
  return wasm_i32x4_eq(any, wasm_i32x4_splat(0));
}

/* jpeg_idct_4x4 (decoding at 4/8): 8x8 coefficients to 4x4 samples. */
GLOBAL(void)
jsimd_idct_4x4(j_decompress_ptr cinfo, jpeg_component_info *compptr, JCOEFPTR coef_block, JSAMPARRAY output_buf,
               JDIMENSION output_col)
{
  const ISLOW_MULT_TYPE *quant = (const ISLOW_MULT_TYPE *)compptr->dct_table;
  v128_t ws[2][10];
  (void)cinfo;
  v128_t rows[8][2];
  for (int row = 0; row < 8; row++)
    dequantize_row(coef_block, quant, row, rows[row]);
  /* Pass 1: columns (jidctred.c skips column 4, which pass 2 never reads). */
  for (int half = 0; half < 2; half++) {
    v128_t in[8], raw[8];
    for (int row = 0; row < 8; row++) {
      const v128_t coefs = wasm_v128_load(coef_block + 8 * row);
      raw[row] = half ? wasm_i32x4_extend_high_i16x8(coefs) : wasm_i32x4_extend_low_i16x8(coefs);
      in[row] = rows[row][half];
    }
    idct4(in, ws[half], ISLOW_CONST_BITS - ISLOW_PASS1_BITS + 1);
    const v128_t dc_only = only_first4(raw), dc = wasm_i32x4_shl(in[0], ISLOW_PASS1_BITS);
    for (int row = 0; row < 4; row++)
      ws[half][row] = wasm_v128_bitselect(dc, ws[half][row], dc_only);
  }
  /* Pass 2: the four rows. */
  v128_t in[8], out[4];
  columns_of(ws, 0, 4, in);
  idct4(in, out, ISLOW_CONST_BITS + ISLOW_PASS1_BITS + 3 + 1);
  const v128_t dc_only = only_first4(in), dc = descale(in[0], ISLOW_PASS1_BITS + 3);
  for (int col = 0; col < 4; col++)
    out[col] = to_sample(wasm_v128_bitselect(dc, out[col], dc_only));
  put_rows(output_buf, output_col, 0, 4, out, 4);
}
#endif
