//! CPU kernels for the steps of BLIP that cost the most after the matmuls: attention
//! (with its softmax) and GELU (the exact, erf form).
//!
//! candle's CPU versions call libm's `expf` and `erff` once per element. BLIP-large's
//! image encoder runs 128 M exponentials (24 layers × 16 heads × 577 × 577) and
//! 57 M GELUs per image; with one libm call each that was about a quarter of the
//! encoder's time. Here the exponential is a short polynomial written so the
//! compiler vectorises it, compiled three times (AVX-512, AVX2 + FMA, baseline) and
//! picked at run time, and the work runs on candle's own CPU pool (the threads its
//! quantised matmuls use), so the two never compete for the cores.
//!
//! Accuracy: the exponential is within 2 ulp of `f32::exp` over the range softmax
//! uses, and erf within 2e-7 absolute (Abramowitz and Stegun 7.1.26), well under the
//! noise of q4k or q8_0 weights. Other devices and dtypes use candle's own ops.

use candle_core::{CpuStorage, CustomOp1, CustomOp3, DType, Layout, Result, Shape, Tensor};

/// GELU, `x · (1 + erf(x / √2)) / 2`; the fast kernel for f32 on the CPU.
pub fn gelu_erf(xs: &Tensor) -> Result<Tensor> {
    if xs.device().is_cpu() && xs.dtype() == DType::F32 {
        xs.contiguous()?.apply_op1_no_bwd(&Gelu)
    } else {
        xs.gelu_erf()
    }
}

/// `softmax(q · kᵀ · scale) · v` over `(batch, heads, n, d)` queries and
/// `(batch, heads, m, d)` keys and values, returned with the heads joined:
/// `(batch, n, heads · d)`. The fused kernel for f32 on the CPU.
///
/// The inputs may be strided views (the heads of one `qkv` projection, say) as long as
/// each row of `d` values is contiguous, so splitting and joining heads copies
/// nothing. Fused, each head's scores are made, normalised and used in one worker's
/// cache and the heads run in parallel; unfused, candle would zero and fill a
/// `heads × n × m` tensor twice (21 MB a layer for BLIP-large's image encoder) on one
/// thread between parallel steps.
pub fn attention(q: &Tensor, k: &Tensor, v: &Tensor, scale: f64) -> Result<Tensor> {
    let cpu_f32 = |t: &Tensor| t.device().is_cpu() && t.dtype() == DType::F32;
    if cpu_f32(q) && cpu_f32(k) && cpu_f32(v) {
        let rows = |t: &Tensor| match t.stride().last() {
            Some(1) => Ok(t.clone()),
            _ => t.contiguous(),
        };
        rows(q)?.apply_op3_no_bwd(&rows(k)?, &rows(v)?, &Attention { scale })
    } else {
        let (q, k, v) = (q.contiguous()?, k.contiguous()?, v.contiguous()?);
        let scores = (q * scale)?.matmul(&k.t()?)?;
        let out = candle_nn::ops::softmax_last_dim(&scores)?.matmul(&v)?;
        let (b, h, n, d) = out.dims4()?;
        out.transpose(1, 2)?.reshape((b, n, h * d))
    }
}

struct Gelu;
struct Attention {
    scale: f64,
}

/// The contiguous f32 values of `storage` under `layout`.
fn f32_slice<'a>(storage: &'a CpuStorage, layout: &Layout, op: &str) -> Result<&'a [f32]> {
    let CpuStorage::F32(all) = storage else {
        candle_core::bail!("{op}: only f32 is handled here");
    };
    match layout.contiguous_offsets() {
        Some((from, to)) => Ok(&all[from..to]),
        None => candle_core::bail!("{op}: the input must be contiguous"),
    }
}

impl CustomOp1 for Gelu {
    fn name(&self) -> &'static str {
        "easel-gelu-erf"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let src = f32_slice(storage, layout, self.name())?;
        let mut dst = vec![0f32; src.len()];
        let kernel = pick::<fn(&[f32], &mut [f32])>(gelu_avx512, gelu_avx2, gelu_base);
        on_pieces(&mut dst, 16_384, |i, d| {
            kernel(&src[i * 16_384..][..d.len()], d)
        });
        Ok((CpuStorage::F32(dst), layout.shape().clone()))
    }
}

