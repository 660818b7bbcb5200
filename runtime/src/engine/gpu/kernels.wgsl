// Outpost GPU engine kernels. One module, one entry point per kernel.
//
// Design: every kernel reads its parameters from a read-only storage array
// of u32 (floats travel as their bits), so a single explicit bind-group
// layout serves them all: binding 0 parameters, 1 the output, 2..4 the
// inputs (a placeholder buffer where a kernel has fewer). Element-wise
// kernels run 64 invocations per workgroup on a 2-D grid (x * y workgroups)
// so that tensors beyond 65535 * 64 elements still fit the dispatch limits.
// Every tensor is f32; quantized values (uint8/int8) are held as exact
// integer-valued floats.

@group(0) @binding(0) var<storage, read> p: array<u32>;
@group(0) @binding(1) var<storage, read_write> y: array<f32>;
@group(0) @binding(2) var<storage, read> a: array<f32>;
@group(0) @binding(3) var<storage, read> b: array<f32>;
@group(0) @binding(4) var<storage, read> c: array<f32>;

fn pf(i: u32) -> f32 {
    return bitcast<f32>(p[i]);
}

fn pi(i: u32) -> i32 {
    return bitcast<i32>(p[i]);
}

fn linear(wid: vec3<u32>, nwg: vec3<u32>, lid: u32) -> u32 {
    return (wid.y * nwg.x + wid.x) * 64u + lid;
}

// ---- unary and per-channel ------------------------------------------------
// p: [n, op, inner, channels, alpha, beta, lo, hi]
// b: per-channel scale (or multiplier), c: per-channel zero point (or offset).
@compute @workgroup_size(64)
fn unary(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
         @builtin(local_invocation_index) lid: u32) {
    let i = linear(wid, nwg, lid);
    if (i >= p[0]) {
        return;
    }
    let op = p[1];
    let ch = (i / p[2]) % p[3];
    let alpha = pf(4u);
    let beta = pf(5u);
    let x = a[i];
    var r = x;
    switch op {
        case 0u: { r = x; }
        case 1u: { r = max(x, 0.0); }
        case 2u: { r = min(max(x, pf(6u)), pf(7u)); }
        case 3u: { r = 1.0 / (1.0 + exp(-x)); }
        case 4u: { r = clamp(alpha * x + beta, 0.0, 1.0); }
        case 5u: { r = x * clamp(x / 6.0 + 0.5, 0.0, 1.0); }
        case 6u: { r = select(x, alpha * x, x < 0.0); }
        case 7u: { r = tanh(x); }
        case 8u: { r = exp(x); }
        case 9u: { r = x * b[ch] + c[ch]; }
        // DequantizeLinear: (x - zero_point) * scale (ONNX operators, DequantizeLinear).
        case 10u: { r = (x - c[ch]) * b[ch]; }
        // QuantizeLinear: saturate(round_half_even(x / scale) + zero_point).
        case 11u: { r = clamp(round(x / b[ch]) + c[ch], pf(6u), pf(7u)); }
        // Quantize then dequantize (an activation Q -> DQ pair, fused).
        case 12u: { r = (clamp(round(x / b[ch]) + c[ch], pf(6u), pf(7u)) - c[ch]) * b[ch]; }
        case 13u: { r = abs(x); }
        case 14u: { r = -x; }
        case 15u: { r = sqrt(x); }
        case 16u: { r = trunc(x); }
        case 17u: { r = floor(x); }
        case 18u: { r = ceil(x); }
        case 19u: { r = 1.0 / x; }
        case 20u: { r = log(x); }
        case 21u: { r = round(x); }
        case 22u: { r = select(x, alpha * (exp(x) - 1.0), x < 0.0); }
        case 23u: { r = log(1.0 + exp(x)); }
        case 24u: { r = sin(x); }
        case 25u: { r = cos(x); }
        // Cast float -> 8-bit integer: truncate, then wrap into the range
        // as the reference does for in-range values; saturating is not
        // specified for out-of-range values.
        case 26u: { r = clamp(trunc(x), pf(6u), pf(7u)); }
        default: { r = x; }
    }
    y[i] = r;
}

