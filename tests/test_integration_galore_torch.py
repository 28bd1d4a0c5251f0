"""The galore-torch drop-in (galorekit.integrations.galore_torch_compat): opt-in only; after it,
``galore_torch``'s names are galorekit's optimizers with galore-torch's signatures and group keys,
through galore-torch's README usage and transformers' own ``optim="galore_*"`` path."""

from __future__ import annotations

import inspect
import subprocess
import sys
import textwrap

import pytest
import torch

import galorekit
from _integration_fixtures import TokenDataset, tiny_llama, training_args
from galorekit.integrations import galore_torch_compat as compat

real = pytest.importorskip("galore_torch")


@pytest.fixture
def drop_in():
    compat.install()
    try:
        yield
    finally:
        compat.uninstall()


def _python(code: str, *args: str) -> str:
    proc = subprocess.run(
        [sys.executable, *args] if not code else [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout.strip().splitlines()[-1]


def test_without_opt_in_galore_torch_is_untouched():
    out = _python(
        """
        import galorekit, galorekit.integrations.galore_torch_compat
        from galorekit.integrations.transformers import galore_optimizer
        from galore_torch import GaLoreAdamW, GaLoreAdafactor
        print(GaLoreAdamW.__module__, GaLoreAdafactor.__module__)
        """
    )
    assert out == "galore_torch.adamw galore_torch.adafactor"


def test_install_and_uninstall(drop_in):
    from galore_torch import GaLoreAdafactor, GaLoreAdamW, GaLoreAdamW8bit

    assert issubclass(GaLoreAdamW, galorekit.GaLoreAdamW)
    assert issubclass(GaLoreAdafactor, galorekit.GaLoreAdafactor)
    assert issubclass(GaLoreAdamW8bit, galorekit.GaLoreAdamW8bit)
    compat.uninstall()
    import galore_torch

    assert galore_torch is real and not compat.installed()
    compat.install()  # the fixture uninstalls again


@pytest.mark.parametrize("name", ["GaLoreAdamW", "GaLoreAdamW8bit", "GaLoreAdafactor"])
def test_constructor_signatures_are_galore_torchs(name):
    ours = compat._adamw8bit_class() if name == "GaLoreAdamW8bit" else getattr(compat, name)
    theirs = getattr(real, name)
    ours_params = [(p.name, p.default, p.kind) for p in inspect.signature(ours).parameters.values()]
    theirs_params = [
        (p.name, p.default, p.kind) for p in inspect.signature(theirs).parameters.values()
    ]
    assert ours_params == theirs_params


def _model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.Tanh(), torch.nn.Linear(32, 8))


def _readme_groups(model):
    # galore-torch's README: "define param groups as galore_params and non_galore_params"
    galore_params = [model[0].weight, model[2].weight]
    non_galore_params = [model[0].bias, model[2].bias]
    return [
        {"params": non_galore_params},
        {
            "params": galore_params,
            "rank": 4,
            "update_proj_gap": 2,
            "scale": 0.25,
            "proj_type": "std",
        },
    ]


def _loss(model, step):
    g = torch.Generator().manual_seed(step)
    return model(torch.randn(8, 16, generator=g)).pow(2).mean()


def test_readme_usage_runs_galorekit_with_positional_arguments(drop_in):
    from galore_torch import GaLoreAdamW

    a, b = _model(), _model()
    # positional lr, betas, eps, weight_decay, correct_bias, no_deprecation_warning
    opt_a = GaLoreAdamW(_readme_groups(a), 0.01, (0.9, 0.999), 1e-6, 0.0, True, True)
    opt_b = galorekit.GaLoreAdamW(_readme_groups(b), lr=0.01, eps=1e-6)
    for step in range(4):
        for model, opt in ((a, opt_a), (b, opt_b)):
            _loss(model, step).backward()
            opt.step()
            opt.zero_grad()
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    assert "proj_right" in opt_a.state[a[0].weight] or "proj_left" in opt_a.state[a[0].weight]
    with pytest.raises(ValueError, match="unknown param group key 'ranks'"):
        GaLoreAdamW([{"params": [a[0].weight], "ranks": 4}])


def test_readme_layerwise_usage(drop_in):
    from galore_torch import GaLoreAdamW

    model = _model()
    galore_ids = {id(model[0].weight), id(model[2].weight)}
    optimizer_dict = {}
    for p in model.parameters():
        if id(p) in galore_ids:
            group = {
                "params": [p],
                "rank": 4,
                "update_proj_gap": 2,
                "scale": 0.25,
                "proj_type": "std",
            }
            optimizer_dict[p] = GaLoreAdamW([group], lr=0.01)
        else:
            optimizer_dict[p] = GaLoreAdamW([p], lr=0.01)

    def optimizer_hook(p):
        if p.grad is None:
            return
        optimizer_dict[p].step()
        optimizer_dict[p].zero_grad()

    for p in model.parameters():
        p.register_post_accumulate_grad_hook(optimizer_hook)
    before = [p.detach().clone() for p in model.parameters()]
    for step in range(3):
        _loss(model, step).backward()
    assert all(not torch.equal(p, q) for p, q in zip(model.parameters(), before))


def test_eight_bit_options(drop_in):
    pytest.importorskip("bitsandbytes")
    from galore_torch import GaLoreAdamW8bit

    model = _model()
    opt = GaLoreAdamW8bit(_readme_groups(model), 0.01, (0.9, 0.999), 1e-8, 0.0, False, 8, None, 64)
    assert opt.min_8bit_size == 64
    _loss(model, 0).backward()
    opt.step()
    for option, value in (
        ("amsgrad", True),
        ("percentile_clipping", 5),
        ("block_wise", False),
        ("is_paged", True),
        ("args", object()),
    ):
        with pytest.raises(ValueError, match=f"{option}="):
            GaLoreAdamW8bit(_readme_groups(_model()), **{option: value})


def test_adafactor_keeps_galore_torchs_relative_step_default(drop_in):
    from galore_torch import GaLoreAdafactor

    model = _model()
    with pytest.raises(ValueError, match="relative_step"):
        GaLoreAdafactor(_readme_groups(model), lr=0.01)
    opt = GaLoreAdafactor(_readme_groups(model), lr=0.01, relative_step=False)
    _loss(model, 0).backward()
    opt.step()


@pytest.mark.parametrize("optim", ["galore_adamw", "galore_adafactor", "galore_adamw_layerwise"])
def test_transformers_own_galore_path_gets_galorekit(tmp_path, drop_in, optim):
    from transformers import Trainer

    model = tiny_llama()
    args = training_args(tmp_path, optim=optim, gradient_accumulation_steps=1, num_train_epochs=1)
    trainer = Trainer(model=model, args=args, train_dataset=TokenDataset())
    trainer.train()
    opt = trainer.optimizer
    while hasattr(opt, "optimizer"):
        opt = opt.optimizer
    inner = list(opt.optimizer_dict.values()) if hasattr(opt, "optimizer_dict") else [opt]
    assert all(isinstance(o, galorekit.GaLoreAdamW | galorekit.GaLoreAdafactor) for o in inner)
    galore = [g for o in inner for g in o.param_groups if "rank" in g]
    assert galore and all(g["rank"] == 4 and g["update_proj_gap"] == 2 for g in galore)


def test_transformers_own_adafactor_layerwise_fails_where_galore_trainer_works(tmp_path):
    # transformers passes lr without relative_step=False to each layer-wise Adafactor, which
    # galore-torch (and so its drop-in) refuses; GaLoreTrainer builds it right
    from transformers import Trainer

    from galorekit.integrations.transformers import GaLoreTrainer

    args = training_args(
        tmp_path, optim="galore_adafactor_layerwise", gradient_accumulation_steps=1
    )
    with pytest.raises(ValueError, match="Cannot combine manual `lr` and `relative_step=True`"):
        Trainer(model=tiny_llama(), args=args, train_dataset=TokenDataset()).train()
    args = training_args(tmp_path, optim="galore_adafactor_layerwise", num_train_epochs=1)
    GaLoreTrainer(model=tiny_llama(), args=args, train_dataset=TokenDataset()).train()


def test_launcher_runs_a_program_with_the_drop_in(tmp_path):
    script = tmp_path / "train.py"
    script.write_text(
        "import sys\nfrom galore_torch import GaLoreAdamW\n"
        "print(GaLoreAdamW.__module__, sys.argv[1:])\n"
    )
    out = _python("", "-m", "galorekit.integrations.galore_torch_compat", str(script), "--lr", "1")
    assert out == "galorekit.integrations.galore_torch_compat ['--lr', '1']"