/// A `(batch, heads, rows, d)` f32 view whose rows are contiguous.
struct View<'a> {
    data: &'a [f32],
    dims: [usize; 4],
    start: usize,
    /// Strides of batch, head and row.
    stride: [usize; 3],
}

impl<'a> View<'a> {
    fn new(storage: &'a CpuStorage, layout: &Layout, op: &str) -> Result<View<'a>> {
        let CpuStorage::F32(data) = storage else {
            candle_core::bail!("{op}: only f32 is handled here");
        };
        let (b, h, r, d) = layout.shape().dims4()?;
        let st = layout.stride();
        // The last element any index reaches must be inside the buffer.
        let last = layout.start_offset()
            + (b.max(1) - 1) * st[0]
            + (h.max(1) - 1) * st[1]
            + (r.max(1) - 1) * st[2]
            + (d.max(1) - 1);
        if st[3] != 1 || last >= data.len() {
            candle_core::bail!("{op}: a row of {d} values must be contiguous");
        }
        Ok(View {
            data,
            dims: [b, h, r, d],
            start: layout.start_offset(),
            stride: [st[0], st[1], st[2]],
        })
    }

    /// Head `hi` of batch `bi`: from its first value to its last.
    fn head(&self, bi: usize, hi: usize) -> &'a [f32] {
        let [_, _, r, d] = self.dims;
        let from = self.start + bi * self.stride[0] + hi * self.stride[1];
        &self.data[from..from + (r - 1) * self.stride[2] + d]
    }
}

/// Queries per head up to which attention takes the direct path (dot products and
/// sums of rows) rather than two matmuls, whose packing of k and v would cost more
/// than the product: a decoding step has one query against 577 image keys.
const FEW_QUERIES: usize = 4;

/// One head's part of an attention, for the direct path: rows of `d` values, `qs`,
/// `ks` and `vs` apart.
struct Head<'a> {
    q: &'a [f32],
    qs: usize,
    k: &'a [f32],
    ks: usize,
    v: &'a [f32],
    vs: usize,
    d: usize,
    scale: f32,
}

/// Attention for the head's query row `i`, directly: `scores` is one row of m and
/// `out` the row's d answers.
#[inline(always)]
fn few_queries_body(head: &Head, i: usize, scores: &mut [f32], out: &mut [f32]) {
    let (d, scale) = (head.d, head.scale);
    let qi = &head.q[i * head.qs..][..d];
    for (j, s) in scores.iter_mut().enumerate() {
        let kj = &head.k[j * head.ks..][..d];
        let mut acc = [0f32; LANES];
        let mut pairs = qi.chunks_exact(LANES).zip(kj.chunks_exact(LANES));
        for (a, b) in &mut pairs {
            for ((acc, &x), &y) in acc.iter_mut().zip(a).zip(b) {
                *acc += x * y;
            }
        }
        let done = d - d % LANES;
        let tail: f32 = qi[done..].iter().zip(&kj[done..]).map(|(x, y)| x * y).sum();
        *s = (acc.iter().sum::<f32>() + tail) * scale;
    }
    softmax_rows_body(scores, scores.len());
    let out = &mut out[..d];
    out.fill(0.0);
    for (j, &p) in scores.iter().enumerate() {
        for (o, &x) in out.iter_mut().zip(&head.v[j * head.vs..][..d]) {
            *o += p * x;
        }
    }
}

impl CustomOp3 for Attention {
    fn name(&self) -> &'static str {
        "easel-attention"
    }

    fn cpu_fwd(
        &self,
        q: &CpuStorage,
        lq: &Layout,
        k: &CpuStorage,
        lk: &Layout,
        v: &CpuStorage,
        lv: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let name = self.name();
        let (q, k, v) = (
            View::new(q, lq, name)?,
            View::new(k, lk, name)?,
            View::new(v, lv, name)?,
        );
        let [b, h, n, d] = q.dims;
        let [kb, kh, m, kd] = k.dims;
        if (kb, kh, kd) != (b, h, d) || v.dims != k.dims || m == 0 || n == 0 || d == 0 {
            candle_core::bail!(
                "{name}: query {:?} does not fit keys {:?} and values {:?}",
                lq.shape(),
                lk.shape(),
                lv.shape()
            );
        }
        let scale = self.scale as f32;
        let softmax = pick::<fn(&mut [f32], usize)>(
            softmax_rows_avx512,
            softmax_rows_avx2,
            softmax_rows_base,
        );
        // (batch, n, heads, d): head `hi` of batch `bi` starts at bi·n·h·d + hi·d and
        // its rows are h·d apart.
        let mut out = vec![0f32; b * n * h * d];
        let dst = SharedMut(out.as_mut_ptr());
        let few = pick::<FewQueries>(few_queries_avx512, few_queries_avx2, few_queries_base);
        let row = h * d;
        // One task per head: its n × m scores live only in that worker's scratch.
        on_pool(b * h, |i| {
            let (bi, hi) = (i / h, i % h);
            let (qh, kh, vh) = (q.head(bi, hi), k.head(bi, hi), v.head(bi, hi));
            let at = bi * n * row + hi * d;
            SCORES.with_borrow_mut(|scores| {
                if n <= FEW_QUERIES {
                    scores.resize(m, 0.0);
                    let head = Head {
                        q: qh,
                        qs: q.stride[2],
                        k: kh,
                        ks: k.stride[2],
                        v: vh,
                        vs: v.stride[2],
                        d,
                        scale,
                    };
                    for qi in 0..n {
                        // SAFETY: row `qi` of this head is the d values at
                        // `at + qi·row`, inside `out`; no other head or row touches
                        // them, and `out` outlives the pool call.
                        let mine = unsafe {
                            std::slice::from_raw_parts_mut(dst.get().add(at + qi * row), d)
                        };
                        few(&head, qi, scores, mine);
                    }
                    return;
                }
                scores.resize(n * m, 0.0);
                // SAFETY: `View::head` bounds each head's slice, and the strides below
                // stay inside it; scores is n × m; the pool runs each head once and
                // heads write disjoint columns of `out`, which outlives the call.
                unsafe {
                    gemm::gemm(
                        n,
                        m,
                        d,
                        scores.as_mut_ptr(),
                        1,
                        m as isize,
                        false,
                        qh.as_ptr(),
                        1,
                        q.stride[2] as isize,
                        kh.as_ptr(),
                        k.stride[2] as isize,
                        1,
                        0.0,
                        scale,
                        false,
                        false,
                        false,
                        gemm::Parallelism::None,
                    );
                    softmax(scores, m);
                    gemm::gemm(
                        n,
                        d,
                        m,
                        dst.get().add(at),
                        1,
                        row as isize,
                        false,
                        scores.as_ptr(),
                        1,
                        m as isize,
                        vh.as_ptr(),
                        1,
                        v.stride[2] as isize,
                        0.0,
                        1.0,
                        false,
                        false,
                        false,
                        gemm::Parallelism::None,
                    );
                }
            });
        });
        Ok((CpuStorage::F32(out), Shape::from((b, n, h * d))))
    }
}

/// A buffer the pool's threads write disjoint parts of.
struct SharedMut(*mut f32);

// SAFETY: users write disjoint elements only, and the buffer outlives the pool call.
unsafe impl Sync for SharedMut {}

impl SharedMut {
    /// The pointer (a method, so closures capture the whole `Sync` wrapper).
    fn get(&self) -> *mut f32 {
        self.0
    }
}

/// Runs `f(i)` for every `i < n` on candle's CPU pool, the calling thread included.
fn on_pool(n: usize, f: impl Fn(usize) + Sync) {
    candle_core::utils::barrier_pool().execute_chunked(n, |items| items.for_each(&f));
}

/// Runs `f(i, piece)` for each `chunk`-long piece of `out` (the last may be shorter)
/// on candle's CPU pool.
fn on_pieces(out: &mut [f32], chunk: usize, f: impl Fn(usize, &mut [f32]) + Sync) {
    let (len, chunk) = (out.len(), chunk.max(1));
    let base = SharedMut(out.as_mut_ptr());
    on_pool(len.div_ceil(chunk), |i| {
        let start = i * chunk;
        let end = (start + chunk).min(len);
        // SAFETY: each index comes once, so the pieces are disjoint and inside `out`.
        let piece = unsafe { std::slice::from_raw_parts_mut(base.get().add(start), end - start) };
        f(i, piece);
    });
}

