"""soma.peft.layer.SoMALinear: maths against float64 references, merging, state dicts."""
import pytest
import torch
from torch import nn

from soma.peft import SoMALinear
from soma.peft import layer as layer_mod


def _linear(out_f=48, in_f=32, seed=0, bias=True):
    torch.manual_seed(seed)
    lin = nn.Linear(in_f, out_f, bias=bias)
    with torch.no_grad():
        lin.weight.mul_(3.0)
        if bias:
            lin.bias.normal_()
    return lin


def _reference(w, r, first_eigen=False):
    u, s, vh = torch.linalg.svd(w.detach().double(), full_matrices=False)
    sl = slice(0, r) if first_eigen else slice(s.numel() - r, s.numel())
    return (u[:, sl] * s[sl]) @ vh[sl]


@pytest.mark.parametrize('first_eigen', [False, True])
@pytest.mark.parametrize('alpha', [4, 8])  # s = alpha / r = 1 and 2
def test_init_matches_float64_svd(first_eigen, alpha):
    lin, r = _linear(), 4
    w0 = lin.weight.detach().clone()
    layer = SoMALinear.from_linear(lin, r=r, lora_alpha=alpha, first_eigen=first_eigen)
    assert layer.init_adapter() is True
    s = alpha / r
    a, b = layer.lora_A.weight.detach().double(), layer.lora_B.weight.detach().double()
    assert a.shape == (r, 32) and b.shape == (48, r)
    part = _reference(w0, r, first_eigen)
    assert float((s * b @ a - part).norm() / part.norm()) < 1e-5
    # A = diag(sqrt(S/s)) Vh, B = U diag(sqrt(S/s)): equal row/column norms sqrt(S/s)
    torch.testing.assert_close(a.norm(dim=1), b.norm(dim=0), rtol=1e-5, atol=1e-8)
    w_res = w0.double() - part
    assert float((layer.weight.detach().double() - w_res).norm() / w_res.norm()) < 1e-5
    # the layer computes what the pretrained layer computed (float64 reference)
    x = torch.randn(5, 32)
    ref = x.double() @ w0.double().T + lin.bias.double()
    torch.testing.assert_close(layer(x).detach().double(), ref, rtol=1e-5, atol=1e-5)
    assert layer.init_adapter() is False  # never twice


def test_init_is_bit_for_bit_reproducible():
    lin = _linear()
    w0 = lin.weight.detach().clone()
    one = SoMALinear.from_linear(lin, r=4)
    one.init_adapter()
    two = SoMALinear.from_linear(nn.Linear(32, 48), r=4)
    with torch.no_grad():
        two.weight.copy_(w0)
    two.init_adapter()
    assert torch.equal(one.weight, two.weight)
    assert torch.equal(one.lora_A.weight, two.lora_A.weight)


def test_merge_unmerge_and_to_linear():
    layer = SoMALinear.from_linear(_linear(), r=4)
    layer.init_adapter()
    with torch.no_grad():
        layer.lora_B.weight.add_(0.3)  # a trained adapter
    x = torch.randn(7, 32)
    y = layer(x)
    w_res = layer.weight.detach().clone()
    layer.merge()
    assert layer.merged
    torch.testing.assert_close(layer(x), y, rtol=1e-5, atol=1e-5)
    sd = layer.state_dict()
    torch.testing.assert_close(sd['weight'], w_res, rtol=0, atol=1e-6)  # exported unmerged
    layer.unmerge()
    torch.testing.assert_close(layer.weight.detach(), w_res, rtol=0, atol=1e-6)
    plain = layer.to_linear()
    assert type(plain) is nn.Linear
    torch.testing.assert_close(plain(x), y, rtol=1e-5, atol=1e-5)


def test_merge_weights_eval_merges_train_unmerges():
    layer = SoMALinear.from_linear(_linear(), r=4, merge_weights=True)
    layer.init_adapter()
    x = torch.randn(3, 32)
    y = layer(x)
    layer.eval()
    assert layer.merged
    torch.testing.assert_close(layer(x), y, rtol=1e-5, atol=1e-5)
    layer.train()
    assert not layer.merged
    torch.testing.assert_close(layer(x), y, rtol=1e-5, atol=1e-5)


def test_gradients_reach_only_adapters_and_bias():
    layer = SoMALinear.from_linear(_linear(), r=4)
    layer.init_adapter()
    layer(torch.randn(4, 32)).square().sum().backward()
    assert layer.weight.grad is None and not layer.weight.requires_grad
    assert layer.lora_A.weight.grad is not None and layer.lora_B.weight.grad is not None


