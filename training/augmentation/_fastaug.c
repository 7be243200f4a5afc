/* Fused CPU kernels for training/augment.py (ViewAugment version 2), one image at a time so that
 * every pass runs in the core's L1/L2 cache, images spread over threads with OpenMP.
 *
 * Built at first use by training/fastaug.py with the system C compiler (cc -O3 -march=native
 * -fopenmp) and loaded with ctypes; when no compiler is available the eager torch path runs instead.
 * Semantics are those of the eager functions in training/augment.py (torchvision's), to float
 * rounding; tests/test_augment.py compares the two paths and torchvision image by image.
 */
#include <stdint.h>
#include <stdlib.h>
#include <math.h>

#define LUMA_R 0.2989f
#define LUMA_G 0.587f
#define LUMA_B 0.114f

static inline float clamp01(float v) { return v < 0.0f ? 0.0f : (v > 1.0f ? 1.0f : v); }

/* Bilinear resize of the box (top, left, bh, bw) of a uint8 image [C, H, W] to [C, oh, ow] floats in
 * [0, 1], mirrored when flip: torchvision's resized_crop for a box enlarged along both axes
 * (source coordinate (i + 0.5) * box / out - 0.5, clamped to the box; antialiasing is a no-op). */
static void crop_up_u8(const uint8_t *src, int C, int H, int W, int top, int left, int bh, int bw, int flip,
                       float *dst, int oh, int ow, int *x0, int *x1, float *fx, float *row) {
    const float sx = (float)bw / (float)ow, sy = (float)bh / (float)oh;
    for (int j = 0; j < ow; j++) {
        float s = ((float)j + 0.5f) * sx - 0.5f;
        if (s < 0.0f) s = 0.0f;
        if (s > (float)(bw - 1)) s = (float)(bw - 1);
        int i0 = (int)s;
        int i1 = i0 + 1 < bw ? i0 + 1 : bw - 1;
        int jj = flip ? ow - 1 - j : j;
        x0[jj] = i0;
        x1[jj] = i1;
        fx[jj] = s - (float)i0;
    }
    for (int i = 0; i < oh; i++) {
        float s = ((float)i + 0.5f) * sy - 0.5f;
        if (s < 0.0f) s = 0.0f;
        if (s > (float)(bh - 1)) s = (float)(bh - 1);
        int i0 = (int)s;
        int i1 = i0 + 1 < bh ? i0 + 1 : bh - 1;
        const float fy = s - (float)i0;
        for (int c = 0; c < C; c++) {
            /* vertical pass over the box's columns (contiguous, vectorised), then the horizontal taps */
            const uint8_t *r0 = src + ((int64_t)c * H + top + i0) * W + left;
            const uint8_t *r1 = src + ((int64_t)c * H + top + i1) * W + left;
#pragma omp simd
            for (int k = 0; k < bw; k++) {
                float a = (float)r0[k];
                row[k] = (a + ((float)r1[k] - a) * fy) * (1.0f / 255.0f);
            }
            float *out = dst + ((int64_t)c * oh + i) * ow;
#pragma omp simd
            for (int j = 0; j < ow; j++) {
                float a = row[x0[j]];
                out[j] = a + (row[x1[j]] - a) * fx[j];
            }
        }
    }
}

/* Mean of the grayscale image (contrast's blend target); float partial sums over blocks, double total. */
static float gray_mean(const float *x, int C, int64_t P) {
    double acc = 0.0;
    const int64_t BLK = 1024;
    if (C == 3) {
        const float *r = x, *g = x + P, *b = x + 2 * P;
        for (int64_t s = 0; s < P; s += BLK) {
            int64_t e = s + BLK < P ? s + BLK : P;
            float part = 0.0f;
#pragma omp simd reduction(+ : part)
            for (int64_t p = s; p < e; p++) part += LUMA_R * r[p] + LUMA_G * g[p] + LUMA_B * b[p];
            acc += (double)part;
        }
    } else {
        for (int64_t s = 0; s < (int64_t)C * P; s += BLK) {
            int64_t e = s + BLK < (int64_t)C * P ? s + BLK : (int64_t)C * P;
            float part = 0.0f;
#pragma omp simd reduction(+ : part)
            for (int64_t p = s; p < e; p++) part += x[p];
            acc += (double)part;
        }
        acc /= (double)C;
    }
    return (float)(acc / (double)P);
}

/* The hexcone channel for hue h6 (wrapped to about [0, 6]) and centre c: clamp(||h6 - c| - 3| - 1, 0, 1). */
static inline float hex(float h6, float c) {
    float d = fabsf(fabsf(h6 - c) - 3.0f) - 1.0f;
    return d < 0.0f ? 0.0f : (d > 1.0f ? 1.0f : d);
}

static void hue_shift(float *restrict r, float *restrict g, float *restrict b, int n, float shift) {
    const float s6 = shift * 6.0f;
    for (int p = 0; p < n; p++) {
        float rv = r[p], gv = g[p], bv = b[p];
        float mx = rv > gv ? rv : gv;
        float top = mx > bv ? mx : bv;
        float mn = rv < gv ? rv : gv;
        float bot = mn < bv ? mn : bv;
        float chroma = top - bot;
        float inv = 1.0f / (chroma > 1e-30f ? chroma : 1e-30f);
        /* the channel that is the max, r before g before b (torchvision) */
        int is_r = top == rv, is_g = top == gv;
        float num = is_r ? gv - bv : (is_g ? bv - rv : rv - gv);
        float off = is_r ? 0.0f : (is_g ? 2.0f : 4.0f);
        float h6 = num * inv + off + s6;
        h6 = h6 < 0.0f ? h6 + 6.0f : (h6 >= 6.0f ? h6 - 6.0f : h6);   /* h6 was in [-4, 8) */
        r[p] = top - hex(h6, 3.0f) * chroma;
        g[p] = top - hex(h6, 5.0f) * chroma;
        b[p] = top - hex(h6, 1.0f) * chroma;
    }
}

/* One image [C, P] in place: the colour-jitter ops in the given order (op codes 0 brightness,
 * 1 contrast, 2 saturation, 3 hue, -1 skip; fac = the op's factor / shift), then grayscale. */
static void jitter_one(float *x, int C, int64_t P, const int32_t *ops, const float *fac, int nops, int gray) {
    for (int k = 0; k < nops; k++) {
        int op = ops[k];
        float f = fac[k];
        if (op == 0) {
            for (int64_t p = 0; p < (int64_t)C * P; p++) x[p] = clamp01(x[p] * f);
        } else if (op == 1) {
            float m = gray_mean(x, C, P) * (1.0f - f);
            for (int64_t p = 0; p < (int64_t)C * P; p++) x[p] = clamp01(f * x[p] + m);
        } else if (op == 2 && C == 3) {
            float *r = x, *g = x + P, *b = x + 2 * P;
            const float w = 1.0f - f;
            for (int64_t p = 0; p < P; p++) {
                float l = (LUMA_R * r[p] + LUMA_G * g[p] + LUMA_B * b[p]) * w;
                r[p] = clamp01(f * r[p] + l);
                g[p] = clamp01(f * g[p] + l);
                b[p] = clamp01(f * b[p] + l);
            }
        } else if (op == 3 && C == 3) {
            hue_shift(x, x + P, x + 2 * P, (int)P, f);
        }
    }
    if (gray && C == 3) {
        float *r = x, *g = x + P, *b = x + 2 * P;
        for (int64_t p = 0; p < P; p++) {
            float l = LUMA_R * r[p] + LUMA_G * g[p] + LUMA_B * b[p];
            r[p] = l;
            g[p] = l;
            b[p] = l;
        }
    }
}

/* torch's "reflect" padding index (pad < n): -1 -> 1, n -> n - 2. */
static inline int reflect(int i, int n) { return i < 0 ? -i : (i >= n ? 2 * n - 2 - i : i); }

/* Separable Gaussian blur of one plane [h, w] in place with reflect padding (torchvision's
 * gaussian_blur): horizontal taps kx[kxn] into tmp, vertical taps ky[kyn] back into x. */
