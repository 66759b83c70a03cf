/* Mamba's selective scan on CPU cores: the whole of ref.py fused, one row at a time.
 *
 * A row is one (batch, channel) pair. Its state h (n floats) stays in registers while the
 * row's L steps run, and the bias, softplus, D skip and z gate are applied on the way, so the
 * forward reads each input once, writes the output once, and no (b, d, L, n) tensor exists.
 * The loops over the n states carry `omp simd`: built with -fopenmp-simd -ffast-math, gcc
 * turns them, expf included (glibc's vector expf), into vector instructions. No OpenMP
 * runtime is linked: the caller splits the rows over its threads.
 *
 * Layouts, all fp32 and contiguous: u, delta, z, out and their gradients (b, d, L); A (d, n);
 * D, delta_bias (d,), NULL when absent; Bt, Ct and their gradients (b, L, n), time-major so
 * that a step's n values are adjacent; starts (b, d, n_chunks, n), the state before every
 * chunk of T steps, saved by the forward for the backward.
 *
 * The backward walks each row's chunks in reverse. It recomputes the chunk's decays and
 * states from the saved start into `scratch`, then runs the adjoint recurrence
 *     lambda_t = C_t g_t + exp(delta_{t+1} A) lambda_{t+1}     (g: gradient of sum_n C_t h_t)
 * and reads every gradient off h and lambda, as chunked.py's docstring derives them. dA, dB,
 * dC, dD and d(delta_bias) sum over rows, so each calling thread passes its own accumulators
 * and the caller adds them up: no atomics, and the sum's order does not depend on scheduling.
 */
#include <math.h>
#include <stddef.h>
#include <string.h>

/* torch's softplus: x itself above 20, where log(1 + e^x) rounds to x in fp32. */
static inline float softplus(float x) { return x > 20.0f ? x : log1pf(expf(x)); }
static inline float sigmoid(float x) { return 1.0f / (1.0f + expf(-x)); }

/* A row's step sizes, dt[t] = softplus(delta[t] + bias), in one vectorised pass: transcendental
 * functions one lane at a time inside the scan would cost more than the scan itself. */
static void step_sizes(float *dt, const float *delta_r, float bias, int use_softplus, long L) {
#pragma omp simd
    for (long t = 0; t < L; ++t) dt[t] = use_softplus ? softplus(delta_r[t] + bias) : delta_r[t] + bias;
}

static inline __attribute__((always_inline)) void forward_rows(const float *u, const float *delta, const float *A, const float *Bt, const float *Ct,
                  const float *D, const float *z, const float *bias, int use_softplus, float *out, float *starts,
                  float *scratch, long row_begin, long row_end, long d, long L, long n, long T) {
    const long n_chunks = (L + T - 1) / T;
    float h[n], *dt_r = scratch; /* scratch: L floats */
    for (long row = row_begin; row < row_end; ++row) {
        const long b = row / d, c = row % d;
        const float *u_r = u + row * L, *A_c = A + c * n;
        const float *B_b = Bt + b * L * n, *C_b = Ct + b * L * n;
        float *out_r = out + row * L, *start_r = starts + row * n_chunks * n;
        step_sizes(dt_r, delta + row * L, bias ? bias[c] : 0.0f, use_softplus, L);
        memset(h, 0, sizeof h);
        for (long t = 0; t < L; ++t) {
            if (t % T == 0) memcpy(start_r + (t / T) * n, h, sizeof h);
            const float dt = dt_r[t], dtu = dt * u_r[t];
            const float *B_t = B_b + t * n, *C_t = C_b + t * n;
            float y = 0.0f;
#pragma omp simd reduction(+ : y)
            for (long k = 0; k < n; ++k) {
                h[k] = expf(dt * A_c[k]) * h[k] + dtu * B_t[k];
                y += C_t[k] * h[k];
            }
            out_r[t] = y + (D ? D[c] * u_r[t] : 0.0f);
        }
        if (z) {
            const float *z_r = z + row * L;
#pragma omp simd
            for (long t = 0; t < L; ++t) out_r[t] *= z_r[t] * sigmoid(z_r[t]);
        }
    }
}

/* scratch holds (2 T + 1) n + 4 L floats: the chunk's decays a[T][n] and states hs[T + 1][n],
 * hs[0] the state before the chunk, then four per-step rows of the current (batch, channel). grad_A (d, n), grad_Bt and grad_Ct (b, L, n), grad_D and
 * grad_bias (d,) are this thread's accumulators, zeroed by the caller (the last two NULL when
 * D or delta_bias is absent); grad_u, grad_delta and grad_z (NULL without z) are written. */
