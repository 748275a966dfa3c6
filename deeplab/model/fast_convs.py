"""Fewer-multiplication versions of the dense decoder's 3x3 convs, for fp32 on the CPU, in training and in
inference: the first conv done at the ASPP output's resolution (`upsample_concat_conv3x3`, for either
`align_corners` of the upsampling), the second (when the decoder has one, as by default) by Winograd F(6x6, 3x3)
(`winograd_conv3x3`).

The decoder's two dense 3x3 convs at stride 4 hold most of the dense model's FLOPs (and of its training step's
time). A CPU without bf16 (AVX2, AVX-512F) runs them near its fp32 peak already, so the only way to make them
faster in fp32 is to do less arithmetic:

- Winograd's minimal filtering (Lavin & Gray, "Fast Algorithms for Convolutional Neural Networks", 2016) computes
  each 6x6 output tile from an 8x8 input tile with 64 multiplications per channel pair instead of 324. Here it is
  matrix products (input transform, 64 batched channel GEMMs, output transform), so the heavy work stays in the
  BLAS, done in blocks of tile rows that stay in cache. Its backward pass is Winograd too: the input gradient is the
  transposed transforms around the same GEMMs, the weight gradient is accumulated in the transformed domain.
- The first conv reads the bilinearly upsampled ASPP output. Resizing is linear and acts on each channel alone, so
  each of the nine taps' channel mix runs at the ASPP map's resolution and the resize-and-shift is two small matrix
  products: about a quarter of the multiplications. Plain differentiable torch ops.

Both equal the direct convs up to fp32 rounding (about 1e-5 relative, gradients included; tested). They run where
`applicable` says so: fp32 on the CPU, outside autocast (bf16/fp16 are too coarse for the transforms and have fast
native kernels where they pay), on maps at least MIN_SIDE pixels a side, and not while tracing or compiling (the
blocked loops would be baked into a graph). Elsewhere the decoder runs its plain convs.
"""

from functools import lru_cache

import torch
import torch.nn.functional as F

TILE = 6                    # output tile side m: F(6x6, 3x3) uses 8x8 input tiles
POINTS = (0.0, 1.0, -1.0, 2.0, -2.0, 0.5, -0.5)  # interpolation points (plus infinity) for m + 2 = 8
MIN_SIDE = 20               # below this the transforms cost more than they save (measured); the direct conv runs
MAX_CHUNK_ELEMENTS = 1 << 22  # floats per transformed block: blocks of ~16 MB stay in cache, and memory stays bounded


