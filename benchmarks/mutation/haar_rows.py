"""Is the QR sign correction applied to the rows (D·Q, mutant ensemble.py:115) still Haar-distributed?

Compares, for orthogonal m×m matrices from the QR of Gaussian matrices, the correct Q·D (columns) with
the mutant D·Q (rows) on statistics Haar measure fixes: the mean and second moment of every entry, the
joint sign pattern of the first column and of the first row, and P(sign Ω21 = sign Ω12).

    .venv/bin/python benchmarks/mutation/haar_rows.py
"""

from __future__ import annotations

import torch


def statistics(o: torch.Tensor) -> dict[str, float]:
    m, k = o.shape[-1], o.shape[0]
    powers = 2 ** torch.arange(m)
    col = torch.bincount((o[:, :, 0] > 0).long() @ powers, minlength=2**m).double() / k
    row = torch.bincount((o[:, 0, :] > 0).long() @ powers, minlength=2**m).double() / k
    return {
        "max |E entry|": float(o.mean(0).abs().max()),
        "max |E entry² − 1/m|": float(((o**2).mean(0) - 1.0 / m).abs().max()),
        "max |P(column signs) − 2^-m|": float((col - 2.0**-m).abs().max()),
        "max |P(row signs) − 2^-m|": float((row - 2.0**-m).abs().max()),
        "P(sign o21 = sign o12)": float(((o[:, 1, 0] > 0) == (o[:, 0, 1] > 0)).double().mean()),
    }


def main() -> None:
    torch.manual_seed(0)
    draws = 400_000
    for m in (2, 3, 5):
        q, r = torch.linalg.qr(torch.randn(draws, m, m, dtype=torch.float64))
        signs = torch.sign(torch.diagonal(r, dim1=-2, dim2=-1))
        for name, o in (("Q·D (code)", q * signs.unsqueeze(-2)), ("D·Q (mutant)", q * signs.unsqueeze(-1))):
            stats = ", ".join(f"{k} {v:.4f}" for k, v in statistics(o).items())
            print(f"m={m} {name:13s} {stats}")
    print(f"sampling error of a probability near 1/2: ±{2 * 0.5 / draws**0.5:.4f} (2 sd)")


if __name__ == "__main__":
    main()
