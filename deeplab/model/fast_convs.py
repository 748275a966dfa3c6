"""Fewer-multiplication 3x3 convs for fp32 CPU inference of the dense decoder: Winograd F(6x6, 3x3), and the
first decoder conv done at the ASPP output's resolution (UpsampleConcatConv, further down).

The decoder's two dense 3x3 convs at stride 4 hold most of the dense model's FLOPs. A CPU without bf16 (AVX2,
AVX-512F) runs them near its fp32 peak already, so the only way to make them faster in fp32 is to do less
arithmetic: Winograd's minimal filtering (Lavin & Gray, "Fast Algorithms for Convolutional Neural Networks", 2016)
computes each 6x6 output tile from an 8x8 input tile with 64 multiplications per channel pair instead of 324.
Here it is four matrix products (input transform, 64 batched channel GEMMs, output transform) so the heavy work
stays in the BLAS. The result equals the direct conv up to fp32 rounding (about 1e-5 relative; tested).

`WinogradConv2d` replaces a folded 3x3 conv for inference only: with autograd recording, under autocast (bf16/fp16
are too coarse for these transforms and have faster native kernels), off the CPU or on small maps it runs the
original conv instead.
"""

from functools import lru_cache

import torch
import torch.nn.functional as F
from torch import nn

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
    target = torch.zeros(m * r, n, dtype=torch.float64)
    for i in range(m):
        for k in range(r):
            target[i * r + k, i + k] = 1.0
    b_t = torch.linalg.lstsq(system, target).solution
    if not torch.allclose(system @ b_t, target, atol=1e-9):
        raise ArithmeticError(f"no exact Winograd F({m},{r}) transform at points {points}")
    return a_t, g, b_t


def use_direct(x: torch.Tensor) -> bool:
    """Whether the original conv should run on `x`: off the CPU, not fp32, autograd recording, under autocast, or a
    map too small to gain."""
    return (x.device.type != "cpu" or x.dtype != torch.float32 or torch.is_grad_enabled()
            or torch.is_autocast_enabled("cpu") or min(x.shape[-2:]) < MIN_SIDE)


def eligible(conv: nn.Module) -> bool:
    """A dense 3x3, stride 1, dilation 1, 'same'-padded conv: the kind Winograd F(m, 3) computes."""
    return (type(conv) is nn.Conv2d and conv.kernel_size == (3, 3) and conv.stride == (1, 1)
            and conv.dilation == (1, 1) and conv.padding == (1, 1) and conv.groups == 1
            and conv.padding_mode == "zeros")


class WinogradConv2d(nn.Module):
    """An inference-only stand-in for a 3x3 'same' conv (see the module docstring); `conv` is the original."""

    def __init__(self, conv: nn.Conv2d, tile: int = TILE) -> None:
        super().__init__()
        if not eligible(conv):
            raise ValueError(f"Winograd needs a dense 3x3 stride-1 dilation-1 conv with padding 1, got {conv}")
        self.conv = conv
        self.tile = tile
        a_t, g, b_t = winograd_matrices(tile)
        n = tile + 2
        weight = conv.weight.detach().double()
        # U[p, q] = G w G^T per (out, in) pair, laid out (n*n, in, out) for the batched GEMM
        transformed = torch.einsum("pk,oikl,ql->pqio", g, weight, g).reshape(n * n, conv.in_channels, conv.out_channels)
        self.register_buffer("transformed", transformed.float().contiguous(), persistent=False)
        self.register_buffer("input_transform", torch.kron(b_t, b_t).float(), persistent=False)    # (n*n, n*n)
        self.register_buffer("output_transform", torch.kron(a_t, a_t).float(), persistent=False)   # (m*m, n*n)

    def use_direct(self, x: torch.Tensor) -> bool:
        return use_direct(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.use_direct(x):
            return self.conv(x)
        m, n = self.tile, self.tile + 2
        batch, channels, height, width = x.shape
        rows, cols = -(-height // m), -(-width // m)
        # NHWC with a 1-pixel zero border (the conv's padding) and enough more to fill the last tiles
        padded = F.pad(x.permute(0, 2, 3, 1), (0, 0, 1, m * cols + 1 - width, 1, m * rows + 1 - height))
        s_n, s_h, s_w, s_c = padded.stride()
        out_channels = self.transformed.shape[2]
        out = torch.empty(batch, rows * m, cols * m, out_channels, dtype=x.dtype)
        per_row = n * n * cols * max(channels, out_channels)
        step = max(1, MAX_CHUNK_ELEMENTS // per_row)
        for image in range(batch):
            for first in range(0, rows, step):
                count = min(step, rows - first)
                offset = padded.storage_offset() + image * s_n + first * m * s_h
                tiles = padded.as_strided((n, n, count, cols, channels), (s_h, s_w, m * s_h, m * s_w, s_c), offset)
                v = (self.input_transform @ tiles.reshape(n * n, -1)).view(n * n, count * cols, channels)
                products = torch.bmm(v, self.transformed)
                y = (self.output_transform @ products.view(n * n, -1)).view(m, m, count, cols, out_channels)
                out[image, first * m:(first + count) * m].view(count, m, cols, m, out_channels).copy_(
                    y.permute(2, 0, 3, 1, 4))
        out = out[:, :height, :width]
        out = out + self.conv.bias if self.conv.bias is not None else out.contiguous()
        return out.permute(0, 3, 1, 2)  # NCHW shape, channels_last memory


def use_winograd(model: nn.Module, *, min_channels: int = 64) -> int:
    """Replace, in place, every eligible 3x3 conv with at least `min_channels` in and out by a WinogradConv2d
    (narrower convs gain too little); returns how many were replaced. For an eval-mode, BN-folded model."""
    replaced = 0
    for parent in list(model.modules()):
        if isinstance(parent, UpsampleConcatConv):  # its conv is only the fallback
            continue
        for name, child in parent.named_children():
            if eligible(child) and min(child.in_channels, child.out_channels) >= min_channels:
                setattr(parent, name, WinogradConv2d(child))
                replaced += 1
    return replaced


def interpolation_matrix(size_in: int, size_out: int) -> torch.Tensor:
    """(size_out, size_in) float64 matrix of 1-D linear resizing as F.interpolate does it (align_corners=False);
    bilinear resizing is this along each axis."""
    eye = torch.eye(size_in, dtype=torch.float64).unsqueeze(0)
    return F.interpolate(eye, size=size_out, mode="linear", align_corners=False)[0].T


def _shifted_taps(matrix: torch.Tensor) -> torch.Tensor:
    """[M(-1) M(0) M(+1)]: the resizing matrix with its output rows moved by each 3x3 tap offset (zero past the
    edges, as the conv's padding), side by side: (size_out, 3 * size_in)."""
    zero = torch.zeros(1, matrix.shape[1], dtype=matrix.dtype)
    padded = torch.cat([zero, matrix, zero])
    return torch.cat([padded[k:k + matrix.shape[0]] for k in range(3)], dim=1)


class UpsampleConcatConv(nn.Module):
    """conv3x3(cat([bilinear(x, size of low), low])) for inference, with the conv's part on x done at x's resolution.

    Resizing is linear and acts on each channel alone, so a 1x1 channel mix commutes with it: each of the nine taps'
    channel mix runs on the coarse map (one 1x1 conv with 9x the outputs), and the resize-then-shift of each tap is
    two small matrix products (width, then height). For the decoder's first conv (256 of its 304 inputs come from
    the upsampled ASPP output) that is about a quarter of the multiplications. Same result as the original up to fp32
    rounding (tested); where WinogradConv2d would run the direct conv, the original path runs.
    """

    def __init__(self, conv: nn.Conv2d, upsampled_channels: int) -> None:
        super().__init__()
        if not eligible(conv) or not 0 < upsampled_channels < conv.in_channels:
            raise ValueError(f"needs a dense 3x3 'same' conv over more than {upsampled_channels} channels, got {conv}")
        self.conv = conv
        out_channels, weight = conv.out_channels, conv.weight.detach()
        coarse = weight[:, :upsampled_channels].permute(2, 3, 0, 1).reshape(9 * out_channels, upsampled_channels, 1, 1)
        self.register_buffer("coarse_weight", coarse.contiguous(memory_format=torch.channels_last), persistent=False)
        self.fine = nn.Conv2d(conv.in_channels - upsampled_channels, out_channels, 3, padding=1)
        self.fine.weight.data = weight[:, upsampled_channels:].contiguous(memory_format=torch.channels_last)
        self.fine.bias.data = conv.bias.detach().clone() if conv.bias is not None else torch.zeros(out_channels)
        self._matrices: dict[tuple[int, int, int, int], tuple[torch.Tensor, torch.Tensor]] = {}

    def _resize_matrices(self, h: int, w: int, height: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
        key = (h, w, height, width)
        if key not in self._matrices:
            if len(self._matrices) >= 32:
                self._matrices.clear()
            self._matrices[key] = (_shifted_taps(interpolation_matrix(h, height)).float(),
                                   _shifted_taps(interpolation_matrix(w, width)).float())
        return self._matrices[key]

    def forward(self, x: torch.Tensor, low: torch.Tensor) -> torch.Tensor:
        height, width = low.shape[-2:]
        if use_direct(low) or x.dtype != torch.float32:
            upsampled = F.interpolate(x, size=(height, width), mode="bilinear", align_corners=False)
            return self.conv(torch.cat([upsampled, low], dim=1))
        batch, _, h, w = x.shape
        out_channels = self.fine.out_channels
        rows, cols = self._resize_matrices(h, w, height, width)
        taps = F.conv2d(x.contiguous(memory_format=torch.channels_last), self.coarse_weight)
        # NHWC memory (n, y, x, ky, kx, o) -> (n, ky, y, kx, x, o): the width pass sums over (kx, x)
        taps = taps.permute(0, 2, 3, 1).view(batch, h, w, 3, 3, out_channels).permute(0, 3, 1, 4, 2, 5)
        along_width = torch.matmul(cols, taps.reshape(batch * 3 * h, 3 * w, out_channels))   # (n, ky, y, X, o)
        resized = torch.matmul(rows, along_width.view(batch, 3 * h, width * out_channels))    # sums over (ky, y)
        resized = resized.view(batch, height, width, out_channels).permute(0, 3, 1, 2)        # channels_last
        return resized + self.fine(low.contiguous(memory_format=torch.channels_last))


class CoarseUpsampleDecoder(nn.Module):
    """A BN-folded DeepLabV3+ decoder whose first fuse conv is an UpsampleConcatConv; the rest is the decoder's own
    layers. Inference only (`use_fast_convs`)."""

    def __init__(self, decoder: nn.Module) -> None:
        super().__init__()
        first = decoder.fuse[0]
        self.reduce = decoder.reduce
        self.first = UpsampleConcatConv(first[0], first[0].in_channels - decoder.reduce[0].out_channels)
        self.first_activation = first[1:]
        self.rest = decoder.fuse[1:]
        self.classifier = decoder.classifier

    def forward(self, x: torch.Tensor, low: torch.Tensor) -> torch.Tensor:
        y = self.first_activation(self.first(x, self.reduce(low)))
        return self.classifier(self.rest(y))


def use_fast_convs(model: nn.Module) -> int:
    """Make a BN-folded, eval-mode DeepLabV3+ do its dense decoder convs with fewer multiplications, in place: the
    first as an UpsampleConcatConv, the others by Winograd. Returns how many convs changed (0 for a separable head).
    Only fp32 CPU inference takes the new paths; elsewhere the original convs run."""
    changed = 0
    decoder = getattr(model, "decoder", None)
    if decoder is not None and hasattr(decoder, "fuse") and eligible(decoder.fuse[0][0]):
        model.decoder = CoarseUpsampleDecoder(decoder)
        changed += 1
    return changed + use_winograd(model)
