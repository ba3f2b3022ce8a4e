"""CLIP tokenizer and text encoder: exact ids and float32 parity against transformers."""

import json
import pathlib

import jax
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from jaxdiff.convert import clip as convert_clip
from jaxdiff.errors import CheckpointError, KeyMismatchError
from jaxdiff.models import clip
from jaxdiff.models.clip_tokenizer import CLIPTokenizer, pre_tokenize

FIXTURES = pathlib.Path(__file__).parent / "fixtures" / "latent"
SD = FIXTURES / "sd_tiny"


@pytest.fixture(scope="module")
def tokenizer():
    return CLIPTokenizer.from_folder(SD / "tokenizer")


@pytest.fixture(scope="module")
def reference():
    return np.load(FIXTURES / "latent.npz"), json.loads((FIXTURES / "latent.json").read_text())


def tolerance(ref):
    return 1e-5 * max(1.0, float(np.max(np.abs(ref))))


def test_fixture_prompts_ids_exact(tokenizer, reference):
    z, meta = reference
    ids = tokenizer(meta["config"]["prompts"], max_length=z["text_input_ids"].shape[1])
    np.testing.assert_array_equal(ids, z["text_input_ids"])


def test_more_prompts_ids_exact(tokenizer):
    """Punctuation, numbers, contractions, unicode (NFC), special tokens, truncation."""
    ref = json.loads((FIXTURES / "clip_tokens.json").read_text())
    ids = tokenizer(ref["prompts"], max_length=ref["max_length"])
    for prompt, want, got in zip(ref["prompts"], ref["input_ids"], ids):
        assert got.tolist() == want, prompt
    long = ids[[len(p) > 300 for p in ref["prompts"]].index(True)]
    assert long[-1] == tokenizer.eos_id and tokenizer.pad_id not in long[:-1]


def test_pad_token_from_the_folder(tmp_path):
    """SD 2.x's tokenizer pads with "!" (id 0), named in special_tokens_map.json."""
    for name in ("vocab.json", "merges.txt"):
        (tmp_path / name).write_bytes((SD / "tokenizer" / name).read_bytes())
    (tmp_path / "special_tokens_map.json").write_text('{"pad_token": {"content": "!"}}')
    tok = CLIPTokenizer.from_folder(tmp_path)
    ids = tok("a photo of a cat")[0]
    assert tok.pad_id == 0 and ids[6] == tok.eos_id and set(ids[7:]) == {0}


def test_pre_tokenize_classes():
    assert pre_tokenize("don't 42 a,b!!") == ["don", "'t", "4", "2", "a", ",", "b", "!!"]


def test_tokenizer_bad_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="vocab.json"):
        CLIPTokenizer.from_folder(tmp_path)
    (tmp_path / "vocab.json").write_text('{"a": 0}')
    (tmp_path / "merges.txt").write_text("#version: 0.2\na b\n")
    with pytest.raises(CheckpointError, match="special tokens"):
        CLIPTokenizer.from_folder(tmp_path)


def _encode(folder, ids):
    params, meta = convert_clip.convert_clip_text(folder)
    model = clip.build(meta["model_config"])
    with jax.default_matmul_precision("highest"):
        return model.apply({"params": params}, ids), meta


def test_text_encoder_parity(reference):
    z, _ = reference
    out, meta = _encode(SD / "text_encoder", z["text_input_ids"])
    assert meta["source"]["key_prefix"] == "text_model."
    for name, ref in (
        ("last_hidden_state", "text_last_hidden"),
        ("penultimate_normed", "text_penultimate_normed"),
    ):
        err = np.max(np.abs(np.asarray(out[name]) - z[ref]))
        assert err <= tolerance(z[ref]), (name, err)


def test_text_encoder_gelu_unprefixed_keys():
    """Another configuration (exact gelu, 3 layers, 2 heads), saved by transformers >= 5."""
    z = np.load(FIXTURES / "clip_gelu_io.npz")
    out, meta = _encode(FIXTURES / "clip_gelu", z["input_ids"])
    assert meta["source"]["key_prefix"] == ""
    for name, ref in (
        ("last_hidden_state", "last_hidden"),
        ("penultimate_normed", "penultimate_normed"),
        ("pooled", "pooled"),
    ):
        err = np.max(np.abs(np.asarray(out[name]) - z[ref]))
        assert err <= tolerance(z[ref]), (name, err)


def test_both_key_layouts_give_one_tree(tmp_path):
    sd = load_file(str(SD / "text_encoder" / "model.safetensors"))
    cfg = convert_clip.read_config(SD / "text_encoder")
    want = convert_clip.state_dict_to_params(sd, cfg)
    short = {k.removeprefix("text_model."): v for k, v in sd.items()}
    short["embeddings.position_ids"] = np.arange(77)[None]  # the buffer old versions saved
    got = convert_clip.state_dict_to_params(short, cfg)
    jax.tree_util.tree_map(np.testing.assert_array_equal, got, want)
    back = convert_clip.params_to_state_dict(got, cfg)
    assert sorted(back) == sorted(sd)
    (tmp_path / "config.json").write_text((SD / "text_encoder" / "config.json").read_text())
    save_file(short, str(tmp_path / "model.safetensors"))
    params, meta = convert_clip.convert_clip_text(tmp_path)
    assert meta["source"]["key_prefix"] == ""


def test_bad_state_dicts():
    sd = load_file(str(SD / "text_encoder" / "model.safetensors"))
    cfg = convert_clip.read_config(SD / "text_encoder")
    mixed = dict(sd)
    mixed["final_layer_norm.weight"] = mixed.pop("text_model.final_layer_norm.weight")
    with pytest.raises(CheckpointError, match="mixed"):
        convert_clip.state_dict_to_params(mixed, cfg)
    wrong = {**cfg, "num_hidden_layers": 3}
    with pytest.raises(KeyMismatchError, match="layers.2"):
        convert_clip.state_dict_to_params(sd, wrong)
    with pytest.raises(ValueError, match="hidden_act"):
        clip.normalize_config({**cfg, "hidden_act": "swish"})


def test_not_a_text_encoder_folder(tmp_path):
    (tmp_path / "config.json").write_text('{"_class_name": "AutoencoderKL"}')
    with pytest.raises(CheckpointError, match="CLIPTextModel"):
        convert_clip.convert_clip_text(tmp_path)
