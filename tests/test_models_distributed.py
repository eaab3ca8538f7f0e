"""The transformers (distid's ViT, HF's ViT and GPT-2) under DDP and FSDP, 2 gloo ranks, for subspace
and LoRA: both strategies end at the same parameters, hand the collectives the bytes the formulas
say, and GPT-2's tied embedding/head stays one tensor. HF models skip without transformers."""

import pytest
import torch

from datasets_for_tests import DATA_ROOT, have_mnist

N = 2


def _same_end(ddp, fsdp):
    """Every rank ends with the same trainable parameters, under both strategies."""
    torch.testing.assert_close(fsdp[0][1], ddp[0][1], rtol=1e-4, atol=1e-6)
    for results in (ddp, fsdp):
        for r in results:
            assert torch.equal(r[1], results[0][1])


@pytest.mark.parametrize("method", ["subspace", "lora"])
def test_hf_gpt2_trains_under_ddp_and_fsdp_with_its_tie_intact(dist_pool, method):
    pytest.importorskip("transformers")
    pool = dist_pool(N)
    ddp = pool.run("rank_targets:hf_gpt2_steps", method, "ddp", timeout=180)
    fsdp = pool.run("rank_targets:hf_gpt2_steps", method, "fsdp", timeout=180)
    _same_end(ddp, fsdp)
    for results in (ddp, fsdp):
        losses, _, measured, formula, tied = results[0]
        assert all(r[4] for r in results), "lm_head.weight is no longer transformer.wte.weight"
        _bytes_as_formula(measured, formula, frozen_units=method == "lora")
        assert losses[-1] < losses[0]
    d_or_adapters = 4 * (64 if method == "subspace" else 2 * 2 * (32 + 96))
    assert ddp[0][2] == {"all_reduce": d_or_adapters, "total": d_or_adapters}


def test_hf_gpt2_full_training_under_fsdp_gathers_the_tied_weight_once(dist_pool):
    pytest.importorskip("transformers")
    pool = dist_pool(N)
    ddp = pool.run("rank_targets:hf_gpt2_steps", "full", "ddp", timeout=180)
    fsdp = pool.run("rank_targets:hf_gpt2_steps", "full", "fsdp", timeout=180)
    _same_end(ddp, fsdp)
    assert ddp[0][2]["all_reduce"] == 4 * 34_688  # unique parameters: the tie is not sent twice
    assert fsdp[0][2] == pytest.approx(fsdp[0][3]) and all(r[4] for r in fsdp)


def _bytes_as_formula(measured, formula, frozen_units=False):
    """Exactly the formula, except that under FSDP2 a frozen unit no gradient flows through (GPT-2's
    position embedding under LoRA, a ViT's patch embedding) is gathered for the forward only:
    FSDP2 all-gathers a unit before its backward only when autograd reaches it (or prefetches it)."""
    if not (frozen_units and "all_gather" in measured):
        assert measured == pytest.approx(formula), (measured, formula)
        return
    assert measured["reduce_scatter"] == formula["reduce_scatter"]
    assert formula["all_gather"] / 2 < measured["all_gather"] <= formula["all_gather"], (measured, formula)


VIT_LORA = {"vit": "q,v", "hf_vit": None}  # hf_vit: the q/v names of the installed transformers


def _run(pool, tmp_path, model, method, strategy):
    targets = VIT_LORA[model]
    if model == "hf_vit":
        from distid.models import build_model
        from distid.models.hf import qv_targets

        targets = ",".join(qv_targets(build_model("hf_vit")))
    over = [f"data.root={DATA_ROOT}", f"model.name={model}", f"train.method={method}", f"dist.strategy={strategy}",
            "train.steps=4", "train.log_every=4", "train.global_batch=32", "train.optimizer=sgd",
            "train.lr=0.5" if method == "subspace" else "train.lr=0.05", "subspace.d=100",
            "lora.rank=2", f"lora.targets={targets}"]
    return pool.run("rank_targets:model_train_run", over, str(tmp_path / f"{model}-{method}-{strategy}"),
                    timeout=240)


@pytest.mark.skipif(not have_mnist(), reason="needs MNIST: python -m distid.data fetch mnist")
@pytest.mark.parametrize("model", ["vit", "hf_vit"])
@pytest.mark.parametrize("method", ["subspace", "lora"])
def test_vits_train_through_train_run_under_ddp_and_fsdp(dist_pool, tmp_path, model, method):
    if model == "hf_vit":
        pytest.importorskip("transformers")
    pool = dist_pool(N)
    ddp, fsdp = (_run(pool, tmp_path, model, method, s) for s in ("ddp", "fsdp"))
    _same_end(ddp, fsdp)
    if method == "subspace":
        assert ddp[0][1].abs().max() > 1e-4, "d did not move from zero"
    for results in (ddp, fsdp):
        s = results[0][0]
        _bytes_as_formula(s["comm_payload_bytes_per_step"], s["comm_payload_formula"], frozen_units=method == "lora")
    trainable = 100 if method == "subspace" else {"vit": 8 * 2 * (96 + 96), "hf_vit": 4 * 2 * (64 + 64)}[model]
    assert ddp[0][0]["trainable_params"] == trainable
    assert ddp[0][0]["total_params"] == {"vit": 306_826, "hf_vit": 72_074}[model]
