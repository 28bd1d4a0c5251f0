"""Block-wise quantized projector storage (Q-GaLore's INT4 projectors).

A projector is flattened and cut into blocks of ``block`` elements; each block keeps one float32
absmax and its elements as signed integers of ``bits`` bits, symmetric around zero (the entries
of an orthonormal basis are), rounded to nearest. 4-bit codes are packed two to a byte. Q-GaLore
keeps a scale and a zero point per block of 256 and one code per byte; the symmetric form needs
no zero point, and packing halves the codes again.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def code_count(numel: int, bits: int) -> int:
    """Bytes of codes for ``numel`` values at ``bits`` bits."""
    return -(-numel // 2) if bits == 4 else numel


def block_count(numel: int, block: int) -> int:
    return -(-numel // block)


def quantize(values: Tensor, bits: int, block: int) -> tuple[Tensor, Tensor]:
    """``(codes, absmax)``: uint8 codes (``code_count`` of them) and float32 per-block absmax."""
    levels = (1 << (bits - 1)) - 1  # 7 for 4 bits, 127 for 8
    flat = values.detach().reshape(-1).float()
    numel = flat.numel()
    blocks = block_count(numel, block)
    padded = torch.zeros(blocks * block, dtype=torch.float32, device=flat.device)
    padded[:numel] = flat
    padded = padded.view(blocks, block)
    absmax = padded.abs().amax(dim=1)
    scale = torch.where(absmax > 0, absmax / levels, torch.ones_like(absmax))
    q = torch.round(padded / scale[:, None]).clamp_(-levels, levels).to(torch.int16)
    q = (q + (levels + 1)).view(-1)[:numel].to(torch.uint8)  # offset to 1..2·levels+1
    if bits == 4:
        if numel % 2:
            q = torch.cat([q, q.new_zeros(1)])
        q = q[0::2] | (q[1::2] << 4)
    return q.contiguous(), absmax


def dequantize(
    codes: Tensor, absmax: Tensor, shape: tuple[int, ...], bits: int, block: int, dtype
) -> Tensor:
    """The values ``quantize`` stored, as a tensor of ``shape`` and ``dtype``."""
    levels = (1 << (bits - 1)) - 1
    numel = math.prod(shape)
    if bits == 4:
        q = torch.stack([codes & 0x0F, codes >> 4], dim=1).view(-1)[:numel]
    else:
        q = codes[:numel]
    values = q.to(torch.float32) - (levels + 1)
    blocks = absmax.numel()
    padded = torch.zeros(blocks * block, dtype=torch.float32, device=codes.device)
    padded[:numel] = values
    padded = padded.view(blocks, block).mul_((absmax / levels)[:, None])
    return padded.view(-1)[:numel].view(shape).to(dtype)