// ---- broadcast binary ------------------------------------------------------
// p: [n, op, rank, dims[6], a_strides[6], b_strides[6]]
@compute @workgroup_size(64)
fn binary(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
          @builtin(local_invocation_index) lid: u32) {
    let i = linear(wid, nwg, lid);
    if (i >= p[0]) {
        return;
    }
    var rem = i;
    var ia = 0u;
    var ib = 0u;
    for (var d = 0u; d < p[2]; d = d + 1u) {
        let k = p[2] - 1u - d;
        let dim = p[3u + k];
        let idx = rem % dim;
        rem = rem / dim;
        ia = ia + idx * p[9u + k];
        ib = ib + idx * p[15u + k];
    }
    let x = a[ia];
    let z = b[ib];
    var r = 0.0;
    switch p[1] {
        case 0u: { r = x + z; }
        case 1u: { r = x - z; }
        case 2u: { r = x * z; }
        case 3u: { r = x / z; }
        case 4u: { r = pow(x, z); }
        case 5u: { r = max(x, z); }
        case 6u: { r = min(x, z); }
        case 7u: { r = select(x, x * z, x < 0.0); }
        default: { r = x; }
    }
    y[i] = r;
}

// ---- strided copy (transpose, concat, slice, expand) -----------------------
// p: [n, rank, dims[6], src_strides[6] (i32), src_offset, dst_strides[6], dst_offset]
@compute @workgroup_size(64)
fn copy(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let i = linear(wid, nwg, lid);
    if (i >= p[0]) {
        return;
    }
    var rem = i;
    var src = pi(14u);
    var dst = p[21];
    for (var d = 0u; d < p[1]; d = d + 1u) {
        let k = p[1] - 1u - d;
        let dim = p[2u + k];
        let idx = rem % dim;
        rem = rem / dim;
        src = src + i32(idx) * pi(8u + k);
        dst = dst + idx * p[15u + k];
    }
    y[dst] = a[u32(src)];
}

// ---- matrix product (MatMul, Gemm) -----------------------------------------
// p: [M, N, K, batches, a_sb, a_sm, a_sk, b_sb, b_sk, b_sn, bias_sb, bias_sm, bias_sn,
//     has_bias, alpha, beta, act, lo, hi]
// y[bt, m, n] = act(alpha * sum_k a[bt, m, k] * b[bt, k, n] + beta * c[...]).
const TILE: u32 = 16u;
var<workgroup> ta: array<array<f32, 16>, 16>;
var<workgroup> tb: array<array<f32, 16>, 16>;

fn activate(v: f32, act: u32) -> f32 {
    switch act {
        case 1u: { return max(v, 0.0); }
        case 2u: { return min(max(v, pf(17u)), pf(18u)); }
        default: { return v; }
    }
}

@compute @workgroup_size(16, 16)
fn matmul(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let m_total = p[0];
    let n_total = p[1];
    let k_total = p[2];
    let bt = wid.z;
    let row = wid.y * TILE + lid.y;
    let col = wid.x * TILE + lid.x;
    var acc = 0.0;
    let tiles = (k_total + TILE - 1u) / TILE;
    for (var t = 0u; t < tiles; t = t + 1u) {
        let ka = t * TILE + lid.x;
        var va = 0.0;
        if (row < m_total && ka < k_total) {
            va = a[bt * p[4] + row * p[5] + ka * p[6]];
        }
        ta[lid.y][lid.x] = va;
        let kb = t * TILE + lid.y;
        var vb = 0.0;
        if (kb < k_total && col < n_total) {
            vb = b[bt * p[7] + kb * p[8] + col * p[9]];
        }
        tb[lid.y][lid.x] = vb;
        workgroupBarrier();
        for (var k = 0u; k < TILE; k = k + 1u) {
            acc = acc + ta[lid.y][k] * tb[k][lid.x];
        }
        workgroupBarrier();
    }
    if (row < m_total && col < n_total) {
        var v = pf(14u) * acc;
        if (p[13] == 1u) {
            v = v + pf(15u) * c[bt * p[10] + row * p[11] + col * p[12]];
        }
        y[bt * m_total * n_total + row * n_total + col] = activate(v, p[16]);
    }
}