def test_dropout_only_on_the_adapter_branch():
    layer = SoMALinear.from_linear(_linear(), r=4, lora_dropout=0.5)
    layer.init_adapter()
    x = torch.randn(4, 32)
    layer.eval()
    y_eval = layer(x)
    layer.train()
    torch.manual_seed(0)
    y_train = layer(x)
    base = nn.functional.linear(x, layer.weight, layer.bias)
    assert not torch.allclose(y_train, y_eval)
    # the frozen path is untouched by dropout: difference lies in the adapter's span
    diff = (y_train - base).double()
    b = layer.lora_B.weight.double()
    proj = b @ torch.linalg.pinv(b) @ diff.T
    torch.testing.assert_close(proj, diff.T, rtol=1e-4, atol=1e-5)


def _count_svd(monkeypatch):
    calls = []
    real = layer_mod.components64
    monkeypatch.setattr(layer_mod, 'components64',
                        lambda *a, **k: calls.append(1) or real(*a, **k))
    return calls


def test_loading_plain_weight_runs_svd_once(monkeypatch):
    calls = _count_svd(monkeypatch)
    pretrained = _linear(seed=3)
    layer = SoMALinear.from_linear(nn.Linear(32, 48), r=4)  # not initialised yet
    result = layer.load_state_dict(pretrained.state_dict(), strict=True)  # no missing keys
    assert not result.missing_keys and len(calls) == 1 and layer.lora_initialized
    part = _reference(pretrained.weight, 4)
    b, a = layer.lora_B.weight.detach().double(), layer.lora_A.weight.detach().double()
    delta = layer.scaling * b @ a
    assert float((delta - part).norm() / part.norm()) < 1e-5
    x = torch.randn(3, 32)
    torch.testing.assert_close(layer(x), pretrained(x), rtol=1e-5, atol=1e-5)

    # a state dict with lora keys: loaded as is, no SVD
    soma_sd = {k: v.clone() for k, v in layer.state_dict().items()}
    fresh = SoMALinear.from_linear(nn.Linear(32, 48), r=4)
    fresh.load_state_dict(soma_sd)
    assert len(calls) == 1 and fresh.lora_initialized
    for k, v in soma_sd.items():
        assert torch.equal(fresh.state_dict()[k], v)


def test_construction_mode_keeps_the_release_behaviour():
    random_init = _linear(seed=1)
    layer = SoMALinear.from_linear(random_init, r=4, svd_init_on='construction')
    layer.init_adapter()  # SVD at build time, of the random weight
    pretrained = _linear(seed=2)
    layer.load_state_dict(pretrained.state_dict(), strict=False)
    assert torch.equal(layer.weight, pretrained.weight)  # weight == W_pretrained exactly
    assert float((layer.lora_B.weight @ layer.lora_A.weight).detach().abs().max()) > 0  # B@A != 0


def test_bad_input():
    lin = nn.Linear(8, 6)
    with pytest.raises(ValueError, match=r'blocks.0.attn.q \(weight 6x8\): rank 7'):
        SoMALinear.from_linear(lin, r=7, name='blocks.0.attn.q')
    lin.weight = nn.Parameter(lin.weight.detach().to(torch.int32), requires_grad=False)
    with pytest.raises(TypeError, match='blocks.1.mlp.fc1: weight dtype torch.int32'):
        SoMALinear.from_linear(lin, r=2, name='blocks.1.mlp.fc1')
    with pytest.raises(ValueError, match='lora_weight_init'):
        SoMALinear(8, 6, r=2, lora_weight_init='pissa')


def test_half_precision_weights_get_float32_adapters_that_train():
    """bf16 frozen weights (e.g. DINOv3-7B): the adapters are float32, the layer still
    computes W x + b at init, and one AdamW step of lr 1e-4 moves every adapter entry by
    lr (Adam's first step), which bfloat16 factors would round away."""
    torch.manual_seed(0)
    linear = torch.nn.Linear(64, 48).to(torch.bfloat16)
    w64, b64 = linear.weight.double(), linear.bias.double()
    layer = SoMALinear.from_linear(linear, r=4, lora_alpha=4)
    layer.init_adapter()
    assert layer.weight.dtype == torch.bfloat16
    assert layer.lora_A.weight.dtype == layer.lora_B.weight.dtype == torch.float32
    x = torch.randn(5, 64).to(torch.bfloat16)
    out = layer(x)
    assert out.dtype == torch.bfloat16
    ref = x.double() @ w64.T + b64
    assert torch.allclose(out.double(), ref, rtol=0.02, atol=0.02)

    before = layer.lora_A.weight.detach().clone()
    opt = torch.optim.AdamW([layer.lora_A.weight, layer.lora_B.weight], lr=1e-4, weight_decay=0)
    layer(x).float().sum().backward()
    opt.step()
    step = (layer.lora_A.weight.detach() - before).abs()
    moved = step[layer.lora_A.weight.grad != 0]
    assert moved.numel() > 0 and torch.allclose(moved, torch.full_like(moved, 1e-4), rtol=0.05)
