"""The one target resolver (``galorekit.optim.targets``) across model families: peft's matching
rules, the defaults of LLaMA, BERT, GPT-2, ViT and a CNN, GPT-2's Conv1D in GaLore, convolutions
and embeddings on request, and the adapters on the same targets."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from transformers import BertConfig, BertForSequenceClassification, GPT2Config, GPT2LMHeadModel
from transformers.pytorch_utils import Conv1D

from galorekit import GaLoreAdamW, param_groups
from galorekit.methods.adapters import apply_lora, apply_low_rank
from galorekit.models import build_model, default_target_modules
from galorekit.models.targets import linear_shape, resolve_target_modules
from galorekit.optim.targets import module_kind, name_matches, select_modules


def gpt2() -> GPT2LMHeadModel:
    torch.manual_seed(0)
    return GPT2LMHeadModel(GPT2Config(n_embd=32, n_layer=2, n_head=2, vocab_size=64))


def bert() -> BertForSequenceClassification:
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=64,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        num_labels=3,
    )
    return BertForSequenceClassification(config)


def blocks(prefix: str, leaves: tuple[str, ...]) -> list[str]:
    return [f"{prefix}.{i}.{leaf}" for i in range(2) for leaf in leaves]


# The modules the defaults selected before the peft semantics (each family's attention and MLP
# projections, in module order): a changed resolver must keep selecting exactly these.
DEFAULTS = {
    "llama": blocks(
        "model.layers",
        (
            *(f"self_attn.{p}_proj" for p in "qkvo"),
            *(f"mlp.{p}_proj" for p in ("gate", "up", "down")),
        ),
    ),
    "gpt2": blocks("transformer.h", ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")),
    "bert": blocks(
        "bert.encoder.layer",
        (
            "attention.self.query",
            "attention.self.key",
            "attention.self.value",
            "attention.output.dense",
            "intermediate.dense",
            "output.dense",
        ),
    ),
    "vit": blocks(
        "vit.layers",
        (*(f"attention.{p}_proj" for p in "qkvo"), "mlp.fc1", "mlp.fc2"),
    ),
    "cnn": ["features.0", "features.2", "features.5"],
}


def family(name: str) -> nn.Module:
    if name == "llama":
        return build_model("llama_tiny", vocab_size=64, seed=0)
    if name == "gpt2":
        return gpt2()
    if name == "bert":
        return bert()
    return build_model({"vit": "vit_digits", "cnn": "cnn_digits"}[name], seed=0)


@pytest.mark.parametrize("name", list(DEFAULTS))
def test_defaults_select_the_attention_and_mlp_projections(name: str) -> None:
    model = family(name)
    assert default_target_modules(model) == DEFAULTS[name]
    assert resolve_target_modules(model) == DEFAULTS[name]
    _, galore = param_groups(model)
    assert galore["param_names"] == [f"{n}.weight" for n in DEFAULTS[name]]


@pytest.mark.parametrize(
    ("name", "spec", "expected"),
    [
        ("gpt2", ["c_attn"], ["transformer.h.0.attn.c_attn", "transformer.h.1.attn.c_attn"]),
        ("gpt2", ["mlp.c_proj"], ["transformer.h.0.mlp.c_proj", "transformer.h.1.mlp.c_proj"]),
        ("gpt2", r"transformer\.h\.1\.attn\..*", DEFAULTS["gpt2"][4:6]),
        ("bert", ["output.dense"], [DEFAULTS["bert"][i] for i in (3, 5, 9, 11)]),
        ("bert", ["attention.output.dense"], [DEFAULTS["bert"][i] for i in (3, 9)]),
        ("vit", ["fc1", "fc2"], [n for n in DEFAULTS["vit"] if ".fc" in n]),
        ("vit", ["patch_embeddings.projection"], ["vit.embeddings.patch_embeddings.projection"]),
        ("cnn", ["features.2"], ["features.2"]),
        ("cnn", ["classifier"], ["classifier"]),
    ],
)
def test_names_match_whole_or_as_a_suffix_and_strings_fully(name, spec, expected) -> None:
    assert resolve_target_modules(family(name), spec) == expected


def test_all_linear_leaves_out_heads_as_peft_does() -> None:
    assert resolve_target_modules(gpt2(), "all-linear") == DEFAULTS["gpt2"]  # tied lm_head out
    assert resolve_target_modules(gpt2(), "ALL-LINEAR") == DEFAULTS["gpt2"]  # peft lower-cases
    # a classifier: its head (and BERT's pooler, which all-linear does keep) vs the default
    selected = resolve_target_modules(bert(), "all-linear")
    assert selected == [*DEFAULTS["bert"], "bert.pooler.dense"]
    vit = family("vit")
    assert resolve_target_modules(vit, "all-linear") == DEFAULTS["vit"]  # no patch conv, no head
    with pytest.raises(ValueError, match="'all-linear' matches no"):  # its one Linear: the head
        resolve_target_modules(family("cnn"), "all-linear")


def test_suffix_matching_is_by_dot_parts_not_substrings() -> None:
    assert name_matches("model.layers.0.self_attn.q_proj", ["q_proj"])
    assert name_matches("model.layers.0.self_attn.q_proj", ["self_attn.q_proj"])
    assert not name_matches("model.layers.0.self_attn.q_proj", ["proj"])
    assert not name_matches("model.layers.0.self_attn.q_proj", ["attn.q_proj"])
    assert not name_matches("model.layers.0.self_attn.q_proj", "q_proj")  # full match only
    assert name_matches("model.layers.0.self_attn.q_proj", r".*q_proj")


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        (["q_prj"], ["did you mean", "q_proj"]),
        (["self_attn"], ["LlamaAttention", "cannot be targeted"]),
        ("q_proj", ["did you mean", "q_proj", "must match the whole name"]),
        (["qproj", "v_proj"], ["['qproj']", "q_proj"]),
    ],
    ids=["typo", "container", "regex-needs-full-match", "one-entry-of-two"],
)
def test_a_spec_matching_nothing_names_near_misses(spec, expected: list[str]) -> None:
    with pytest.raises(ValueError) as err:
        select_modules(family("llama"), spec)
    msg = str(err.value)
    assert "\n" not in msg and all(e in msg for e in expected), msg


def test_exclude_modules_and_a_frozen_only_selection() -> None:
    model = family("llama")
    names = select_modules(model, "all-linear", exclude_modules=["q_proj", "k_proj"])
    assert names == [n for n in DEFAULTS["llama"] if not n.endswith(("q_proj", "k_proj"))]
    with pytest.raises(ValueError, match="excludes every"):
        select_modules(model, ["q_proj"], exclude_modules=r".*")
    model.model.layers[0].self_attn.q_proj.weight.requires_grad_(False)
    model.model.layers[1].self_attn.q_proj.weight.requires_grad_(False)
    with pytest.raises(ValueError, match="only frozen weights"):
        param_groups(model, target_modules=["q_proj"])


def test_embeddings_and_convolutions_only_on_request() -> None:
    model = family("llama")
    assert "model.embed_tokens" not in select_modules(model, "all-linear")
    assert select_modules(model, ["embed_tokens"]) == ["model.embed_tokens"]
    assert module_kind(model.model.embed_tokens) == "embedding"
    _, galore = param_groups(model, target_modules=["embed_tokens", "q_proj"])
    assert galore["param_names"][0] == "model.embed_tokens.weight"
    vit = family("vit")
    conv = "vit.embeddings.patch_embeddings.projection"
    assert conv not in default_target_modules(vit) and module_kind(dict(vit.named_modules())[conv])
    assert linear_shape(dict(vit.named_modules())[conv]) == (1 * 2 * 2, 64)


def test_gpt2_conv1d_trains_as_the_transposed_linear_layer() -> None:
    """Conv1D stores its weight in×out; std projects the smaller side whichever way the matrix is
    stored, so GaLore's trajectory is the transposed one of the same nn.Linear (non-square)."""
    torch.manual_seed(0)
    conv = Conv1D(24, 8)  # nf=24 outputs, nx=8 inputs: weight 8×24
    linear = nn.Linear(8, 24)
    with torch.no_grad():
        linear.weight.copy_(conv.weight.T)
        linear.bias.copy_(conv.bias)
    opts = [
        GaLoreAdamW(
            [{"params": [m.weight], "rank": 4, "update_proj_gap": 2}, {"params": [m.bias]}],
            lr=1e-2,
        )
        for m in (conv, linear)
    ]
    gen = torch.Generator().manual_seed(1)
    for _ in range(5):
        x = torch.randn(16, 8, generator=gen)
        for m, opt in zip((conv, linear), opts):
            opt.zero_grad()
            m(x).pow(2).mean().backward()
            opt.step()
    torch.testing.assert_close(conv.weight.T, linear.weight, rtol=1e-5, atol=1e-6)
    state = opts[0].state[conv.weight]
    assert state["exp_avg"].shape == (4, 24)  # the 8 inputs projected to r = 4 (left on in×out)


