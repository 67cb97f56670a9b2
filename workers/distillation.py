"""Distillation losses a method can choose for its students: KL and AlphaNet's adaptive α-divergence.

Every loss returns two tensors: the objective to back-propagate and the value to
log. For KL they are the same. For the α-divergence the objective is a surrogate
whose gradient is the clipped gradient of AlphaNet (Eqn. 5), while the logged
value is the true divergence max(D_α₋, D_α₊).

p is the teacher's distribution and q the student's, both softmaxes at temperature
T; every loss is scaled by T² so its gradients keep their size as T changes.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch
import torch.nn.functional as F

from workers.distillation_spec import AlphaDivergenceConfig, Distillation

LossPair = tuple[torch.Tensor, torch.Tensor]  # (objective to back-propagate, value to log)

# Below this distance from 0 or 1, α is taken to be exactly the reverse-KL or KL limit.
ALPHA_LIMIT_TOLERANCE = 1e-6


class DistillationLoss(ABC):
    def __init__(self, temperature: float = 1.0) -> None:
        self.temperature = temperature

    @abstractmethod
    def per_sample(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> LossPair:
        """(objective, true value) per sample, at temperature 1 of the given logits."""

    def __call__(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> LossPair:
        """(objective to back-propagate, detached value to log), means over the batch, scaled by T²."""
        t = self.temperature
        objective, value = self.per_sample(student_logits / t, teacher_logits.detach() / t)
        return objective.mean() * (t * t), value.detach().mean() * (t * t)


class KLDivergence(DistillationLoss):
    """KL(p ‖ q): the soft-target cross-entropy minus the teacher's entropy (same gradient)."""

    def per_sample(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> LossPair:
        log_p = F.log_softmax(teacher_logits, dim=1)
        log_q = F.log_softmax(student_logits, dim=1)
        kl = (log_p.exp() * (log_p - log_q)).sum(dim=1)
        return kl, kl


def alpha_divergence(log_p: torch.Tensor, log_q: torch.Tensor, alpha: float) -> torch.Tensor:
    """D_α(p ‖ q) = 1/(α(α−1)) Σ q[(p/q)^α − 1] per row; KL(p‖q) at α = 1 and KL(q‖p) at α = 0."""
    if abs(alpha - 1.0) < ALPHA_LIMIT_TOLERANCE:
        return (log_p.exp() * (log_p - log_q)).sum(dim=1)
    if abs(alpha) < ALPHA_LIMIT_TOLERANCE:
        return (log_q.exp() * (log_q - log_p)).sum(dim=1)
    # q (p/q)^α = exp(α log p + (1 − α) log q), computed in log space so tiny probabilities do not overflow.
    mixed = torch.exp(alpha * log_p + (1.0 - alpha) * log_q).sum(dim=1)
    return (mixed - 1.0) / (alpha * (alpha - 1.0))


def clipped_surrogate(log_p: torch.Tensor, log_q: torch.Tensor, alpha: float, clip: float) -> torch.Tensor:
    """Per row, a function of the student whose gradient is −(1/α)·E_q[min((p/q)^α, β)·∇log q].

    Only log q carries gradient; q and the clipped ratio are constants. At α = 0
    (reverse KL) the exact gradient E_q[log(q/p)·∇log q] is used instead.
    """
    q = log_q.detach().exp()
    log_ratio = log_p.detach() - log_q.detach()
    if abs(alpha) < ALPHA_LIMIT_TOLERANCE:
        return (q * -log_ratio * log_q).sum(dim=1)
    weight = torch.exp(alpha * log_ratio).clamp(max=clip)
    return -(q * weight * log_q).sum(dim=1) / alpha


class AdaptiveAlphaDivergence(DistillationLoss):
    """AlphaNet's adaptive KD: per sample the larger of D_α₋ and D_α₊, optimised through the clipped surrogate."""

    def __init__(self, alpha_min: float, alpha_max: float, clip: float, temperature: float = 1.0) -> None:
        super().__init__(temperature)
        self.alpha_min, self.alpha_max, self.clip = alpha_min, alpha_max, clip

    def per_sample(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> LossPair:
        log_p = F.log_softmax(teacher_logits, dim=1)
        log_q = F.log_softmax(student_logits, dim=1)
        with torch.no_grad():
            d_min = alpha_divergence(log_p, log_q.detach(), self.alpha_min)
            d_max = alpha_divergence(log_p, log_q.detach(), self.alpha_max)
        use_max = d_max >= d_min
        objective = torch.where(
            use_max,
            clipped_surrogate(log_p, log_q, self.alpha_max, self.clip),
            clipped_surrogate(log_p, log_q, self.alpha_min, self.clip),
        )
        return objective, torch.maximum(d_min, d_max)


def build_distillation(choice: Distillation) -> DistillationLoss:
    config, temperature = choice.divergence, choice.temperature
    if isinstance(config, AlphaDivergenceConfig):
        return AdaptiveAlphaDivergence(config.alpha_min, config.alpha_max, config.clip, temperature)
    return KLDivergence(temperature)
