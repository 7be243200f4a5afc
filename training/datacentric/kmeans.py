"""Seeded k-means on a feature matrix: used by SAS (approximate latent classes) and AdaInf's
Gaussian-mixture stand-in. Generic: no data-set or subset knowledge here."""
from __future__ import annotations

import torch


def kmeans(x: torch.Tensor, k: int, *, seed: int = 0, iters: int = 100) -> torch.Tensor:
    """Seeded k-means (Euclidean, k-means++ init, Lloyd iterations until no assignment changes);
    an empty cluster is re-seeded with the point farthest from its centre. Returns labels ``[N]``."""
    x = torch.as_tensor(x, dtype=torch.float64)
    n = x.shape[0]
    if not 1 <= k <= n:
        raise ValueError(f"k-means needs 1 <= k <= N, got k={k}, N={n}")
    g = torch.Generator().manual_seed(int(seed))
    sqn = (x * x).sum(1)

    def dist2(c):
        return (sqn[:, None] - 2 * x @ c.t() + (c * c).sum(1)[None]).clamp_min_(0)

    centres = [x[int(torch.randint(n, (1,), generator=g))]]
    d = dist2(centres[0][None]).squeeze(1)
    for _ in range(1, k):
        p = d / d.sum() if d.sum() > 0 else torch.full((n,), 1.0 / n, dtype=torch.float64)
        i = int(torch.multinomial(p, 1, generator=g))
        centres.append(x[i])
        d = torch.minimum(d, dist2(x[i][None]).squeeze(1))
    c = torch.stack(centres)
    labels = None
    for _ in range(iters):
        d = dist2(c)
        new = d.argmin(1)
        if labels is not None and torch.equal(new, labels):
            break
        labels = new
        for j in range(k):
            m = labels == j
            if m.any():
                c[j] = x[m].mean(0)
            else:  # re-seed an empty cluster with the worst-fitted point
                far = int(d.gather(1, labels[:, None]).squeeze(1).argmax())
                c[j] = x[far]
                labels[far] = j
    return labels