@lru_cache(maxsize=None)
def winograd_matrices(m: int = TILE, r: int = 3, points: tuple[float, ...] = POINTS
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A^T (m x n), G (n x r), B^T (n x n) in float64 with n = m + r - 1, for 1-D correlation:
    y = A^T [(G g) * (B^T d)] for an n-sample input d and an r-tap filter g.

    A^T and G come from the Toom-Cook construction at `points` and infinity; B^T is solved from the identity
    itself, so the three always agree (checked to 1e-9 here, and against F.conv2d in the tests).
    """
    n = m + r - 1
    if len(points) != n - 1 or len(set(points)) != len(points):
        raise ValueError(f"F({m},{r}) needs {n - 1} distinct points, got {points}")
    pts = torch.tensor(points, dtype=torch.float64)
    a_t = torch.zeros(m, n, dtype=torch.float64)
    for i in range(m):
        a_t[i, :n - 1] = pts ** i
    a_t[m - 1, n - 1] = 1.0
    g = torch.zeros(n, r, dtype=torch.float64)
    for j in range(n - 1):
        others = torch.cat([pts[:j], pts[j + 1:]])
        g[j] = pts[j] ** torch.arange(r, dtype=torch.float64) / torch.prod(pts[j] - others)
    g[n - 1, r - 1] = 1.0
    # sum_p A^T[i, p] G[p, k] B^T[p, j] = [j == i + k] for every output i, tap k and input sample j
    system = torch.stack([a_t[i] * g[:, k] for i in range(m) for k in range(r)])
    target = torch.eye(n, dtype=torch.float64)[[i + k for i in range(m) for k in range(r)]]
    b_t = torch.linalg.lstsq(system, target).solution
    if not torch.allclose(system @ b_t, target, atol=1e-9):
        raise ArithmeticError(f"no exact Winograd F({m},{r}) transform at points {points}")
    return a_t, g, b_t


@lru_cache(maxsize=None)
def _transforms(m: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """float32 kron(B^T, B^T) (n*n, n*n), kron(A^T, A^T) (m*m, n*n) and kron(G, G) (n*n, 9) for tiles of side m:
    the 2-D transforms of flattened input tiles, output tiles and 3x3 filters."""
    with torch.inference_mode(False):  # cached: usable by autograd even when first built under inference_mode
        a_t, g, b_t = winograd_matrices(m)
        return torch.kron(b_t, b_t).float(), torch.kron(a_t, a_t).float(), torch.kron(g, g).float()


def applicable(x: torch.Tensor) -> bool:
    """Whether the fewer-multiplication convs should run on `x` (see the module docstring)."""
    if (torch.jit.is_tracing() or torch.onnx.is_in_onnx_export() or torch.compiler.is_compiling()
            or torch.compiler.is_exporting()):
        return False
    return (x.device.type == "cpu" and x.dtype == torch.float32 and min(x.shape[-2:]) >= MIN_SIDE
            and not torch.is_autocast_enabled("cpu"))


def _tile_blocks(batch: int, rows: int, per_row: int):
    """(first image, images, first tile row, tile rows) blocks of about MAX_CHUNK_ELEMENTS transformed floats each:
    several whole images where they fit (bigger GEMMs), else parts of one image."""
    rows_per_block = max(1, MAX_CHUNK_ELEMENTS // per_row)
    if rows_per_block >= rows:
        step = max(1, rows_per_block // rows)
        for image in range(0, batch, step):
            yield image, min(step, batch - image), 0, rows
    else:
        for image in range(batch):
            for first in range(0, rows, rows_per_block):
                yield image, 1, first, min(rows_per_block, rows - first)


def _tiles(t: torch.Tensor, block: tuple[int, int, int, int], cols: int, step: int, window: tuple[int, int],
           corner: tuple[int, int] = (0, 0)) -> torch.Tensor:
    """(window height, window width, images, tile rows, cols, C) view of a block (`_tile_blocks`) of an NHWC
    tensor: for each tile, `step` pixels apart, the window `corner` pixels into it."""
    image, images, first, count = block
    s_n, s_h, s_w, s_c = t.stride()
    offset = t.storage_offset() + image * s_n + (first * step + corner[0]) * s_h + corner[1] * s_w
    return t.as_strided((*window, images, count, cols, t.shape[3]), (s_h, s_w, s_n, step * s_h, step * s_w, s_c),
                        offset)


class _Winograd(torch.autograd.Function):
    """conv2d(x, weight, bias, padding=1) for a 3x3 weight, by Winograd F(m x m, 3x3), forward and backward."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, m: int,
                keep_transformed: bool) -> torch.Tensor:
        n = m + 2
        input_transform, output_transform, filter_transform = _transforms(m)
        batch, channels, height, width = x.shape
        out_channels = weight.shape[0]
        rows, cols = -(-height // m), -(-width // m)
        # U = G w G^T per (in, out) channel pair, laid out (n*n, in, out) for the batched GEMMs
        u = (filter_transform @ weight.permute(2, 3, 1, 0).reshape(9, -1)).view(n * n, channels, out_channels)
        # NHWC with a 1-pixel zero border (the conv's padding) and enough more to fill the last tiles
        padded = F.pad(x.permute(0, 2, 3, 1), (0, 0, 1, m * cols + 1 - width, 1, m * rows + 1 - height)).contiguous()
        out = torch.empty(batch, rows * m, cols * m, out_channels, dtype=x.dtype)
        blocks = list(_tile_blocks(batch, rows, n * n * cols * max(channels, out_channels)))
        transformed = []  # each block's transformed input, kept for the weight gradient (cheaper than redoing it)
        for block in blocks:
            tiles = _tiles(padded, block, cols, m, (n, n))
            v = (input_transform @ tiles.reshape(n * n, -1)).view(n * n, -1, channels)
            y = output_transform @ torch.bmm(v, u).view(n * n, -1)
            target = _tiles(out, block, cols, m, (m, m))
            target.copy_(y.view(target.shape))
            if keep_transformed:
                transformed.append(v)
        out = out[:, :height, :width]
        out = out + bias if bias is not None else out.contiguous()
        ctx.save_for_backward(u, *transformed)
        ctx.m, ctx.has_bias, ctx.shapes, ctx.blocks = m, bias is not None, (padded.shape, x.dtype), blocks
        return out.permute(0, 3, 1, 2)  # NCHW shape, channels_last memory

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: torch.Tensor):
        u, *transformed = ctx.saved_tensors
        m = ctx.m
        n = m + 2
        input_transform, output_transform, filter_transform = _transforms(m)
        padded_shape, dtype = ctx.shapes
        batch, padded_height, padded_width, channels = padded_shape
        out_channels = u.shape[2]
        rows, cols = (padded_height - 2) // m, (padded_width - 2) // m
        height, width = grad.shape[-2:]
        grad = F.pad(grad.permute(0, 2, 3, 1), (0, 0, 0, m * cols - width, 0, m * rows - height)).contiguous()
        want_input, want_weight, want_bias = ctx.needs_input_grad[:3]
        grad_padded = torch.zeros(padded_shape, dtype=dtype) if want_input else None
        grad_u = torch.zeros_like(u) if want_weight else None
        for index, block in enumerate(ctx.blocks):
            # the output tiles' gradient in the transformed domain: A (dL/dy) A^T
            grad_products = (output_transform.T @ _tiles(grad, block, cols, m, (m, m)).reshape(m * m, -1)
                             ).view(n * n, -1, out_channels)
            if want_weight:
                grad_u.baddbmm_(transformed[index].transpose(1, 2), grad_products)
            if want_input:
                grad_tiles = (input_transform.T @ torch.bmm(grad_products, u.transpose(1, 2)).view(n * n, -1)
                              ).view(n, n, block[1], block[3], cols, channels)
                # input tiles overlap by two pixels: add the four parts whose windows do not overlap one by one
                for r0, r1 in ((0, m), (m, n)):
                    for c0, c1 in ((0, m), (m, n)):
                        _tiles(grad_padded, block, cols, m, (r1 - r0, c1 - c0), (r0, c0)).add_(
                            grad_tiles[r0:r1, c0:c1])
        grad_x = grad_padded[:, 1:height + 1, 1:width + 1].permute(0, 3, 1, 2) if want_input else None
        grad_weight = (filter_transform.T @ grad_u.view(n * n, -1)).view(3, 3, channels, out_channels).permute(
            3, 2, 0, 1) if want_weight else None
        grad_bias = grad[:, :height, :width].sum((0, 1, 2)) if want_bias and ctx.has_bias else None
        return grad_x, grad_weight, grad_bias, None, None


