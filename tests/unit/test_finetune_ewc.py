"""EWC (seed §2.3): F_i = E[(∂ log p_θ*(x)/∂θ_i)²]; penalty λ/2 Σ F_i (θ_i − θ*_i)²."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from stages.lib.finetune.ewc import EWC, fisher_diagonal  # noqa: E402
from stages.lib.testing import tiny_llama  # noqa: E402

SEQS = [[1, 5, 9, 12, 40, 7], [1, 33, 34, 35], [1, 8, 8, 8, 8, 8, 2]]


@pytest.fixture
def model():
    return tiny_llama(64, hidden=16, layers=1, heads=2, seed=3)


def test_fisher_is_the_mean_squared_per_document_gradient(model):
    fisher, used = fisher_diagonal(model, SEQS + [[1]])  # a 1-token document has no prediction: skipped
    assert used == 3
    assert all(p.grad is None for p in model.parameters())  # it leaves no gradient behind
    name = "model.layers.0.self_attn.q_proj.weight"
    param = dict(model.named_parameters())[name]
    manual = torch.zeros_like(param)
    for ids in SEQS:
        model.zero_grad()
        x = torch.tensor([ids])
        logp = torch.log_softmax(model(input_ids=x).logits[:, :-1], -1).gather(-1, x[:, 1:, None]).sum()
        logp.backward()
        manual += param.grad**2
    assert torch.allclose(fisher[name], manual / 3, rtol=1e-4, atol=1e-12)
    assert all((f >= 0).all() for f in fisher.values())
    assert float(fisher[name].sum()) > 0


def test_penalty_zero_at_start_and_positive_after_a_step(model):
    fisher, _ = fisher_diagonal(model, SEQS)
    ewc = EWC(model, fisher, lam=10.0)
    assert ewc.penalty().item() == 0.0  # θ = θ*
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x = torch.tensor([[1, 20, 21, 22, 23]])
    model(input_ids=x, labels=x).loss.backward()
    opt.step()
    value = ewc.penalty().item()
    assert value > 0
    manual = sum((fisher[n] * (p.detach() - star) ** 2).sum() for n, p, _, star in ewc.items)
    assert value == pytest.approx(0.5 * 10.0 * float(manual), rel=1e-5)


def test_added_gradient_is_the_penalty_gradient(model):
    fisher, _ = fisher_diagonal(model, SEQS)
    ewc = EWC(model, fisher, lam=3.0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    model.zero_grad()
    ewc.penalty().backward()
    autograd = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    ewc.add_gradient(step=0)
    ewc.add_gradient(step=0)  # once per optimizer step, however many hooks call it
    for n, p in model.named_parameters():
        assert torch.allclose(p.grad, autograd[n], rtol=1e-4, atol=1e-10), n
    assert ewc.last_penalty == pytest.approx(ewc.penalty().item(), rel=1e-5)


def test_only_trainable_parameters_are_covered(model):
    for n, p in model.named_parameters():
        p.requires_grad_("q_proj" in n)
    fisher, _ = fisher_diagonal(model, SEQS)
    assert list(fisher) == ["model.layers.0.self_attn.q_proj.weight"]