def test_gpt2_with_galore_and_lora_on_the_same_targets() -> None:
    model = gpt2()
    _, galore = param_groups(model, rank=4)
    assert len(galore["params"]) == 8 and all(p.shape[0] == 32 for p in galore["params"][:2])
    lora = apply_lora(gpt2(), rank=4, alpha=8)
    wrapped = {n.removeprefix("base_model.model.") for n, m in lora.named_modules()}
    assert all(f"{t}.lora_A" in wrapped for t in DEFAULTS["gpt2"])
    x = torch.randint(0, 64, (2, 8))
    lora(input_ids=x, labels=x).loss.backward()


def test_lora_on_convolutions_and_low_rank_refuses_them() -> None:
    lora = apply_lora(family("cnn"), rank=4, alpha=8)
    out = lora(pixel_values=torch.randn(2, 1, 8, 8), labels=torch.tensor([1, 2]))
    out.loss.backward()
    kinds = {type(m).__name__ for n, m in lora.named_modules() if n.endswith("lora_A.default")}
    assert kinds == {"Conv2d"}
    with pytest.raises(ValueError, match="largest valid rank for these target modules is 8"):
        apply_lora(family("cnn"), rank=9, alpha=8)  # the first kernel is 32×(1·3·3)
    with pytest.raises(ValueError, match=r"linear layers.*features\.0 \(Conv2d\)"):
        apply_low_rank(family("cnn"), rank=4)


