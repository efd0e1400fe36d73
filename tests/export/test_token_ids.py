"""Token ids at or above the model's vocab_size are a one-line error: the prompt of
``jaxmoe generate`` on an imported small-vocabulary model, a tokenizer.json larger than the
imported model's vocabulary, and training data whose tokenizer outgrows the model."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from jaxmoe.cli import main
from jaxmoe.config import Config, DataConfig
from jaxmoe.data.tokenizers import ByteTokenizer, check_token_ids, check_tokenizer_fits, train_bpe_tokenizer
from jaxmoe.errors import DataError
from jaxmoe.export import save_hf
from jaxmoe.models import lm
from jaxmoe.models.lm import LMConfig
from jaxmoe.moe.config import MoEConfig


def _one_line(capsys, argv, needle):
    assert main(argv) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and needle in err and len(err.splitlines()) == 1, err
    return err


@pytest.fixture
def small_vocab_hf(tmp_path):
    """A DeepSeekMoE directory whose vocabulary (64 ids) is smaller than the byte tokenizer's."""
    model = LMConfig(vocab_size=64, embed_dim=16, num_layers=2, num_heads=2, max_seq_len=32,
                     moe=MoEConfig(num_experts=4, experts_per_token=2, expert_ffn_dim=8, first_k_dense=1,
                                   dense_ffn_dim=16))
    shapes = jax.eval_shape(lambda: lm.init(jax.random.PRNGKey(0), model))
    rng = np.random.RandomState(0)
    params = jax.tree.map(lambda s: (0.2 * rng.standard_normal(s.shape)).astype(np.float32), shapes)
    out = tmp_path / "hf"
    save_hf(Config(model=model, data=DataConfig(seq_len=16)), params, "deepseek", out)
    return out


def test_check_functions():
    check_token_ids([0, 5, 63], 64)
    check_token_ids([], 64)
    with pytest.raises(DataError, match="token id 72, but the model's vocabulary has only 64 ids") as e:
        check_token_ids(ByteTokenizer().encode("Hello"), 64)
    assert "\n" not in str(e.value)
    check_tokenizer_fits(259, 259)
    with pytest.raises(DataError, match="has 259 tokens but the model's vocab_size is 64"):
        check_tokenizer_fits(259, 64, "the byte tokenizer")


def test_generate_prompt_outside_the_vocabulary_is_one_line(small_vocab_hf, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["import", "--hf", str(small_vocab_hf), "--out", str(run)]) == 0
    capsys.readouterr()
    _one_line(capsys, ["generate", "--checkpoint", str(run), "--prompt", "Hello", "--max-new-tokens", "3"],
              "the prompt has token id 72")


def test_import_of_a_tokenizer_larger_than_the_model_is_refused(small_vocab_hf, tmp_path, capsys):
    texts = ["the quick brown fox jumps over the lazy dog " * 20, "hello world " * 30]
    train_bpe_tokenizer(texts, 300, small_vocab_hf / "tokenizer.json")
    run = tmp_path / "run"
    _one_line(capsys, ["import", "--hf", str(small_vocab_hf), "--out", str(run)], "but the model's vocab_size is 64")
    assert not run.exists()


def test_training_data_with_a_larger_tokenizer_is_one_line(tmp_path, capsys):
    _one_line(capsys, ["train", "--config", "configs/lm_tiny.yaml", "model.vocab_size=100", "model.embed_dim=16",
                       "model.num_layers=1", "data.seq_len=16", f"train.output_dir={tmp_path / 'r'}"],
              "model.vocab_size is 100")
