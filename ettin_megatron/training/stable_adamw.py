"""StableAdamW, Ettin's optimizer, as the update rule inside Megatron-Core's optimizer wrappers.

StableAdamW (Wortsman et al. 2023; ``optimi.StableAdamW``, which ModernBERT and Ettin trained with) is
AdamW with two changes:
- the moments average with debiased betas, beta_t = (beta^t - beta) / (beta^t - 1), so ``exp_avg`` and
  ``exp_avg_sq`` are already bias-corrected;
- each tensor's step size lr_t = lr / max(1, RMS) shrinks by the root mean square, over the WHOLE tensor,
  of g^2 / max(v, eps^2): an AdaFactor-style update clip that replaces gradient clipping.
Weight decay is decoupled, p <- p (1 - lr_t wd), or with ``decouple_lr`` fully decoupled,
p <- p (1 - wd lr_t / max_lr): Ettin's ``weight_decay: 1e-5`` then removes 1e-5 of a weight per step at
peak LR whatever the LR. Then p <- p - lr_t m / (sqrt(v) + eps). The operations follow optimi's
single-tensor path in its order, so one process repeats optimi to float32 rounding.

Megatron-Core 0.16-0.19 builds its optimizer stack (fp32 main weights under BF16, sharding over DP,
dist checkpoints) around a torch AdamW; ``use_stable_adamw`` replaces that inner AdamW with this class over
the same parameter groups. The state is AdamW's (``exp_avg`` and ``exp_avg_sq`` per tensor, the step count
per group, and in ``state_dict`` per tensor too, as torch keeps it), so every wrapper saves, loads and
reshards it as it does AdamW's.

Whole tensors. A rank holds part of some tensors: its TP shard of a partitioned weight, its DP shard of
every tensor under the distributed optimizer. Each rank sums g^2 / max(v, eps^2) over its part, the
ranks that hold parts add their sums in ONE all-reduce per step (one value per tensor), and every part of
a tensor is then clipped by the RMS a single process would compute. A copy that other ranks also hold (a
norm replicated over TP, a tensor replicated over DP without the distributed optimizer) is counted by one
of them only. Nothing is read on the host.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from megatron.core import parallel_state


@dataclass(frozen=True)
class WholeTensors:
    """Where each parameter the inner optimizer updates sits among the model's whole tensors."""

    index: dict
    """inner parameter -> position of its whole tensor (the same on every rank of a pipeline stage)."""
    counted: dict
    """inner parameter -> whether this rank's part enters the sum (False for copies others count)."""
    sizes: torch.Tensor
    """Elements of each whole tensor (float32, as a mean over it divides)."""
    reported: torch.Tensor
    """Whether a whole tensor counts in the clipped fraction (not the last stage's embedding copy)."""
    group: object
    """The ranks that hold parts of the same tensors, or None when this rank holds them whole."""


def whole_tensors(megatron_optimizer, model_chunks, distributed: bool) -> WholeTensors:
    """WholeTensors of the inner optimizer of ``megatron_optimizer`` (one of get_megatron_optimizer's
    wrappers) over ``model_chunks``; ``distributed``: the distributed optimizer shards over DP."""
    params = [param for chunk in model_chunks for param in chunk.parameters()]
    position = {param: i for i, param in enumerate(params)}
    shard_map = getattr(megatron_optimizer, "model_param_group_index_map", None)
    if shard_map is not None:  # distributed optimizer: this rank's shard of each parameter it holds one of
        groups = megatron_optimizer.optimizer.param_groups
        model_of = {groups[g]["params"][i]: model for model, (g, i) in shard_map.items()}
    else:  # BF16: the fp32 main copy; fp32: the parameter itself
        model_of = {getattr(model, "main_param", model): model for model in params}
    tp = parallel_state.get_tensor_model_parallel_world_size()
    first_tp = parallel_state.get_tensor_model_parallel_rank() == 0

    def partitioned(model) -> bool:
        return bool(getattr(model, "tensor_model_parallel", False))

    # DP shards are disjoint, and DP replicas (no distributed optimizer) are not in the group: only a
    # copy replicated over TP is held by several ranks of the group.
    counted = {main: partitioned(model) or first_tp for main, model in model_of.items()}
    device = params[0].device
    sizes = torch.tensor([p.numel() * (tp if partitioned(p) else 1) for p in params], dtype=torch.float32,
                         device=device)
    reported = torch.tensor([not getattr(p, "shared", False) for p in params], device=device)
    group = (parallel_state.get_tensor_and_data_parallel_group() if distributed
             else parallel_state.get_tensor_model_parallel_group())
    return WholeTensors({main: position[model] for main, model in model_of.items()}, counted, sizes, reported,
                        group if torch.distributed.get_world_size(group) > 1 else None)


def _debiased(beta: float, step: int) -> float:
    """optimi's debiased beta: an average with it is Adam's bias-corrected average."""
    return (beta**step - beta) / (beta**step - 1)