@pytest.mark.parametrize("shape", [(8,), ()], ids=["vector", "scalar"])
@pytest.mark.parametrize("layerwise", [False, True], ids=["step", "layerwise"])
def test_a_vector_or_scalar_in_a_galore_group_is_refused_up_front(shape, layerwise) -> None:
    """Refused when the optimizer is built, naming the parameter — never deep in a step."""
    from galorekit import GaLoreAdafactor, LayerwiseOptimizer

    for cls in (GaLoreAdamW, GaLoreAdafactor):
        groups = [{"params": [nn.Parameter(torch.zeros(shape))], "param_names": ["scale"]}]
        groups[0]["rank"] = 4
        with pytest.raises(
            ValueError, match=rf"holds scale of shape \({shape[0] if shape else ''}"
        ):
            LayerwiseOptimizer(groups, cls, lr=1e-3) if layerwise else cls(groups, lr=1e-3)


def test_the_readme_targets_example_runs(capsys) -> None:
    import re
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    section = text[text.index("## Choosing targets") :]
    example = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    namespace: dict = {}
    exec(compile(example, "README.md", "exec"), namespace)
    out = capsys.readouterr().out
    assert "transformer.h.1.mlp.c_proj" in out and "did you mean" in out
    assert len(namespace["opt"].param_groups[1]["params"]) == 4