def winograd_conv3x3(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, *,
                     tile: int = TILE) -> torch.Tensor:
    """conv2d(x, weight, bias, padding=1) for a (out, in, 3, 3) weight by Winograd F(tile x tile, 3x3); fp32 CPU
    tensors, differentiable. The result has NCHW shape and channels_last memory."""
    if weight.shape[-2:] != (3, 3) or x.shape[1] != weight.shape[1]:
        raise ValueError(f"needs a (out, {x.shape[1]}, 3, 3) weight, got {tuple(weight.shape)}")
    # needs_input_grad is set under no_grad too, so whether a weight gradient can follow is decided here
    return _Winograd.apply(x, weight, bias, tile, torch.is_grad_enabled() and weight.requires_grad)


def interpolation_matrix(size_in: int, size_out: int, align_corners: bool = False) -> torch.Tensor:
    """(size_out, size_in) float64 matrix of 1-D linear resizing as F.interpolate does it (with that
    `align_corners`); bilinear resizing is this along each axis."""
    eye = torch.eye(size_in, dtype=torch.float64).unsqueeze(0)
    return F.interpolate(eye, size=size_out, mode="linear", align_corners=align_corners)[0].T


@lru_cache(maxsize=64)
def _resize_taps(size_in: int, size_out: int, align_corners: bool = False) -> torch.Tensor:
    """[M(-1) M(0) M(+1)]: the resizing matrix M with its output rows moved by each 3x3 tap offset (zero past the
    edges, as the conv's padding), side by side: (size_out, 3 * size_in) float32."""
    with torch.inference_mode(False):  # cached: usable by autograd even when first built under inference_mode
        padded = F.pad(interpolation_matrix(size_in, size_out, align_corners), (0, 0, 1, 1))
        return torch.cat([padded[k:k + size_out] for k in range(3)], dim=1).float()


def upsample_concat_conv3x3(x: torch.Tensor, low: torch.Tensor, weight: torch.Tensor,
                            bias: torch.Tensor | None = None, *, align_corners: bool = False) -> torch.Tensor:
    """conv2d(cat([bilinear(x, size of low, align_corners), low]), weight, bias, padding=1), with the part on x done
    at x's resolution (see the module docstring); differentiable. NCHW shape, channels_last memory."""
    batch, upsampled, h, w = x.shape
    height, width = low.shape[-2:]
    out_channels = weight.shape[0]
    if weight.shape[1] != upsampled + low.shape[1] or weight.shape[-2:] != (3, 3):
        raise ValueError(f"needs a (out, {upsampled} + {low.shape[1]}, 3, 3) weight, got {tuple(weight.shape)}")
    coarse = weight[:, :upsampled].permute(2, 3, 0, 1).reshape(9 * out_channels, upsampled, 1, 1)
    channels_last = torch.channels_last
    taps = F.conv2d(x.contiguous(memory_format=channels_last), coarse.contiguous(memory_format=channels_last))
    # NHWC memory (n, y, x, ky, kx, o) -> (n, ky, y, kx, x, o): the width pass sums over (kx, x)
    taps = taps.permute(0, 2, 3, 1).reshape(batch, h, w, 3, 3, out_channels).permute(0, 3, 1, 4, 2, 5)
    along_width = torch.matmul(_resize_taps(w, width, align_corners), taps.reshape(batch * 3 * h, 3 * w, out_channels))
    fine_weight = weight[:, upsampled:].contiguous(memory_format=torch.channels_last)
    fine = F.conv2d(low.contiguous(memory_format=torch.channels_last), fine_weight, bias, padding=1)
    # the height pass sums over (ky, y) and adds the low-level part's conv in the same GEMM
    out = torch.baddbmm(fine.permute(0, 2, 3, 1).reshape(batch, height, width * out_channels),
                        _resize_taps(h, height, align_corners).expand(batch, -1, -1),
                        along_width.reshape(batch, 3 * h, width * out_channels))
    return out.view(batch, height, width, out_channels).permute(0, 3, 1, 2)    # channels_last