class StableAdamW(torch.optim.Optimizer):
    """StableAdamW over megatron's parameter groups (module doc); ``tensors`` says how the parameters
    make up whole tensors, ``max_lr`` is the peak LR of fully decoupled decay."""

    def __init__(self, param_groups: list[dict], tensors: WholeTensors, max_lr: float, decouple_lr: bool):
        # Megatron's groups may hold views into its flat buffers (the distributed optimizer's fp32 shards),
        # which torch's add_param_group refuses as non-leaf tensors: megatron assigns them as they are, so
        # do we (with this rule's two settings).
        super().__init__([{"params": []}], dict(max_lr=max_lr, decouple_lr=decouple_lr))
        for group in param_groups:
            group.update(max_lr=max_lr, decouple_lr=decouple_lr)
        self.param_groups = param_groups
        self.tensors = tensors
        self.clipped = None
        """[tensors whose update was clipped, tensors] at the last step, on the device (this stage's)."""

    @torch.no_grad()
    def step(self, closure=None):
        live = [(group, p) for group in self.param_groups for p in group["params"] if p.grad is not None]
        if not live:
            return None
        for group in self.param_groups:
            group["step"] = int(group.get("step", 0)) + 1
        sums = torch.zeros(len(self.tensors.sizes), dtype=torch.float32, device=live[0][1].device)
        counted = []
        for group, p in live:
            ratio = self._update_moments(group, p)
            if self.tensors.counted[p]:
                counted.append((self.tensors.index[p], ratio))
        if counted:
            where, values = zip(*counted)
            sums[torch.tensor(where, device=sums.device)] = torch.stack(values)
        if self.tensors.group is not None:
            torch.distributed.all_reduce(sums, group=self.tensors.group)
        rms = sums.div_(self.tensors.sizes).sqrt_()
        clip = rms.double().clamp_(min=1.0)  # float64 as optimi's host arithmetic
        clipped = (rms > 1) & self.tensors.reported
        self.clipped = torch.stack([clipped.sum(), self.tensors.reported.sum()])
        for group, p in live:
            self._update_parameter(group, p, group["lr"] / clip[self.tensors.index[p]])
        return None

    def state_dict(self) -> dict:
        """torch's, with each parameter's step beside its moments, as torch AdamW has it (megatron's
        checkpoint code, without TE or apex, reads it there). The count itself lives in the group."""
        packed = super().state_dict()
        step_of = {i: float(group.get("step", 0)) for group in packed["param_groups"] for i in group["params"]}
        packed["state"] = {i: {**state, "step": torch.tensor(step_of[i])} for i, state in packed["state"].items()}
        return packed

    def load_state_dict(self, state_dict: dict) -> None:
        """torch's, leaving each parameter the moments only: megatron's distributed optimizer then copies
        every entry of a parameter's state from the checkpoint, which holds no per-parameter step."""
        super().load_state_dict(state_dict)
        for state in self.state.values():
            state.pop("step", None)

    def _update_moments(self, group: dict, p: torch.Tensor) -> torch.Tensor:
        """Average the gradient into the moments; return sum(g^2 / max(v, eps^2)) over this part."""
        state = self.state[p]
        if "exp_avg" not in state:
            state["exp_avg"] = torch.zeros_like(p)
            state["exp_avg_sq"] = torch.zeros_like(p)
        step = group["step"]
        beta1, beta2 = group["betas"]
        beta2_hat = _debiased(beta2, step)
        state["exp_avg"].lerp_(p.grad, weight=1 - _debiased(beta1, step))
        state["exp_avg_sq"].mul_(beta2_hat).addcmul_(p.grad, p.grad, value=1 - beta2_hat)
        return p.grad.pow(2).div_(state["exp_avg_sq"].clamp_min(group["eps"] ** 2)).sum()

    def _update_parameter(self, group: dict, p: torch.Tensor, lr: torch.Tensor) -> None:
        """Decay, then the Adam step, with this tensor's clipped step size ``lr`` (a float64 scalar,
        rounded to the parameter's precision as a Python number would be)."""
        if group["weight_decay"] != 0:
            rate = lr / group["max_lr"] if group["decouple_lr"] else lr
            p.mul_(1 - rate * group["weight_decay"])
        state = self.state[p]
        p.add_(state["exp_avg"].mul(-lr).div_(state["exp_avg_sq"].sqrt().add_(group["eps"])))


def wrappers(megatron_optimizer) -> list:
    """The optimizer wrappers (each around one inner torch optimizer) of get_megatron_optimizer's result,
    which is one wrapper or a ChainedOptimizer of several."""
    return getattr(megatron_optimizer, "chained_optimizers", [megatron_optimizer])


def use_stable_adamw(megatron_optimizer, model_chunks, max_lr: float, decouple_lr: bool, distributed: bool) -> None:
    """Make ``megatron_optimizer`` (get_megatron_optimizer's, built with optimizer="adam") step with
    StableAdamW: its inner torch AdamW, over the same parameter groups, is replaced."""
    for wrapper in wrappers(megatron_optimizer):
        if wrapper.optimizer is not None:  # None on a rank that updates no parameter
            tensors = whole_tensors(wrapper, model_chunks, distributed)
            wrapper.optimizer = StableAdamW(wrapper.optimizer.param_groups, tensors, max_lr, decouple_lr)


def clipped_fraction(megatron_optimizer) -> torch.Tensor | None:
    """The share of the model's tensors whose update was clipped at the last step, over every pipeline
    stage, on the device (a collective over the pipeline group); None for an optimizer other than
    StableAdamW."""
    inner = [getattr(w, "optimizer", None) for w in wrappers(megatron_optimizer)]
    counts = [opt.clipped for opt in inner if isinstance(opt, StableAdamW) and opt.clipped is not None]
    if not counts:
        return None
    total = torch.stack(counts).sum(0).double()
    if parallel_state.get_pipeline_model_parallel_world_size() > 1:
        torch.distributed.all_reduce(total, group=parallel_state.get_pipeline_model_parallel_group())
    return total[0] / total[1]
