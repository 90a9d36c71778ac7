// The CUDA engine's kernels, compiled by NVRTC when a GPU model is first made (no toolkit needed
// at build time). Each mirrors a function of src/gpt/ops.rs; matrix products go to cuBLAS instead.
// Layouts are the CPU engine's: row-major (B, T, C) activations, nanoGPT's (out, in) weights.
// Pointers named `b`/`bias` may be null (models without biases).

typedef unsigned int u32;
typedef unsigned long long u64;

#define WARP 32
#define FLT_MIN_POS 1.17549435e-38f

__device__ __forceinline__ float warp_sum(float v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

__device__ __forceinline__ float warp_max(float v) {
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

// ---- dropout: the same counter-based mask as rng.rs `dropout_keep` ----

__device__ __forceinline__ u64 mix64(u64 z) {
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

__device__ __forceinline__ float dropout_scale(u64 seed, u64 site, u64 index, float p) {
    u64 h = mix64(seed ^ mix64((site * 0x9E3779B97F4A7C15ull) ^ (index * 0xD6E8FEB86659FD93ull)));
    float u = (float)(h >> 40) * (1.0f / 16777216.0f);
    return u >= p ? 1.0f / (1.0f - p) : 0.0f;
}

// x[i] *= mask(i) in place, or out[i] = in[i] * mask(i).
extern "C" __global__ void dropout_apply(float* out, const float* in, u64 n, float p, u64 seed, u64 site) {
    for (u64 i = blockIdx.x * (u64)blockDim.x + threadIdx.x; i < n; i += (u64)gridDim.x * blockDim.x)
        out[i] = in[i] * dropout_scale(seed, site, i, p);
}

// ---- embeddings ----

extern "C" __global__ void encoder_forward(float* out, const u32* tokens, const float* wte, const float* wpe,
                                           u64 bt, int t_len, int c) {
    for (u64 i = blockIdx.x * (u64)blockDim.x + threadIdx.x; i < bt * c; i += (u64)gridDim.x * blockDim.x) {
        u64 row = i / c;
        int j = i % c;
        int t = row % t_len;
        out[i] = wte[(u64)tokens[row] * c + j] + wpe[(u64)t * c + j];
    }
}

// Scatter-add: wte rows repeat across tokens, so this uses atomics (GPU results are not bit-stable).
extern "C" __global__ void encoder_backward(float* dwte, float* dwpe, const float* dout, const u32* tokens,
                                            u64 bt, int t_len, int c) {
    for (u64 i = blockIdx.x * (u64)blockDim.x + threadIdx.x; i < bt * c; i += (u64)gridDim.x * blockDim.x) {
        u64 row = i / c;
        int j = i % c;
        int t = row % t_len;
        float d = dout[i];
        atomicAdd(&dwte[(u64)tokens[row] * c + j], d);
        atomicAdd(&dwpe[(u64)t * c + j], d);
    }
}

// ---- layer norm: one warp per row ----

extern "C" __global__ void layernorm_forward(float* out, float* mean, float* rstd, const float* inp,
                                             const float* w, const float* b, u64 n, int c) {
    u64 row = blockIdx.x * (u64)(blockDim.x / WARP) + threadIdx.x / WARP;
    int lane = threadIdx.x % WARP;
    if (row >= n) return;
    const float* x = inp + row * c;
    float s = 0.0f;
    for (int j = lane; j < c; j += WARP) s += x[j];
    float mu = warp_sum(s) / c;
    float v = 0.0f;
    for (int j = lane; j < c; j += WARP) { float d = x[j] - mu; v += d * d; }
    float rs = 1.0f / sqrtf(warp_sum(v) / c + 1e-5f);
    float* o = out + row * c;
    for (int j = lane; j < c; j += WARP) o[j] = (x[j] - mu) * rs * w[j] + (b ? b[j] : 0.0f);
    if (lane == 0) { mean[row] = mu; rstd[row] = rs; }
}

// dinp += the input gradient (one warp per row). The weight and bias gradients are column sums,
// done by `layernorm_param_partials`.
extern "C" __global__ void layernorm_backward_input(float* dinp, const float* dout, const float* inp,
                                                    const float* mean, const float* rstd, const float* w,
                                                    u64 n, int c) {
    u64 row = blockIdx.x * (u64)(blockDim.x / WARP) + threadIdx.x / WARP;
    int lane = threadIdx.x % WARP;
    if (row >= n) return;
    const float* x = inp + row * c;
    const float* d = dout + row * c;
    float mu = mean[row], rs = rstd[row];
    float dm = 0.0f, dnm = 0.0f;
    for (int j = lane; j < c; j += WARP) {
        float dnorm = w[j] * d[j];
        dm += dnorm;
        dnm += dnorm * (x[j] - mu) * rs;
    }
    dm = warp_sum(dm) / c;
    dnm = warp_sum(dnm) / c;
    float* di = dinp + row * c;
    for (int j = lane; j < c; j += WARP) {
        float norm = (x[j] - mu) * rs;
        di[j] += (w[j] * d[j] - dm - norm * dnm) * rs;
    }
}

// Column sums over blocks of `rows` rows: partial[blk][j] = sum of norm*dout, and (with a bias)
// partial[blk][c + j] = sum of dout. `sum_partials` adds the blocks in order (deterministic).
extern "C" __global__ void layernorm_param_partials(float* partial, const float* dout, const float* inp,
                                                    const float* mean, const float* rstd, u64 n, int c,
                                                    int rows, int with_bias) {
    int width = with_bias ? 2 * c : c;
    u64 blk = blockIdx.y;
    for (int j = blockIdx.x * blockDim.x + threadIdx.x; j < c; j += gridDim.x * blockDim.x) {
        float sw = 0.0f, sb = 0.0f;
        u64 end = min((blk + 1) * (u64)rows, n);
        for (u64 i = blk * rows; i < end; i++) {
            float d = dout[i * c + j];
            sw += (inp[i * c + j] - mean[i]) * rstd[i] * d;
            sb += d;
        }
        partial[blk * width + j] = sw;
        if (with_bias) partial[blk * width + c + j] = sb;
    }
}

// partial[blk][j] = sum over the block's rows of x[i][j] (bias gradients).
extern "C" __global__ void column_partials(float* partial, const float* x, u64 n, int width, int rows) {
    u64 blk = blockIdx.y;
    for (int j = blockIdx.x * blockDim.x + threadIdx.x; j < width; j += gridDim.x * blockDim.x) {
        float s = 0.0f;
        u64 end = min((blk + 1) * (u64)rows, n);
        for (u64 i = blk * rows; i < end; i++) s += x[i * width + j];
        partial[blk * width + j] = s;
    }
}

// dst[j] += sum over blocks of partial[blk][j] (dst0 takes columns [0, split), dst1 the rest).
extern "C" __global__ void sum_partials(float* dst0, float* dst1, const float* partial, int blocks, int width,
                                        int split) {
    for (int j = blockIdx.x * blockDim.x + threadIdx.x; j < width; j += gridDim.x * blockDim.x) {
        float s = 0.0f;
        for (int b = 0; b < blocks; b++) s += partial[(u64)b * width + j];
        if (j < split) dst0[j] += s; else dst1[j - split] += s;
    }
}

// ---- element-wise ----

extern "C" __global__ void broadcast_rows(float* out, const float* row, u64 n, int width) {
    for (u64 i = blockIdx.x * (u64)blockDim.x + threadIdx.x; i < n * width; i += (u64)gridDim.x * blockDim.x)
        out[i] = row[i % width];
}

extern "C" __global__ void add(float* out, const float* a, const float* b, u64 n) {
    for (u64 i = blockIdx.x * (u64)blockDim.x + threadIdx.x; i < n; i += (u64)gridDim.x * blockDim.x)
        out[i] = a[i] + b[i];
}

extern "C" __global__ void scale(float* x, u64 n, float s) {
    for (u64 i = blockIdx.x * (u64)blockDim.x + threadIdx.x; i < n; i += (u64)gridDim.x * blockDim.x)
        x[i] *= s;
}

#define SQRT_2_OVER_PI 0.7978846f
#define INV_SQRT_2PI 0.3989423f
#define FRAC_1_SQRT_2 0.70710678f

extern "C" __global__ void gelu_forward(float* out, const float* inp, u64 n, int tanh_form) {
    for (u64 i = blockIdx.x * (u64)blockDim.x + threadIdx.x; i < n; i += (u64)gridDim.x * blockDim.x) {
        float x = inp[i];
        if (tanh_form) {
            float cube = 0.044715f * x * x * x;
            out[i] = 0.5f * x * (1.0f + tanhf(SQRT_2_OVER_PI * (x + cube)));
        } else {
            out[i] = 0.5f * x * (1.0f + erff(x * FRAC_1_SQRT_2));
        }
    }
}

extern "C" __global__ void gelu_backward(float* dinp, const float* inp, const float* dout, u64 n, int tanh_form) {
    for (u64 i = blockIdx.x * (u64)blockDim.x + threadIdx.x; i < n; i += (u64)gridDim.x * blockDim.x) {
        float x = inp[i];
        float local;
        if (tanh_form) {
            float cube = 0.044715f * x * x * x;
            float th = tanhf(SQRT_2_OVER_PI * (x + cube));
            float sech2 = 1.0f - th * th;
            local = 0.5f * (1.0f + th) + x * 0.5f * sech2 * SQRT_2_OVER_PI * (1.0f + 3.0f * 0.044715f * x * x);
        } else {
            float cdf = 0.5f * (1.0f + erff(x * FRAC_1_SQRT_2));
            float pdf = INV_SQRT_2PI * expf(-0.5f * x * x);
            local = cdf + x * pdf;
        }
        dinp[i] = local * dout[i];
    }
}

// ---- attention: (B, T, 3C) qkv <-> per-head (B, NH, T, HS) q, k, v; products in cuBLAS ----

// Element i of a per-head (B, NH, T, HS) tensor: its offset in a row-major (B, T, width) tensor
// whose head h holds columns [h * hs, (h + 1) * hs).
__device__ __forceinline__ u64 row_offset(u64 i, int t, int nh, int hs, int width) {
    int d = i % hs;
    int ti = (i / hs) % t;
    int h = (i / ((u64)hs * t)) % nh;
    u64 bi = i / ((u64)hs * t * nh);
    return (bi * t + ti) * width + h * hs + d;
}

extern "C" __global__ void split_heads(float* q, float* k, float* v, const float* qkv, int b, int t, int nh, int hs) {
    int c = nh * hs;
    for (u64 i = blockIdx.x * (u64)blockDim.x + threadIdx.x; i < (u64)b * c * t; i += (u64)gridDim.x * blockDim.x) {
        u64 src = row_offset(i, t, nh, hs, 3 * c);
        q[i] = qkv[src];
        k[i] = qkv[src + c];
        v[i] = qkv[src + 2 * c];
    }
}

// The gradient of split_heads.
extern "C" __global__ void merge_heads_grad(float* dqkv, const float* dq, const float* dk, const float* dv,
                                            int b, int t, int nh, int hs) {
    int c = nh * hs;
    for (u64 i = blockIdx.x * (u64)blockDim.x + threadIdx.x; i < (u64)b * c * t; i += (u64)gridDim.x * blockDim.x) {
        u64 dst = row_offset(i, t, nh, hs, 3 * c);
        dqkv[dst] = dq[i];
        dqkv[dst + c] = dk[i];
        dqkv[dst + 2 * c] = dv[i];
    }
}

// (B, NH, T, HS) -> (B, T, C): the heads side by side again.
extern "C" __global__ void merge_heads(float* out, const float* y, int b, int t, int nh, int hs) {
    int c = nh * hs;
    for (u64 i = blockIdx.x * (u64)blockDim.x + threadIdx.x; i < (u64)b * c * t; i += (u64)gridDim.x * blockDim.x)
        out[row_offset(i, t, nh, hs, c)] = y[i];
}

// The gradient of merge_heads: (B, T, C) -> (B, NH, T, HS).
extern "C" __global__ void merge_heads_backward(float* dy, const float* dout, int b, int t, int nh, int hs) {
    int c = nh * hs;
    for (u64 i = blockIdx.x * (u64)blockDim.x + threadIdx.x; i < (u64)b * c * t; i += (u64)gridDim.x * blockDim.x)
        dy[i] = dout[row_offset(i, t, nh, hs, c)];
}

// Row r of `rows` (T, T) matrices: scale, causal mask, softmax; in place. One warp per row.
extern "C" __global__ void causal_softmax(float* att, u64 rows, int t, float scale) {
    u64 r = blockIdx.x * (u64)(blockDim.x / WARP) + threadIdx.x / WARP;
    int lane = threadIdx.x % WARP;
    if (r >= rows) return;
    int i = r % t;
    float* a = att + r * t;
    float m = -__int_as_float(0x7f800000);
    for (int j = lane; j <= i; j += WARP) m = fmaxf(m, a[j] * scale);
    m = warp_max(m);
    float s = 0.0f;
    for (int j = lane; j <= i; j += WARP) { float e = expf(a[j] * scale - m); a[j] = e; s += e; }
    float inv = 1.0f / warp_sum(s);
    for (int j = lane; j < t; j += WARP) a[j] = j <= i ? a[j] * inv : 0.0f;
}

// In place on datt: the pre-softmax gradient, scale included.
extern "C" __global__ void causal_softmax_backward(float* datt, const float* att, u64 rows, int t, float scale) {
    u64 r = blockIdx.x * (u64)(blockDim.x / WARP) + threadIdx.x / WARP;
    int lane = threadIdx.x % WARP;
    if (r >= rows) return;
    int i = r % t;
    const float* a = att + r * t;
    float* d = datt + r * t;
    float dot = 0.0f;
    for (int j = lane; j <= i; j += WARP) dot += a[j] * d[j];
    dot = warp_sum(dot);
    for (int j = lane; j < t; j += WARP) d[j] = j <= i ? a[j] * (d[j] - dot) * scale : 0.0f;
}

// ---- cross-entropy: one block per row ----

__device__ float block_reduce(float v, bool is_max, float* shared) {
    int lane = threadIdx.x % WARP, w = threadIdx.x / WARP, nw = blockDim.x / WARP;
    v = is_max ? warp_max(v) : warp_sum(v);
    if (lane == 0) shared[w] = v;
    __syncthreads();
    if (w == 0) {
        float x = lane < nw ? shared[lane] : (is_max ? -__int_as_float(0x7f800000) : 0.0f);
        x = is_max ? warp_max(x) : warp_sum(x);
        if (lane == 0) shared[0] = x;
    }
    __syncthreads();
    float r = shared[0];
    __syncthreads();
    return r;
}

// Logits -> probabilities in place; losses[row] = -log p[target] (when targets is not null).
extern "C" __global__ void softmax_crossentropy(float* probs, float* losses, const u32* targets, int v) {
    __shared__ float shared[32];
    u64 row = blockIdx.x;
    float* p = probs + row * v;
    float m = -__int_as_float(0x7f800000);
    for (int j = threadIdx.x; j < v; j += blockDim.x) m = fmaxf(m, p[j]);
    m = block_reduce(m, true, shared);
    float s = 0.0f;
    for (int j = threadIdx.x; j < v; j += blockDim.x) { float e = expf(p[j] - m); p[j] = e; s += e; }
    float inv = 1.0f / block_reduce(s, false, shared);
    for (int j = threadIdx.x; j < v; j += blockDim.x) p[j] *= inv;
    __syncthreads();
    if (targets && threadIdx.x == 0) losses[row] = -logf(fmaxf(p[targets[row]], FLT_MIN_POS));
}

// probs -> dlogits in place: (p - onehot(target)) * dloss.
extern "C" __global__ void crossentropy_backward(float* probs, const u32* targets, u64 n, int v, float dloss) {
    for (u64 i = blockIdx.x * (u64)blockDim.x + threadIdx.x; i < n * v; i += (u64)gridDim.x * blockDim.x) {
        u64 row = i / v;
        int j = i % v;
        float x = probs[i];
        if (j == (int)targets[row]) x -= 1.0f;
        probs[i] = x * dloss;
    }
}

// ---- bf16 operands for cuBLAS (dtype: bf16) ----

// Round to nearest even, as PyTorch's autocast does; NaN stays NaN.
extern "C" __global__ void to_bf16(unsigned short* out, const float* in, u64 n) {
    for (u64 i = blockIdx.x * (u64)blockDim.x + threadIdx.x; i < n; i += (u64)gridDim.x * blockDim.x) {
        u32 b = __float_as_uint(in[i]);
        if ((b & 0x7fffffffu) > 0x7f800000u) {
            out[i] = 0x7fc0;
        } else {
            b += 0x7fffu + ((b >> 16) & 1u);
            out[i] = (unsigned short)(b >> 16);
        }
    }
}

// ---- optimiser ----

// Sum of squares of each block's slice, in double; the host adds the blocks in order.
extern "C" __global__ void sumsq_partials(double* partial, const float* g, u64 n, u64 per_block) {
    __shared__ double shared[32];
    u64 start = blockIdx.x * per_block;
    u64 end = min(start + per_block, n);
    double s = 0.0;
    for (u64 i = start + threadIdx.x; i < end; i += blockDim.x) s += (double)g[i] * (double)g[i];
    for (int o = 16; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
    int lane = threadIdx.x % WARP, w = threadIdx.x / WARP;
    if (lane == 0) shared[w] = s;
    __syncthreads();
    if (threadIdx.x == 0) {
        double t = 0.0;
        for (int k = 0; k < blockDim.x / WARP; k++) t += shared[k];
        partial[blockIdx.x] = t;
    }
}

// torch.optim.AdamW's arithmetic, as optim.rs.
extern "C" __global__ void adamw(float* p, const float* g, float* m, float* v, u64 n, float decay, float b1,
                                 float b2, float bc2_sqrt, float step_size, float eps) {
    for (u64 i = blockIdx.x * (u64)blockDim.x + threadIdx.x; i < n; i += (u64)gridDim.x * blockDim.x) {
        float gi = g[i];
        float pi = p[i] * decay;
        float mi = b1 * m[i] + (1.0f - b1) * gi;
        float vi = b2 * v[i] + (1.0f - b2) * gi * gi;
        float denom = sqrtf(vi) / bc2_sqrt + eps;
        p[i] = pi - step_size * mi / denom;
        m[i] = mi;
        v[i] = vi;
    }
}

// Gathers row (t - 1) of each of b (T, V) logit blocks into (b, V): the next-token logits.
extern "C" __global__ void last_rows(float* out, const float* logits, int b, int t, int v) {
    for (u64 i = blockIdx.x * (u64)blockDim.x + threadIdx.x; i < (u64)b * v; i += (u64)gridDim.x * blockDim.x) {
        u64 bi = i / v;
        int j = i % v;
        out[i] = logits[(bi * t + t - 1) * v + j];
    }
}