thread_local! {
    /// Each worker's attention scores, kept between heads and calls.
    static SCORES: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// The widest instruction set the kernels are compiled for that this CPU has.
#[derive(Clone, Copy, Debug, PartialEq, PartialOrd)]
enum Level {
    Base,
    Avx2,
    Avx512,
}

fn level() -> Level {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            return Level::Avx512;
        }
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            return Level::Avx2;
        }
    }
    Level::Base
}

/// The widest variant this CPU runs.
fn pick<K>(avx512: K, avx2: K, base: K) -> K {
    match level() {
        Level::Avx512 => avx512,
        Level::Avx2 => avx2,
        Level::Base => base,
    }
}

/// `e^x` for `x <= 0` (the only inputs it gets): `2^n · e^r` with `n` the nearest
/// integer to `x / ln 2` and `|r| <= ln 2 / 2`, `e^r` by its degree-6 Taylor series.
/// Inputs below -87.3 (where `e^x` leaves the normal range) give `e^-87.3`, not 0;
/// NaN stays NaN.
#[inline(always)]
fn exp_neg(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    // ln 2 split in two so `n · LN2_HI` is exact for |n| < 2^9.
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    // Adding 1.5 · 2^23 rounds to an integer (ties to even) and leaves it in the low
    // mantissa bits.
    const SHIFTER: f32 = 12_582_912.0;
    let x = x.clamp(-87.3, 0.0);
    let shifted = x * LOG2E + SHIFTER;
    let n = shifted - SHIFTER;
    let r = x - n * LN2_HI - n * LN2_LO;
    let p = 1.0
        + r * (1.0
            + r * (0.5
                + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0))))));
    // n is in [-126, 0]: the low bits of `shifted` hold it; 2^n by its exponent field.
    let ni = (shifted.to_bits() as i32).wrapping_sub(SHIFTER.to_bits() as i32);
    p * f32::from_bits(((ni + 127) as u32) << 23)
}

/// `erf(x)` (Abramowitz and Stegun 7.1.26, absolute error below 1.5e-7 in exact
/// arithmetic).
#[inline(always)]
fn erf(x: f32) -> f32 {
    let a = x.abs();
    let t = 1.0 / (1.0 + 0.327_591_1 * a);
    let poly = t
        * (0.254_829_6
            + t * (-0.284_496_74 + t * (1.421_413_8 + t * (-1.453_152 + t * 1.061_405_4))));
    let y = 1.0 - poly * exp_neg(-a * a);
    y.copysign(x)
}

#[inline(always)]
fn gelu_body(src: &[f32], dst: &mut [f32]) {
    for (d, &x) in dst.iter_mut().zip(src) {
        *d = 0.5 * x * (1.0 + erf(x * std::f32::consts::FRAC_1_SQRT_2));
    }
}

/// Lanes of the partial maxima and sums, so the reductions vectorise.
const LANES: usize = 16;

/// Softmax of each `row`-long row of `xs`, in place.
#[inline(always)]
fn softmax_rows_body(xs: &mut [f32], row: usize) {
    for r in xs.chunks_exact_mut(row) {
        let mut maxes = [f32::NEG_INFINITY; LANES];
        let mut chunks = r.chunks_exact(LANES);
        for c in &mut chunks {
            for (m, &x) in maxes.iter_mut().zip(c) {
                *m = m.max(x);
            }
        }
        let max = chunks
            .remainder()
            .iter()
            .chain(&maxes)
            .fold(f32::NEG_INFINITY, |m, &x| m.max(x));
        let mut sums = [0f32; LANES];
        let mut chunks = r.chunks_exact_mut(LANES);
        for c in &mut chunks {
            for (acc, x) in sums.iter_mut().zip(c.iter_mut()) {
                *x = exp_neg(*x - max);
                *acc += *x;
            }
        }
        let mut sum: f32 = sums.iter().sum();
        for x in chunks.into_remainder() {
            *x = exp_neg(*x - max);
            sum += *x;
        }
        let inv = 1.0 / sum;
        for x in r.iter_mut() {
            *x *= inv;
        }
    }
}

/// One body, compiled for a set of target features; `pick` checks them.
macro_rules! variant {
    ($name:ident, $body:ident, ($($arg:ident: $ty:ty),*), $features:literal) => {
        #[cfg(target_arch = "x86_64")]
        fn $name($($arg: $ty),*) {
            #[target_feature(enable = $features)]
            fn inner($($arg: $ty),*) {
                $body($($arg),*)
            }
            // SAFETY: `pick` hands this variant out only when the CPU has the features.
            unsafe { inner($($arg),*) }
        }
        #[cfg(not(target_arch = "x86_64"))]
        fn $name($($arg: $ty),*) {
            $body($($arg),*)
        }
    };
}

variant!(softmax_rows_avx512, softmax_rows_body, (xs: &mut [f32], row: usize), "avx512f");
variant!(softmax_rows_avx2, softmax_rows_body, (xs: &mut [f32], row: usize), "avx2,fma");
variant!(gelu_avx512, gelu_body, (src: &[f32], dst: &mut [f32]), "avx512f");
variant!(gelu_avx2, gelu_body, (src: &[f32], dst: &mut [f32]), "avx2,fma");

type FewQueries = fn(&Head, usize, &mut [f32], &mut [f32]);

variant!(
    few_queries_avx512,
    few_queries_body,
    (head: &Head, i: usize, scores: &mut [f32], out: &mut [f32]),
    "avx512f"
);
variant!(
    few_queries_avx2,
    few_queries_body,
    (head: &Head, i: usize, scores: &mut [f32], out: &mut [f32]),
    "avx2,fma"
);

fn few_queries_base(head: &Head, i: usize, scores: &mut [f32], out: &mut [f32]) {
    few_queries_body(head, i, scores, out)
}

fn softmax_rows_base(xs: &mut [f32], row: usize) {
    softmax_rows_body(xs, row)
}