def test_lowrank_comm_hook_sends_a_kernels_projection(tmp_path, monkeypatch) -> None:
    """The DDP low-rank hook on a convolution kernel (one gloo process, a bucket of the kernel
    and its bias): between refreshes it sends R = Pᵀ·unfold(G) and writes back P·R̄, whose
    projection by the optimizer is R̄ again — the full all-reduce's update."""
    import torch.distributed as dist

    from galorekit.distributed.hooks import HookState, lowrank_allreduce_hook
    from galorekit.distributed.projection_view import ProjectionLookup
    from galorekit.optim.validation import as_matrix
    from galorekit.projection.projector import project

    conv = nn.Conv2d(4, 16, 3)
    opt = GaLoreAdamW(
        [{"params": [conv.weight], "rank": 4, "update_proj_gap": 5}, {"params": [conv.bias]}],
        lr=1e-2,
    )
    conv(torch.randn(2, 4, 6, 6)).pow(2).mean().backward()
    opt.step()  # the first step refreshes: the next ones are projected
    grad = torch.randn(conv.weight.shape, generator=torch.Generator().manual_seed(3))

    class Bucket:  # what the hook reads of a dist.GradBucket
        def __init__(self) -> None:
            self._buffer = torch.cat([grad.reshape(-1), torch.ones(16)])

        def buffer(self) -> torch.Tensor:
            return self._buffer

        def parameters(self) -> list[nn.Parameter]:
            return [conv.weight, conv.bias]

    sent_numel = []
    all_reduce = dist.all_reduce

    def counting(t: torch.Tensor, *args, **kwargs):
        sent_numel.append(t.numel())
        return all_reduce(t, *args, **kwargs)

    monkeypatch.setattr(dist, "all_reduce", counting)
    dist.init_process_group("gloo", init_method=f"file://{tmp_path}/store", rank=0, world_size=1)
    try:
        bucket = Bucket()
        state = HookState(lookup=ProjectionLookup(opt))
        out = lowrank_allreduce_hook(state, bucket).wait()
    finally:
        dist.destroy_process_group()
    view = ProjectionLookup(opt)(conv.weight)
    sent, kept = out[: grad.numel()].view(grad.shape), out[grad.numel() :]
    low = project(as_matrix(grad), view.side, view.left, view.right)
    torch.testing.assert_close(project(as_matrix(sent), view.side, view.left, view.right), low)
    assert not torch.allclose(sent, grad)  # the kernel travelled projected, not in full
    torch.testing.assert_close(kept, torch.ones(16))
    # R: the unfolding 16×36 projected on the left to 4×36, and the bias in full
    assert sent_numel == [4 * 36 + 16]


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        (["attn", "mlp"], DEFAULTS["llama"]),  # the Trainer's documented GaLore example
        (["self_attn", "mlp"], DEFAULTS["llama"]),  # substrings of the projections' names
        ([r".*\.mlp\..*"], [n for n in DEFAULTS["llama"] if ".mlp." in n]),  # a regex entry
        ("all_linear", DEFAULTS["llama"]),
    ],
)
def test_transformers_rules_read_optim_target_modules_as_the_trainer(spec, expected) -> None:
    """``rules="transformers"``: transformers' ``check_target_module_exists`` (exact name,
    substring, or an entry as a full-match regex), linear layers only — checked against it."""
    from transformers.trainer_utils import check_target_module_exists

    model = family("llama")
    got = resolve_target_modules(model, spec, rules="transformers")
    assert got == expected
    if spec != "all_linear":
        trainer = [
            n
            for n, m in model.named_modules()
            if isinstance(m, nn.Linear) and check_target_module_exists(spec, n)
        ]
        assert got == trainer
    with pytest.raises(ValueError, match="a part of it") as refused:
        resolve_target_modules(model, ["no_such"], rules="transformers")
    # the Trainer's rules target linear layers only: the message offers those alone
    listed = str(refused.value).split("end in: ")[1]
    assert "embed_tokens" not in listed and "q_proj" in listed
    assert "matches no nn.Linear or transformers' Conv1D module" in str(refused.value)
    with pytest.raises(ValueError, match="embed_tokens") as peft_rules:
        resolve_target_modules(model, ["no_such"])  # peft's rules may name embeddings
    assert "nn.Embedding" in str(peft_rules.value)
    with pytest.raises(ValueError, match="unknown target rules"):
        select_modules(model, ["q_proj"], rules="hf")
