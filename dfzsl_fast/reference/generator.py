"""Reference kernel of `dfzsl_fast::tfvaegan_synthesize`: the TF-VAEGAN synthesis forward in
eager PyTorch, in the weights' dtype (float64 capable), with the Philox noise of
`reference.philox`.

Per row i (class_ids[i], row_ids[i]), with z = synth_normals(seed, c, r, Z) and the hoisted
condition cond[cond_index[i]] = W_a a_c + b_1 (G's first layer on the class embedding):

    h   = LReLU(W_z z + cond)                          G's hidden layer
    y1  = W_out h + b_out;  x1 = y1 / |y1|             G's first pass
    d   = LReLU(W_dec x1 + b_dec)                      decoder hidden layer
    f   = LReLU(W_fb2 LReLU(W_fb1 d + b_fb1) + b_fb2)  feedback
    out = normalize(W_out (h + a1 f) + b_out)          G's second pass

(feedback=False: out = x1.) This is `TFVAEGAN.generate(z, a, a1)` computed once per row with
G's first layer split into its z and a halves (method.md 2.5; the reference
`generate_syn_feature`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .philox import synth_normals

__all__ = ["tfvaegan_synthesize", "SLOPE", "EPS", "CHUNK"]

SLOPE = 0.2  # LeakyReLU slope of every TF-VAEGAN network
EPS = 1e-12  # F.normalize's eps
CHUNK = 4096  # rows per pass: bounds the reference's memory


def _lrelu(t: torch.Tensor) -> torch.Tensor:
    return F.leaky_relu(t, SLOPE)


def tfvaegan_synthesize(cond, cond_index, class_ids, row_ids, w_z, w_out, b_out, w_dec, b_dec,
                        w_fb1, b_fb1, w_fb2, b_fb2, seed, a1, feedback, out_dtype):
    """See the module docstring. Shapes: cond (K, H); cond_index, class_ids, row_ids (N,) int64;
    w_z (H, Z); w_out (D, H); b_out (D,); w_dec (H, D); b_dec (H,); w_fb1, w_fb2 (H, H);
    b_fb1, b_fb2 (H,). GEMM operands in w_z's dtype (the bf16 mode rounds the activations to
    bf16 before each GEMM), everything else in cond's dtype. Returns (N, D) in `out_dtype`."""
    N, D, Z = class_ids.shape[0], w_out.shape[0], w_z.shape[1]
    cd, ed = w_z.dtype, cond.dtype

    def lin(x, w, b):
        return (x.to(cd) @ w.T).to(ed) + b

    out = torch.empty(N, D, dtype=out_dtype, device=w_z.device)
    for s in range(0, N, CHUNK):
        c, r = class_ids[s : s + CHUNK], row_ids[s : s + CHUNK]
        z = synth_normals(seed, c, r, Z, ed)
        h = _lrelu((z.to(cd) @ w_z.T).to(ed) + cond[cond_index[s : s + CHUNK]])
        y = lin(h, w_out, b_out)
        if feedback:
            d = _lrelu(lin(F.normalize(y, dim=1, eps=EPS), w_dec, b_dec))
            f = _lrelu(lin(_lrelu(lin(d, w_fb1, b_fb1)), w_fb2, b_fb2))
            y = lin(h + a1 * f, w_out, b_out)
        out[s : s + CHUNK] = F.normalize(y, dim=1, eps=EPS).to(out_dtype)
    return out
