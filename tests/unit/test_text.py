"""Text as a kind of data: which columns are text, the tokenizer parity between training and serving, the rule for
awkward text, and the text models (padding masked, any input a valid index, ONNX export equal to torch)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from tasks.common.errors import DataError
from tasks.common.tables import LABEL, describe, encode, fit_encoder, infer_text_columns
from tasks.shipped.rows import BadRow, encode_rows
from tasks.shipped.text import cleaned, encode_texts, load_tokenizer, takes_any_length, text_layout, trimmed
from tests.support.own_data import tickets

AWKWARD = [  # what real messages hold, and what a client may send
    "Caf\u00e9 CAFE cafe\u0301 na\u00efve \u00c5ngstr\u00f6m", "emoji \U0001f600\U0001f44d\U0001f3fd and \u2764\ufe0f",
    "&amp; &lt;b&gt;bold&lt;/b&gt; &#39;quoted&#39; <p>html</p>", "tab\there\nnew line\r\nand NUL\x00 bell\x07",
    "", "   \n\t ", "\u4e2d\u6587\u6587\u672c \u0627\u0644\u0639\u0631\u0628\u064a\u0629 \u0440\u0443\u0441\u0441\u043a\u0438\u0439",
    "refund " * 5000, "x" * 300, "\u200b\u200d zero width \ufeff",
]


@pytest.fixture(scope="module")
def fitted():
    frame = tickets(300, seed=1).rename(columns={"queue": LABEL})
    frame[LABEL] = frame[LABEL].astype("category").cat.codes.astype("int64")
    encoder = fit_encoder(frame, ["message"], vocab_size=300, max_tokens=32)
    return frame, encoder, describe(encoder)


def test_a_column_is_text_when_most_values_are_distinct_and_several_words_long():
    frame = tickets(200, seed=2).rename(columns={"queue": LABEL})
    frame["code"] = [f"A{i % 7}" for i in range(200)]  # a category: few values, one word
    frame["note"] = [f"id {i}" for i in range(200)]  # distinct, but two words: an identifier, not text
    assert infer_text_columns(frame, [], 0.5, 3.0) == ["message"]
    assert infer_text_columns(frame, ["note"], 0.5, 3.0) == ["note"]
    with pytest.raises(DataError, match=r"ingest.text_columns names \['nope'\]"):
        infer_text_columns(frame, ["nope"], 0.5, 3.0)


def test_training_and_the_service_give_identical_token_ids_for_awkward_text(fitted):
    """prepare's encoding (tables.encode) and the Bento's (rows.encode_rows, from the JSON spec alone) agree id for
    id, on unicode, emoji, HTML entities, control characters, empty and very long texts."""
    frame, encoder, spec = fitted
    awkward = pd.DataFrame({"message": AWKWARD, "channel": ["chat"] * len(AWKWARD), LABEL: 0})
    trained = encode(encoder, awkward)
    served = encode_rows([{"message": t, "channel": "chat"} for t in AWKWARD], spec)
    length = spec["text"][0]["length"]  # the longest training text's, in steps of 8, at most max_tokens
    assert length <= 32 and length % 8 == 0
    assert trained.shape == served.shape == (len(AWKWARD), text_layout(spec, trained.shape[1])["dense"] + length)
    np.testing.assert_array_equal(trained, served)
    ids = served[:, -length:]
    assert (ids[4] == 0).all() and (ids[5] == 0).all()  # empty and blank: no tokens, all padding
    assert (ids[7] != 0).all()  # 5,000 words: cut at the maximum length
    assert ids.max() < spec["vocab_size"] and (ids == np.round(ids)).all()


def test_the_same_texts_give_the_same_tokenizer_in_every_process():
    """A text model is rebuilt from its lineage: the tokenizer learnt in another process is the same file, byte for
    byte (tokenizers' WordPiece trainer was not: huggingface/tokenizers#1794)."""
    import subprocess
    import sys

    learn = """if True:
        import sys
        import numpy as np
        from tasks.common.tokenizer import train_tokenizer
        rng = np.random.default_rng(0)
        words = ["".join(rng.choice(list("abcdefghijklmnopqrstuvwxyz\u00e9\u00fc"), rng.integers(2, 10)))
                 for _ in range(3000)]
        texts = [" ".join(rng.choice(words, rng.integers(3, 30))) for _ in range(1500)]
        sys.stdout.write(train_tokenizer(texts, 4000))"""
    first, second = (subprocess.run([sys.executable, "-c", learn], capture_output=True, text=True, check=True).stdout
                     for _ in range(2))
    assert len(load_tokenizer(first).get_vocab()) == 4000
    assert first == second


def test_the_rule_for_control_characters_and_unreadable_values():
    assert cleaned("a\x00b\x07c\td\ne") == "a b c\td\ne"
    tokenizer = load_tokenizer(fit_encoder(pd.DataFrame({"t": ["a b c d"] * 4, LABEL: 0}), ["t"], 100, 8).tokenizer)
    assert (encode_texts(tokenizer, ["a\x00b"], 8)[0] == encode_texts(tokenizer, ["a b"], 8)[0]).all()
    spec = describe(fit_encoder(pd.DataFrame({"t": ["a b c d"] * 4, LABEL: 0}), ["t"], 100, 8))
    with pytest.raises(BadRow, match="lone surrogate"):
        encode_rows([{"t": "ok \ud800 not"}], spec)
    with pytest.raises(BadRow, match=r"row 0, column 't': expected text or null, got dict"):
        encode_rows([{"t": {"a": 1}}], spec)
    assert (encode_rows([{"t": None}], spec) == 0).all()


def test_rows_are_cut_after_their_last_token_in_each_text_column_alike():
    layout = {"dense": 2, "columns": 2, "length": 24, "vocab": 50}
    rows = np.zeros((3, 2 + 2 * 24), np.float32)
    rows[:, :2] = [[0.5, -1], [2, 3], [0, 1]]
    rows[0, 2:5] = [7, 8, 9]  # first column: 3 tokens
    rows[1, 2 + 24: 2 + 24 + 10] = 4  # second column: 10 tokens, so both columns keep 16
    cut = trimmed(rows, layout)
    assert cut.shape == (3, 2 + 2 * 16)
    np.testing.assert_array_equal(cut[:, :2], rows[:, :2])
    np.testing.assert_array_equal(cut[:, 2:18], rows[:, 2:18])
    np.testing.assert_array_equal(cut[:, 18:], rows[:, 26:42])
    assert trimmed(rows[[0, 2]], layout).shape == (2, 2 + 2 * 8)  # at least 8 tokens, in steps of 8
    rows[2, -1] = 3  # a token at the last place: nothing to cut
    assert trimmed(rows, layout) is rows and trimmed(rows, None) is rows


@pytest.mark.parametrize("family", ["transformer", "ngram"])
def test_text_models_mask_padding_take_any_value_and_export_to_onnx_alike(fitted, family, tmp_path):
    import onnxruntime as ort
    import torch

    from tasks.common.config import TrainParams
    from tasks.compress.variants import export_onnx, servable
    from tasks.nn.models import build_model

    frame, encoder, spec = fitted
    x = encode(encoder, frame)
    layout = text_layout(spec, x.shape[1])
    model = build_model(TrainParams(model=family, text_depth=1), (x.shape[1],), 3, layout).eval()
    odd = x[:4].copy()
    odd[0, layout["dense"]:] = 0  # an empty text: every key masked but one, no NaN
    odd[1, layout["dense"]:] = 1e9  # out of the vocabulary: clamped to a valid id, not an index error
    odd[2, layout["dense"]:] = -7.6
    with torch.no_grad():
        out = model(torch.from_numpy(odd))
        longer = x[4:5].copy()
        padded = model(torch.from_numpy(longer))
    assert torch.isfinite(out).all()
    export_onnx(servable(model, 1.0, image_input=False), x[:2], tmp_path / "m.onnx", any_length=True)
    session = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    onnx_out = session.run(None, {"images": x[:37]})[0]  # another batch size than exported with
    with torch.no_grad():
        torch_out = torch.softmax(model(torch.from_numpy(x[:37])), 1).numpy()
    np.testing.assert_allclose(onnx_out, torch_out, atol=1e-5)
    assert padded.shape == (1, 3)
    # a dynamic sequence length: short texts read without the padding up to the longest training text's length
    short = x[np.argsort((x[:, layout["dense"]:] != 0).sum(1))[:37]]
    cut = trimmed(short, layout)
    assert takes_any_length(session) and layout["dense"] + 8 <= cut.shape[1] < short.shape[1]
    np.testing.assert_allclose(session.run(None, {"images": cut})[0], session.run(None, {"images": short})[0],
                               atol=1e-5)


def test_a_pruned_transformer_exports_with_a_dynamic_length_and_answers_as_in_torch(fitted, tmp_path):
    """A Transformer beside another column (the layer over it kept whole), pruned for real, exports with a dynamic
    length and answers as in torch at a cut length."""
    import onnxruntime as ort
    import torch

    from tasks.common.config import TrainParams
    from tasks.compress.variants import export_onnx, prune_channels, servable
    from tasks.nn.models import build_model

    frame, encoder, spec = fitted
    x = encode(encoder, frame)
    layout = text_layout(spec, x.shape[1])
    torch.manual_seed(0)
    model = build_model(TrainParams(text_depth=1, dropout=0.0), (x.shape[1],), 3, layout).eval()
    pruned = prune_channels(model, x, 0.5, 3).eval()
    assert layout["dense"] and sum(p.numel() for p in pruned.parameters()) < sum(p.numel() for p in model.parameters())
    export_onnx(servable(pruned, 1.0, image_input=False), x[:2], tmp_path / "p.onnx", any_length=True)
    session = ort.InferenceSession(str(tmp_path / "p.onnx"), providers=["CPUExecutionProvider"])
    short = trimmed(x[np.argsort((x[:, layout["dense"]:] != 0).sum(1))[:20]], layout)
    with torch.no_grad():
        expected = torch.softmax(pruned(torch.from_numpy(short)), 1).numpy()
    np.testing.assert_allclose(session.run(None, {"images": short})[0], expected, atol=1e-5)


def test_a_transformer_ignores_padding(fitted):
    """The same text with more padding after it (a longer maximum length) gets the same answer."""
    import torch

    from tasks.common.config import TrainParams
    from tasks.nn.models import TextNet

    frame, encoder, spec = fitted
    length = spec["text"][0]["length"]
    ids = encode(encoder, frame)[:8, -length:]
    torch.manual_seed(0)
    short = TextNet({"dense": 0, "columns": 1, "length": length, "vocab": spec["vocab_size"]}, "transformer",
                    TrainParams(text_depth=1, dropout=0.0), 3).eval()
    long = TextNet({"dense": 0, "columns": 1, "length": length + 16, "vocab": spec["vocab_size"]}, "transformer",
                   TrainParams(text_depth=1, dropout=0.0), 3).eval()
    state = short.state_dict()
    state["position"] = torch.cat([state["position"], torch.zeros(1, 16, state["position"].shape[2])], dim=1)
    long.load_state_dict(state)
    with torch.no_grad():
        a = short(torch.from_numpy(ids))
        b = long(torch.from_numpy(np.hstack([ids, np.zeros((8, 16), np.float32)])))
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_the_sweep_space_takes_the_text_models_knobs():
    from jobs.sweep.space import check
    from tasks.common.config import Params, SweepDimension
    from tasks.common.errors import ConfigError

    params = Params()
    check({"train.model": SweepDimension(choices=["transformer", "ngram"]), "train.text_dim": SweepDimension(
        choices=[32, 64]), "train.text_depth": SweepDimension(low=1, high=3),
        "train.ngram_buckets": SweepDimension(choices=[0, 16384])}, params)
    with pytest.raises(ConfigError, match="text_dim"):
        check({"train.text_dim": SweepDimension(low=2, high=8)}, params)


def test_served_text_is_checked_for_skew_by_length_and_unknown_share_not_by_ids(fitted):
    from tasks.shipped.skew import drift, expectations, statistics, violations

    frame, encoder, spec = fitted
    x = encode(encoder, frame)
    layout = text_layout(spec, x.shape[1])
    expected = expectations(x, "table", "v1", layout)
    names = set(expected["statistics"])
    assert {"text_0_tokens", "text_0_unknown_share"} <= names
    assert not [n for n in names if n.startswith("feature_") and int(n.split("_")[1]) >= layout["dense"]]
    # Messages in a script the training texts never used: every character is unknown to the vocabulary
    russian = "\u0441\u0440\u043e\u0447\u043d\u043e \u0432\u0435\u0440\u043d\u0438\u0442\u0435 "
    gibberish = encode_rows([{"message": russian * 40, "channel": "chat"}] * 50, spec)
    found = statistics(gibberish, "table", layout)
    assert (found["text_0_unknown_share"] > 0.5).all()
    assert violations(gibberish, "table", expected)["text_0_unknown_share"] == 50
    assert drift(gibberish, "table", expected, 0.25)["drifted"]
    assert not drift(x[:200], "table", expected, 0.25)["drifted"]


def test_int8_quantizes_the_embedding_table_of_a_text_model(tmp_path):
    """A vocabulary of a few thousand words is most of a text model: int8 must shrink it too, answering alike."""
    import onnxruntime as ort
    import torch

    from tasks.common.config import TrainParams
    from tasks.compress.variants import export_onnx, quantize_int8, servable
    from tasks.nn.models import build_model

    rng = np.random.default_rng(0)
    words = ["".join(rng.choice(list("abcdefghijklmnopqrstuvwxyz"), 6)) for _ in range(3000)]
    frame = tickets(1500, seed=5).drop(columns=["channel"]).rename(columns={"queue": LABEL}).assign(**{LABEL: 0})
    frame["message"] = [m + " " + " ".join(rng.choice(words, 4)) for m in frame["message"]]
    encoder = fit_encoder(frame, ["message"], vocab_size=4000, max_tokens=32)
    x, spec = encode(encoder, frame), describe(encoder)
    torch.manual_seed(0)
    model = build_model(TrainParams(text_depth=1), (x.shape[1],), 3, text_layout(spec, x.shape[1])).eval()
    export_onnx(servable(model, 1.0, image_input=False), x[:2], tmp_path / "fp32.onnx")
    quantize_int8(tmp_path / "fp32.onnx", tmp_path / "int8.onnx", x[:256], "minmax")
    assert (tmp_path / "int8.onnx").stat().st_size < 0.4 * (tmp_path / "fp32.onnx").stat().st_size
    fp32, int8 = (ort.InferenceSession(str(tmp_path / f"{n}.onnx")).run(None, {"images": x[:500]})[0]
                  for n in ("fp32", "int8"))
    difference = np.abs(fp32 - int8)
    assert difference.mean() < 0.005 and difference.max() < 0.05, (difference.mean(), difference.max())