// ---- convolution, NCHW (1-D as H = 1) ---------------------------------------
// p: [total, N, C, H, W, M, OH, OW, KH, KW, sh, sw, ph, pw, dh, dw, groups, has_bias, act, lo, hi]
// a: input, b: weights [M, C/groups, KH, KW], c: bias [M].
fn conv_act(v: f32, act: u32) -> f32 {
    switch act {
        case 1u: { return max(v, 0.0); }
        case 2u: { return min(max(v, pf(19u)), pf(20u)); }
        default: { return v; }
    }
}

@compute @workgroup_size(64)
fn conv(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let i = linear(wid, nwg, lid);
    if (i >= p[0]) {
        return;
    }
    let C = p[2]; let H = p[3]; let W = p[4]; let M = p[5];
    let OH = p[6]; let OW = p[7]; let KH = p[8]; let KW = p[9];
    let ox = i % OW;
    let oy = (i / OW) % OH;
    let m = (i / (OW * OH)) % M;
    let n = i / (OW * OH * M);
    let cg = C / p[16];
    let mg = M / p[16];
    let g = m / mg;
    var acc = 0.0;
    if (p[17] == 1u) {
        acc = c[m];
    }
    let iy0 = i32(oy * p[10]) - i32(p[12]);
    let ix0 = i32(ox * p[11]) - i32(p[13]);
    for (var cc = 0u; cc < cg; cc = cc + 1u) {
        let ci = g * cg + cc;
        let xbase = (n * C + ci) * H * W;
        let wbase = (m * cg + cc) * KH * KW;
        for (var ky = 0u; ky < KH; ky = ky + 1u) {
            let iy = iy0 + i32(ky * p[14]);
            if (iy < 0 || iy >= i32(H)) {
                continue;
            }
            for (var kx = 0u; kx < KW; kx = kx + 1u) {
                let ix = ix0 + i32(kx * p[15]);
                if (ix < 0 || ix >= i32(W)) {
                    continue;
                }
                acc = acc + a[xbase + u32(iy) * W + u32(ix)] * b[wbase + ky * KW + kx];
            }
        }
    }
    y[i] = conv_act(acc, p[18]);
}

// ---- transposed convolution, NCHW -----------------------------------------
// p as conv; a: input, b: weights [C, M/groups, KH, KW], c: bias [M].
@compute @workgroup_size(64)
fn conv_transpose(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                  @builtin(local_invocation_index) lid: u32) {
    let i = linear(wid, nwg, lid);
    if (i >= p[0]) {
        return;
    }
    let C = p[2]; let H = p[3]; let W = p[4]; let M = p[5];
    let OH = p[6]; let OW = p[7]; let KH = p[8]; let KW = p[9];
    let sh = i32(p[10]); let sw = i32(p[11]);
    let ox = i % OW;
    let oy = (i / OW) % OH;
    let m = (i / (OW * OH)) % M;
    let n = i / (OW * OH * M);
    let cg = C / p[16];
    let mg = M / p[16];
    let g = m / mg;
    let mm = m % mg;
    var acc = 0.0;
    if (p[17] == 1u) {
        acc = c[m];
    }
    for (var cc = 0u; cc < cg; cc = cc + 1u) {
        let ci = g * cg + cc;
        let xbase = (n * C + ci) * H * W;
        let wbase = (ci * mg + mm) * KH * KW;
        for (var ky = 0u; ky < KH; ky = ky + 1u) {
            let ty = i32(oy) + i32(p[12]) - i32(ky * p[14]);
            if (ty < 0 || ty % sh != 0 || ty / sh >= i32(H)) {
                continue;
            }
            for (var kx = 0u; kx < KW; kx = kx + 1u) {
                let tx = i32(ox) + i32(p[13]) - i32(kx * p[15]);
                if (tx < 0 || tx % sw != 0 || tx / sw >= i32(W)) {
                    continue;
                }
                acc = acc + a[xbase + u32(ty / sh) * W + u32(tx / sw)] * b[wbase + ky * KW + kx];
            }
        }
    }
    y[i] = conv_act(acc, p[18]);
}