static inline __attribute__((always_inline)) void backward_rows(const float *u, const float *delta, const float *A, const float *Bt, const float *Ct,
                   const float *D, const float *z, const float *bias, int use_softplus, const float *starts,
                   const float *grad_out, float *grad_u, float *grad_delta, float *grad_z, float *grad_A,
                   float *grad_Bt, float *grad_Ct, float *grad_D, float *grad_bias, float *scratch, long row_begin,
                   long row_end, long d, long L, long n, long T) {
    const long n_chunks = (L + T - 1) / T;
    float *a = scratch, *hs = scratch + T * n;
    float *dt_r = hs + (T + 1) * n, *dsoftplus = dt_r + L, *grad_y = dsoftplus + L, *grad_gate = grad_y + L;
    float carry[n], grad_A_c[n];
    for (long row = row_begin; row < row_end; ++row) {
        const long b = row / d, c = row % d;
        const float *u_r = u + row * L, *delta_r = delta + row * L, *A_c = A + c * n;
        const float *g_r = grad_out + row * L, *z_r = z ? z + row * L : NULL;
        const float bias_c = bias ? bias[c] : 0.0f;
        step_sizes(dt_r, delta_r, bias_c, use_softplus, L);
#pragma omp simd
        for (long t = 0; t < L; ++t) {
            dsoftplus[t] = use_softplus ? sigmoid(delta_r[t] + bias_c) : 1.0f;
            const float sig = z_r ? sigmoid(z_r[t]) : 1.0f;
            grad_y[t] = z_r ? g_r[t] * z_r[t] * sig : g_r[t];                  /* through the gate y * silu(z) */
            grad_gate[t] = z_r ? g_r[t] * sig * (1.0f + z_r[t] * (1.0f - sig)) : 0.0f; /* g silu'(z) */
        }
        const float *B_b = Bt + b * L * n, *C_b = Ct + b * L * n;
        float *gB_b = grad_Bt + b * L * n, *gC_b = grad_Ct + b * L * n;
        float grad_D_c = 0.0f, grad_bias_c = 0.0f;
        memset(carry, 0, sizeof carry); /* exp(delta_{t+1} A) lambda_{t+1}: nothing after the last step */
        memset(grad_A_c, 0, sizeof grad_A_c);
        for (long chunk = n_chunks - 1; chunk >= 0; --chunk) {
            const long s = chunk * T, k_len = L - s < T ? L - s : T;
            memcpy(hs, starts + (row * n_chunks + chunk) * n, n * sizeof(float));
            for (long t = 0; t < k_len; ++t) {
                const float dt = dt_r[s + t], dtu = dt * u_r[s + t];
                const float *B_t = B_b + (s + t) * n;
                float *a_t = a + t * n, *h_prev = hs + t * n, *h_t = hs + (t + 1) * n;
#pragma omp simd
                for (long k = 0; k < n; ++k) {
                    a_t[k] = expf(dt * A_c[k]);
                    h_t[k] = a_t[k] * h_prev[k] + dtu * B_t[k];
                }
            }
            for (long t = k_len - 1; t >= 0; --t) {
                const long i = row * L + s + t;
                const float dt = dt_r[s + t], u_t = u_r[s + t], dtu = dt * u_t, g = grad_y[s + t];
                const float *B_t = B_b + (s + t) * n, *C_t = C_b + (s + t) * n;
                const float *a_t = a + t * n, *h_prev = hs + t * n, *h_t = hs + (t + 1) * n;
                float *gB_t = gB_b + (s + t) * n, *gC_t = gC_b + (s + t) * n;
                float grad_dtu = 0.0f, grad_dA = 0.0f, y = 0.0f;
#pragma omp simd reduction(+ : grad_dtu, grad_dA, y)
                for (long k = 0; k < n; ++k) {
                    const float lam = g * C_t[k] + carry[k];
                    y += C_t[k] * h_t[k];
                    gC_t[k] += g * h_t[k];
                    gB_t[k] += dtu * lam;
                    grad_dtu += B_t[k] * lam;
                    carry[k] = lam * a_t[k];
                    const float q = carry[k] * h_prev[k]; /* dL/d(delta_t A) */
                    grad_dA += A_c[k] * q;
                    grad_A_c[k] += dt * q;
                }
                if (z) grad_z[i] = grad_gate[s + t] * (y + (D ? D[c] * u_t : 0.0f));
                if (D) grad_D_c += g * u_t;
                grad_u[i] = grad_dtu * dt + (D ? g * D[c] : 0.0f);
                const float grad_dt = (grad_dtu * u_t + grad_dA) * dsoftplus[s + t];
                grad_delta[i] = grad_dt;
                grad_bias_c += grad_dt;
            }
        }
        for (long k = 0; k < n; ++k) grad_A[c * n + k] += grad_A_c[k];
        if (D) grad_D[c] += grad_D_c;
        if (bias) grad_bias[c] += grad_bias_c;
    }
}

/* The entry points. d_state 16, Mamba's, gets its own copy of each loop with n known at
 * compile time, so that the state lives in vector registers rather than on the stack. */
void scan_forward(const float *u, const float *delta, const float *A, const float *Bt, const float *Ct,
                  const float *D, const float *z, const float *bias, int use_softplus, float *out, float *starts,
                  float *scratch, long row_begin, long row_end, long d, long L, long n, long T) {
    if (n == 16)
        forward_rows(u, delta, A, Bt, Ct, D, z, bias, use_softplus, out, starts, scratch, row_begin, row_end, d, L, 16, T);
    else
        forward_rows(u, delta, A, Bt, Ct, D, z, bias, use_softplus, out, starts, scratch, row_begin, row_end, d, L, n, T);
}

void scan_backward(const float *u, const float *delta, const float *A, const float *Bt, const float *Ct,
                   const float *D, const float *z, const float *bias, int use_softplus, const float *starts,
                   const float *grad_out, float *grad_u, float *grad_delta, float *grad_z, float *grad_A,
                   float *grad_Bt, float *grad_Ct, float *grad_D, float *grad_bias, float *scratch, long row_begin,
                   long row_end, long d, long L, long n, long T) {
    if (n == 16)
        backward_rows(u, delta, A, Bt, Ct, D, z, bias, use_softplus, starts, grad_out, grad_u, grad_delta, grad_z,
                      grad_A, grad_Bt, grad_Ct, grad_D, grad_bias, scratch, row_begin, row_end, d, L, 16, T);
    else
        backward_rows(u, delta, A, Bt, Ct, D, z, bias, use_softplus, starts, grad_out, grad_u, grad_delta, grad_z,
                      grad_A, grad_Bt, grad_Ct, grad_D, grad_bias, scratch, row_begin, row_end, d, L, n, T);
}
