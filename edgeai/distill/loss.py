"""The distillation loss: KL to the teacher over its top-k + rest bins at a temperature, mixed with
cross-entropy on the text.

The teacher targets keep, per position, the log-probs of its k most likely tokens and the log of the mass left
over (targets.py). The student's full distribution is folded into the same k+1 bins (its log-probs of those k
tokens, and the log of all the rest), so both are distributions over the same k+1 outcomes and their KL is
exactly what `eval fidelity` reports at temperature 1. A temperature tau > 1 softens both binned distributions
(log_softmax(bins / tau)); the rest bin is tempered as if it were one token, the only choice the stored
targets allow. The KL term is scaled by tau^2 so its gradients keep their size as tau changes (Hinton et al.
2015).

    loss = alpha * tau^2 * KL(teacher_tau || student_tau) + (1 - alpha) * CE(student, next token)
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def student_bins(logits, topk_idx):
    """Log-probs [.., k+1] of the student over the teacher's top-k tokens and one bin for all the others.
    The rest bin is a masked logsumexp (not log(1 - sum p_top)), which stays exact and has sane gradients
    when the top-k hold nearly all the mass."""
    lse = torch.logsumexp(logits, -1, keepdim=True)
    top = torch.gather(logits, -1, topk_idx) - lse
    rest = torch.logsumexp(logits.scatter(-1, topk_idx, float("-inf")), -1, keepdim=True) - lse
    return torch.cat([top, rest], -1)


def distill_loss(logits, ids, topk_idx=None, topk_lp=None, rest_lp=None, temperature: float = 1.0,
                 alpha: float = 0.5):
    """(loss, kl, ce) for logits [b, s, vocab] of token ids [b, s]; the targets cover positions 0..s-2.
    With alpha == 0 (cross-entropy only) no targets are needed and kl is returned as nan."""
    lg = logits[:, :-1].float()
    ce = F.cross_entropy(lg.reshape(-1, lg.shape[-1]), ids[:, 1:].reshape(-1).long())
    if alpha == 0:
        return ce, torch.tensor(float("nan")), ce
    s_bins = student_bins(lg, topk_idx.long())
    t_bins = torch.cat([topk_lp.float(), rest_lp.float().unsqueeze(-1)], -1)
    t_log = F.log_softmax(t_bins / temperature, -1)
    s_log = F.log_softmax(s_bins / temperature, -1)
    kl = (t_log.exp() * (t_log - s_log)).sum(-1).mean()
    loss = alpha * temperature ** 2 * kl + (1 - alpha) * ce
    return loss, kl, ce