// ---- pooling, NCHW ----------------------------------------------------------
// p: [total, H, W, OH, OW, KH, KW, sh, sw, ph, pw, dh, dw, kind]
// kind: 0 max, 1 average excluding padding, 2 average including padding.
@compute @workgroup_size(64)
fn pool(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let i = linear(wid, nwg, lid);
    if (i >= p[0]) {
        return;
    }
    let H = p[1]; let W = p[2]; let OH = p[3]; let OW = p[4];
    let ox = i % OW;
    let oy = (i / OW) % OH;
    let nc = i / (OW * OH);
    let kind = p[13];
    var acc = select(0.0, -3.4028235e38, kind == 0u);
    var count = 0u;
    var padded = 0u;
    let iy0 = i32(oy * p[7]) - i32(p[9]);
    let ix0 = i32(ox * p[8]) - i32(p[10]);
    for (var ky = 0u; ky < p[5]; ky = ky + 1u) {
        let iy = iy0 + i32(ky * p[11]);
        for (var kx = 0u; kx < p[6]; kx = kx + 1u) {
            let ix = ix0 + i32(kx * p[12]);
            if (iy < 0 || iy >= i32(H) || ix < 0 || ix >= i32(W)) {
                // Padding cells inside the padded input count for
                // count_include_pad; cells past it (ceil_mode) never do.
                if (iy < i32(H + p[9]) && ix < i32(W + p[10])) {
                    padded = padded + 1u;
                }
                continue;
            }
            let v = a[nc * H * W + u32(iy) * W + u32(ix)];
            if (kind == 0u) {
                acc = max(acc, v);
            } else {
                acc = acc + v;
            }
            count = count + 1u;
        }
    }
    if (kind == 1u) {
        acc = acc / f32(max(count, 1u));
    } else if (kind == 2u) {
        acc = acc / f32(max(count + padded, 1u));
    }
    y[i] = acc;
}

// ---- softmax and reductions over one (flattened) axis -----------------------
// p: [rows, D, inner, op]; row r = (outer, inner) pair.
// op: 0 softmax, 1 log-softmax, 2 sum, 3 mean, 4 max, 5 min, 6 prod, 7 sum of squares,
//     8 l2 norm, 9 l1 norm, 10 log-sum-exp.
@compute @workgroup_size(64)
fn reduce(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
          @builtin(local_invocation_index) lid: u32) {
    let r = linear(wid, nwg, lid);
    if (r >= p[0]) {
        return;
    }
    let D = p[1];
    let inner = p[2];
    let op = p[3];
    let base = (r / inner) * D * inner + r % inner;
    if (op <= 1u || op == 10u) {
        var mx = -3.4028235e38;
        for (var d = 0u; d < D; d = d + 1u) {
            mx = max(mx, a[base + d * inner]);
        }
        var s = 0.0;
        for (var d = 0u; d < D; d = d + 1u) {
            s = s + exp(a[base + d * inner] - mx);
        }
        if (op == 10u) {
            y[r] = mx + log(s);
            return;
        }
        for (var d = 0u; d < D; d = d + 1u) {
            let e = a[base + d * inner] - mx;
            if (op == 0u) {
                y[base + d * inner] = exp(e) / s;
            } else {
                y[base + d * inner] = e - log(s);
            }
        }
        return;
    }
    var acc = 0.0;
    if (op == 4u) { acc = -3.4028235e38; }
    if (op == 5u) { acc = 3.4028235e38; }
    if (op == 6u) { acc = 1.0; }
    for (var d = 0u; d < D; d = d + 1u) {
        let v = a[base + d * inner];
        switch op {
            case 4u: { acc = max(acc, v); }
            case 5u: { acc = min(acc, v); }
            case 6u: { acc = acc * v; }
            case 7u, 8u: { acc = acc + v * v; }
            case 9u: { acc = acc + abs(v); }
            default: { acc = acc + v; }
        }
    }
    if (op == 3u) { acc = acc / f32(D); }
    if (op == 8u) { acc = sqrt(acc); }
    y[r] = acc;
}

// ---- resize of the last two axes ------------------------------------------
// p: [total, H, W, OH, OW, mode, coord, nearest, scale_h, scale_w, len_h, len_w]
// len: the resized length as a float (input length * scale when scales are
// given, which align_corners divides by; Operators.md, Resize).
// mode: 0 nearest, 1 linear. coord: 0 half_pixel, 1 asymmetric, 2 align_corners,
// 3 pytorch_half_pixel, 4 tf_half_pixel_for_nn. nearest: 0 round_prefer_floor,
// 1 round_prefer_ceil, 2 floor, 3 ceil (ONNX operators, Resize).
fn src_coord(o: u32, in_len: u32, out_len: u32, scale: f32, len: f32) -> f32 {
    let x = f32(o);
    switch p[6] {
        case 1u: { return x / scale; }
        case 2u: {
            if (out_len <= 1u) { return 0.0; }
            return x * f32(in_len - 1u) / (len - 1.0);
        }
        case 3u: {
            if (out_len <= 1u) { return 0.0; }
            return (x + 0.5) / scale - 0.5;
        }
        case 4u: { return (x + 0.5) / scale; }
        default: { return (x + 0.5) / scale - 0.5; }
    }
}

fn nearest(x: f32, len: u32) -> u32 {
    var v = x;
    switch p[7] {
        case 1u: { v = floor(x + 0.5); }
        case 2u: { v = floor(x); }
        case 3u: { v = ceil(x); }
        default: { v = ceil(x - 0.5); }
    }
    return u32(clamp(v, 0.0, f32(len - 1u)));
}

@compute @workgroup_size(64)
fn resize(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
          @builtin(local_invocation_index) lid: u32) {
    let i = linear(wid, nwg, lid);
    if (i >= p[0]) {
        return;
    }
    let H = p[1]; let W = p[2]; let OH = p[3]; let OW = p[4];
    let ox = i % OW;
    let oy = (i / OW) % OH;
    let nc = i / (OW * OH);
    let base = nc * H * W;
    let fy = src_coord(oy, H, OH, pf(8u), pf(10u));
    let fx = src_coord(ox, W, OW, pf(9u), pf(11u));
    if (p[5] == 0u) {
        y[i] = a[base + nearest(fy, H) * W + nearest(fx, W)];
        return;
    }
    let cy = clamp(fy, 0.0, f32(H - 1u));
    let cx = clamp(fx, 0.0, f32(W - 1u));
    let y0 = u32(floor(cy));
    let x0 = u32(floor(cx));
    let y1 = min(y0 + 1u, H - 1u);
    let x1 = min(x0 + 1u, W - 1u);
    let wy = cy - f32(y0);
    let wx = cx - f32(x0);
    let top = a[base + y0 * W + x0] * (1.0 - wx) + a[base + y0 * W + x1] * wx;
    let bottom = a[base + y1 * W + x0] * (1.0 - wx) + a[base + y1 * W + x1] * wx;
    y[i] = top * (1.0 - wy) + bottom * wy;
}