static void blur_plane(float *x, int h, int w, const float *kx, int kxn, const float *ky, int kyn, float *tmp) {
    const int rx = kxn / 2, ry = kyn / 2;
    for (int i = 0; i < h; i++) {
        const float *in = x + (int64_t)i * w;
        float *o = tmp + (int64_t)i * w;
        for (int j = 0; j < w; j++) o[j] = 0.0f;
        for (int t = 0; t < kxn; t++) {
            const float k = kx[t];
            const int sh = t - rx;
            int lo = -sh > 0 ? -sh : 0, hi = w - sh < w ? w - sh : w;   /* j + sh inside [0, w) */
            for (int j = 0; j < lo; j++) o[j] += k * in[reflect(j + sh, w)];
#pragma omp simd
            for (int j = lo; j < hi; j++) o[j] += k * in[j + sh];
            for (int j = hi; j < w; j++) o[j] += k * in[reflect(j + sh, w)];
        }
    }
    for (int i = 0; i < h; i++) {
        float *o = x + (int64_t)i * w;
        for (int j = 0; j < w; j++) o[j] = 0.0f;
        for (int t = 0; t < kyn; t++) {
            const float k = ky[t];
            const float *in = tmp + (int64_t)reflect(i + t - ry, h) * w;
#pragma omp simd
            for (int j = 0; j < w; j++) o[j] += k * in[j];
        }
    }
}

/* The whole view for one image, written in place at d ([C, oh, ow]): colour jitter + grayscale,
 * blur, solarize, then (x - mean) / std as x * scale + bias. */
static void finish_one(float *d, int C, int oh, int ow, const int32_t *ops, const float *fac, int nops, int gray,
                       int blur, const float *kx, int kxn, const float *ky, int kyn, int solar, float thr,
                       const float *scale, const float *bias, float *tmp) {
    const int64_t P = (int64_t)oh * ow;
    jitter_one(d, C, P, ops, fac, nops, gray);
    if (blur)
        for (int c = 0; c < C; c++) blur_plane(d + c * P, oh, ow, kx, kxn, ky, kyn, tmp);
    for (int c = 0; c < C; c++) {
        float *x = d + c * P;
        const float sc = scale[c], bi = bias[c];
        if (solar) {
#pragma omp simd
            for (int64_t p = 0; p < P; p++) {
                float v = x[p] >= thr ? 1.0f - x[p] : x[p];
                x[p] = v * sc + bi;
            }
        } else {
#pragma omp simd
            for (int64_t p = 0; p < P; p++) x[p] = x[p] * sc + bi;
        }
    }
}

/* Batch entry point. src: uint8 [n, C, H, W] to crop (boxes [n, 4] = top, left, h, w, all enlarged,
 * bilinear; flip [n]) into dst [n, C, oh, ow], or NULL when dst already holds the cropped float
 * images. ops / fac: [n, nops]; gray, blur, solar: [n]; kx: [n, kxn]; ky: [n, kyn]; scale, bias: [C]. */
void sslzoo_view(const uint8_t *src, int n, int C, int H, int W, const int32_t *boxes, const int32_t *flip,
                 float *dst, int oh, int ow, const int32_t *ops, const float *fac, int nops, const int32_t *gray,
                 const int32_t *blur, const float *kx, int kxn, const float *ky, int kyn, const int32_t *solar,
                 float thr, const float *scale, const float *bias, int threads) {
#pragma omp parallel num_threads(threads)
    {
        int *x0 = (int *)malloc(sizeof(int) * 2 * (size_t)ow);
        float *fx = (float *)malloc(sizeof(float) * ((size_t)ow + (size_t)W + (size_t)oh * ow));
        int *x1 = x0 + ow;
        float *row = fx + ow, *tmp = row + W;
#pragma omp for schedule(dynamic, 1)
        for (int i = 0; i < n; i++) {
            float *d = dst + (int64_t)i * C * oh * ow;
            if (src) {
                const int32_t *bx = boxes + 4 * (int64_t)i;
                crop_up_u8(src + (int64_t)i * C * H * W, C, H, W, bx[0], bx[1], bx[2], bx[3], flip[i], d, oh, ow,
                           x0, x1, fx, row);
            }
            finish_one(d, C, oh, ow, ops + (int64_t)i * nops, fac + (int64_t)i * nops, nops, gray[i], blur[i],
                       kx + (int64_t)i * kxn, kxn, ky + (int64_t)i * kyn, kyn, solar[i], thr, scale, bias, tmp);
        }
        free(x0);
        free(fx);
    }
}