fn gelu_base(src: &[f32], dst: &mut [f32]) {
    gelu_body(src, dst)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// Values from tiny to huge, both signs, from a fixed generator.
    fn values(n: usize, spread: f32) -> Vec<f32> {
        let mut state = 0x2545_f491_u32;
        (0..n)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 17;
                state ^= state << 5;
                (state as f32 / u32::MAX as f32 * 2.0 - 1.0) * spread
            })
            .collect()
    }

    fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        crate::local_model::max_abs(&(a - b).unwrap())
    }

    #[test]
    fn every_variant_matches_libm_within_a_few_ulp() {
        #[allow(clippy::type_complexity)]
        let variants: [(Level, fn(&mut [f32], usize), fn(&[f32], &mut [f32])); 3] = [
            (Level::Avx512, softmax_rows_avx512, gelu_avx512),
            (Level::Avx2, softmax_rows_avx2, gelu_avx2),
            (Level::Base, softmax_rows_base, gelu_base),
        ];
        let xs = values(40_000, 40.0);
        let mut tried = 0;
        for (name, softmax, gelu) in variants {
            if name > level() {
                continue;
            }
            tried += 1;
            // GELU against the definition with libm's erf, element by element.
            let mut got = vec![0f32; xs.len()];
            gelu(&xs, &mut got);
            for (&x, &g) in xs.iter().zip(&got) {
                let want = 0.5 * f64::from(x) * (1.0 + libm_erf(f64::from(x) / 2f64.sqrt()));
                let err = (f64::from(g) - want).abs();
                assert!(
                    err <= 4e-7 * f64::from(x.abs()).max(1.0),
                    "{name:?}: gelu({x}) = {g}, want {want}"
                );
            }
            // Softmax against a row done in f64; rows of 577 (BLIP's), 16 and 5.
            for row in [577usize, 16, 5] {
                let n = xs.len() / row * row;
                let mut got = xs[..n].to_vec();
                softmax(&mut got, row);
                for (s, g) in xs[..n].chunks(row).zip(got.chunks(row)) {
                    let max = s
                        .iter()
                        .fold(f64::NEG_INFINITY, |m, &x| m.max(f64::from(x)));
                    let sum: f64 = s.iter().map(|&x| (f64::from(x) - max).exp()).sum();
                    for (&x, &p) in s.iter().zip(g) {
                        let want = (f64::from(x) - max).exp() / sum;
                        let err = (f64::from(p) - want).abs();
                        // Rounding `x - max` to f32 alone moves e^(x - max) by up to
                        // |x - max| · 2^-24 of itself, in any f32 softmax.
                        let rounding = (f64::from(x) - max).abs() * 2f64.powi(-24);
                        assert!(
                            err <= (4e-7 + rounding) * want + 1e-30,
                            "{name:?}: softmax row {row}: {p}, want {want}"
                        );
                    }
                }
            }
        }
        assert!(tried >= 1);

        // The direct attention path of each variant against f64: 3 queries of 20
        // values (not a multiple of the lanes), rows farther apart than that.
        let few: [(Level, FewQueries); 3] = [
            (Level::Avx512, few_queries_avx512),
            (Level::Avx2, few_queries_avx2),
            (Level::Base, few_queries_base),
        ];
        let (n, m, d, stride) = (3, 37, 20, 24);
        let (q, k, v) = (
            values(n * stride, 2.0),
            values(m * stride + 1, 2.0),
            values(m * stride + 2, 2.0),
        );
        for (needs, kernel) in few {
            if needs > level() {
                continue;
            }
            let head = Head {
                q: &q,
                qs: stride,
                k: &k[1..],
                ks: stride,
                v: &v[2..],
                vs: stride,
                d,
                scale: 0.3,
            };
            let mut scores = vec![0f32; m];
            let mut out = vec![f32::NAN; n * 30];
            for i in 0..n {
                kernel(&head, i, &mut scores, &mut out[i * 30..(i + 1) * 30]);
            }
            for i in 0..n {
                let s: Vec<f64> = (0..m)
                    .map(|j| {
                        (0..d)
                            .map(|c| {
                                f64::from(q[i * stride + c]) * f64::from(k[1 + j * stride + c])
                            })
                            .sum::<f64>()
                            * 0.3
                    })
                    .collect();
                let max = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let sum: f64 = s.iter().map(|x| (x - max).exp()).sum();
                for c in 0..d {
                    let want: f64 = (0..m)
                        .map(|j| (s[j] - max).exp() / sum * f64::from(v[2 + j * stride + c]))
                        .sum();
                    let got = out[i * 30 + c];
                    assert!(
                        (f64::from(got) - want).abs() < 1e-5,
                        "{needs:?}: row {i} col {c}: {got}, want {want}"
                    );
                }
                // Only the row's d values are written.
                assert!(
                    out[i * 30 + d..(i + 1) * 30].iter().all(|x| x.is_nan()),
                    "{needs:?}"
                );
            }
        }
    }

    /// erf in f64 by its series and continued fraction, independent of the code above.
    fn libm_erf(x: f64) -> f64 {
        // erf(x) = 2/√π · Σ (-1)^n x^(2n+1) / (n! (2n+1)) for small |x|.
        let a = x.abs();
        let v = if a < 3.0 {
            let mut term = a;
            let mut sum = a;
            for n in 1..200 {
                term *= -a * a / n as f64;
                sum += term / (2 * n + 1) as f64;
            }
            sum * 2.0 / std::f64::consts::PI.sqrt()
        } else {
            // erfc(x) = e^-x² / √π · 1/(x + 1/2/(x + 1/(x + 3/2/(x + ...))))
            let mut f = a;
            for k in (1..60).rev() {
                f = a + (k as f64 / 2.0) / f;
            }
            1.0 - (-a * a).exp() / std::f64::consts::PI.sqrt() / f
        };
        v.copysign(x)
    }

    #[test]
    fn the_tensor_ops_match_candles_and_keep_odd_values() {
        let dev = Device::Cpu;
        let xs = Tensor::from_vec(values(3 * 4 * 577, 30.0), (3, 4, 577), &dev).unwrap();
        let ours = gelu_erf(&xs).unwrap();
        let theirs = xs.gelu_erf().unwrap();
        assert!(max_diff(&ours, &theirs) < 1e-5);

        // A transposed (strided) input is made contiguous first.
        let t = xs.transpose(1, 2).unwrap();
        assert!(max_diff(&gelu_erf(&t).unwrap(), &t.gelu_erf().unwrap()) < 1e-5);

        // Fused attention against candle's three steps, with keys longer than the
        // queries (cross-attention), a single query (a decoding step), the heads of one
        // packed qkv projection (strided views, one with an offset), a query with
        // strided rows and one whose rows are not contiguous.
        let reference = |q: &Tensor, k: &Tensor, v: &Tensor, scale: f64| {
            let (q, k, v) = (q.contiguous()?, k.contiguous()?, v.contiguous()?);
            let scores = (q * scale)?.matmul(&k.t()?)?;
            let out = candle_nn::ops::softmax_last_dim(&scores)?.matmul(&v)?;
            let (b, h, n, d) = out.dims4()?;
            out.transpose(1, 2)?.reshape((b, n, h * d))
        };
        let qkv = |b, h, n, d, seed: usize| {
            let mut v = values(b * h * n * d + seed, 3.0);
            v.drain(..seed);
            Tensor::from_vec(v, (b, h, n, d), &dev).unwrap()
        };
        let check = |q: &Tensor, k: &Tensor, v: &Tensor, what: &str| {
            let ours = attention(q, k, v, 0.25).unwrap();
            let theirs = reference(q, k, v, 0.25).unwrap();
            assert_eq!(ours.dims(), theirs.dims(), "{what}");
            assert!(max_diff(&ours, &theirs) < 1e-5, "{what}");
        };
        for (n, m) in [(577, 577), (5, 577), (4, 577), (1, 9), (1, 1)] {
            let (q, k, v) = (
                qkv(2, 3, n, 16, 1),
                qkv(2, 3, m, 16, 2),
                qkv(2, 3, m, 16, 3),
            );
            check(&q, &k, &v, &format!("{n}×{m}"));
        }
        let packed = Tensor::from_vec(values(2 * 7 * 3 * 4 * 8, 3.0), (2, 7, 3, 4, 8), &dev)
            .unwrap()
            .permute((2, 0, 3, 1, 4))
            .unwrap();
        let part = |i| packed.narrow(0, i, 1).unwrap().squeeze(0).unwrap();
        let (q, k, v) = (part(0), part(1), part(2));
        assert!(!q.is_contiguous() && v.layout().start_offset() > 0);
        assert_eq!(attention(&q, &k, &v, 0.25).unwrap().dims(), &[2, 7, 32]);
        check(&q, &k, &v, "packed qkv");
        let q2 = q.narrow(2, 0, 2).unwrap();
        check(&q2, &k, &v, "two packed queries");
        let q = qkv(1, 8, 2, 4, 4).transpose(1, 2).unwrap();
        let (k, v) = (qkv(1, 2, 8, 4, 5), qkv(1, 2, 8, 4, 6));
        check(&q, &k, &v, "strided rows");
        let k = qkv(1, 2, 4, 8, 5).transpose(2, 3).unwrap();
        check(&q, &k, &v, "columns apart");
        let wrong = attention(
            &qkv(1, 2, 3, 4, 0),
            &qkv(1, 2, 3, 5, 0),
            &qkv(1, 2, 3, 5, 0),
            1.0,
        );
        assert!(wrong.unwrap_err().to_string().contains("does not fit"));

        // -inf scores (a causal mask) weigh nothing; NaN stays NaN; ±0 and huge GELU inputs.
        let mut p = [0f32, f32::NEG_INFINITY, 1.0, f32::NEG_INFINITY];
        pick::<fn(&mut [f32], usize)>(softmax_rows_avx512, softmax_rows_avx2, softmax_rows_base)(
            &mut p, 4,
        );
        assert!(p[1] < 1e-37 && p[3] < 1e-37, "{p:?}");
        assert!((p[0] + p[2] - 1.0).abs() < 1e-6, "{p:?}");
        let odd = Tensor::new(&[0f32, -0.0, 1e30, -1e30, f32::NAN, 1e-30], &dev).unwrap();
        let g = gelu_erf(&odd).unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(&g[..4], &[0.0, 0.0, 1e30, 0.0]);
        assert!(g[4].is_nan());
        assert!((g[5] - 5e-31).abs() < 1e-36, "{}", g[5]);
    }
}
