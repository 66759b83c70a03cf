"""The shared overfit check of the model tests: can a model memorise one batch of random tokens?"""

import torch
import torch.nn.functional as F


def memorise(model: torch.nn.Module, vocab: int, n_seq: int, steps: int, lr: float = 1e-2) -> list[float]:
    """Train on one random batch of (n_seq, 32) tokens; return the loss at each step."""
    batch = torch.randint(0, vocab, (n_seq, 33))
    inputs, targets = batch[:, :-1], batch[:, 1:]
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    losses = []
    for _ in range(steps):
        loss = F.cross_entropy(model(inputs).flatten(0, 1), targets.flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses
