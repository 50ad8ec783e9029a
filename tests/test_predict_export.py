"""Predict, export and ensemble on tiny checkpoints trained once for the module, through the CLI."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

from tests.conftest import QUIET, ROOT, read_metrics, run_cli


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def train(run_dir: Path, *args: str) -> Path:
    proc = run_cli(
        "src.train", *args, "trainer.precision=32-true", f"hydra.run.dir={run_dir}", *QUIET
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return run_dir


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("predict_export")


@pytest.fixture(scope="module")
def text_data(tiny_text_data, workdir) -> Path:
    """A private copy of the tiny text data: a test moves it away to show predict needs none."""
    return Path(shutil.copytree(tiny_text_data, workdir / "text_data"))


def text_run_args(tiny_bert: Path, data: Path, workdir: Path, seed: int) -> list[str]:
    return [
        "task=text_csv",
        f"model.pretrained={tiny_bert}",
        f"data.train_file={data / 'train.csv'}",
        f"data.test_file={data / 'test.csv'}",
        "data.label_names=[neg,pos]",
        "data.val_fraction=0.25",
        "data.batch_size=8",
        "data.max_length=32",  # under the tiny BERT's 64 positions: long texts are cut, not fatal
        "optimizer.lr=3e-3",
        "trainer.max_epochs=2",
        "callbacks.model_checkpoint.save_top_k=2",  # both epochs: two ensemble members
        f"seed={seed}",
        f"paths.cache_dir={workdir / 'cache'}",
    ]


@pytest.fixture(scope="module")
def text_run(tiny_bert, text_data, workdir) -> Path:
    return train(workdir / "text_run", *text_run_args(tiny_bert, text_data, workdir, seed=42))


@pytest.fixture(scope="module")
def text_ckpt(text_run) -> Path:
    return Path(read_metrics(text_run)["best_ckpt_path"])


@pytest.fixture(scope="module")
def image_ckpt(tiny_images, workdir) -> Path:
    run_dir = train(
        workdir / "image_run",
        "task=image_folder",
        "model=resnet18",
        "model.weights=null",
        "model.image_size=32",
        f"data.root={tiny_images}",
        "data.num_workers=0",
        "data.batch_size=8",
        "trainer.max_epochs=1",
    )
    return Path(read_metrics(run_dir)["best_ckpt_path"])


def checkpoint_probs(ckpt: Path, texts: list[str]) -> torch.Tensor:
    """Reference probabilities: the checkpoint's module run in this process, on texts truncated
    to the run's max_length as in training."""
    from src.predict import text_batches
    from src.saved_run import load_run

    model = load_run(ckpt)
    max_length = model.max_length
    batch = next(text_batches(model.processor, texts, None, max_length, len(texts)))
    with torch.inference_mode():
        return torch.softmax(model.module(batch), dim=-1)


def compose_entry(config_name: str, *overrides: str):
    """An entry point's real config, composed as its CLI would, for an in-process call."""
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose(config_name, overrides=list(overrides))


# --------------------------------------------------------------------------- predict


def test_predict_text_file_without_training_data(text_run, text_ckpt, text_data, workdir) -> None:
    test_csv = workdir / "to_label.csv"
    shutil.copy(text_data / "test.csv", test_csv)
    out = workdir / "pred" / "text.csv"
    moved = text_data.with_name("text_data_gone")
    text_data.rename(moved)  # no training data anywhere: predict must not need it
    try:
        proc = run_cli(
            "src.predict",
            f"ckpt_path={text_ckpt}",
            f"input={test_csv}",
            f"out={out}",
            "batch_size=16",
            f"hydra.run.dir={workdir / 'pred_run'}",
        )
    finally:
        moved.rename(text_data)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = read_csv(out)
    truth = read_csv(test_csv)
    assert list(rows[0]) == ["text", "label", "predicted", "prob_neg", "prob_pos"]
    assert [(r["text"], r["label"]) for r in rows] == [(t["text"], t["label"]) for t in truth]
    for r in rows:
        assert float(r["prob_neg"]) + float(r["prob_pos"]) == pytest.approx(1.0, abs=1e-5)
        assert r["predicted"] == ("pos" if float(r["prob_pos"]) > 0.5 else "neg")
    # Label names come from the checkpoint; the accuracy is the one the run measured on test.csv.
    acc = sum(
        r["predicted"] == ["neg", "pos"][int(t["label"])] for r, t in zip(rows, truth, strict=True)
    ) / len(rows)
    assert acc == pytest.approx(read_metrics(text_run)["test/acc"], abs=1e-6)


def test_predict_sentences_in_process_match_checkpoint(text_ckpt, workdir) -> None:
    from src.predict import predict

    sentences = ["the film was really superb", "a dull and boring plot"]
    out = workdir / "pred_list"  # a folder: the CSV goes inside it
    path = predict(
        compose_entry(
            "predict",
            f"ckpt_path={text_ckpt}",
            "input=[" + ",".join(f"'{t}'" for t in sentences) + "]",
            f"out={out}",
        )
    )
    assert path == out / "predictions.csv"
    rows = read_csv(path)
    assert [r["input"] for r in rows] == sentences
    expected = checkpoint_probs(text_ckpt, sentences)
    for row, ref in zip(rows, expected, strict=True):
        assert float(row["prob_pos"]) == pytest.approx(float(ref[1]), abs=1e-5)


def test_predict_image_folder_and_file(image_ckpt, tiny_images, workdir) -> None:
    from src.predict import predict

    rows = read_csv(
        predict(
            compose_entry(
                "predict",
                f"ckpt_path={image_ckpt}",
                f"input={tiny_images}",
                "batch_size=7",
                f"out={workdir / 'images.csv'}",
            )
        )
    )
    images = sorted(p for p in tiny_images.rglob("*") if p.is_file())
    assert [Path(r["input"]) for r in rows] == images  # the GIF included, order kept
    assert list(rows[0])[1:] == ["predicted", "prob_blue", "prob_red"]
    assert all(r["predicted"] in ("blue", "red") for r in rows)

    one = images[3]
    (row,) = read_csv(
        predict(
            compose_entry(
                "predict", f"ckpt_path={image_ckpt}", f"input={one}", f"out={workdir / 'one.csv'}"
            )
        )
    )
    same = next(r for r in rows if Path(r["input"]) == one)
    assert float(row["prob_red"]) == pytest.approx(float(same["prob_red"]), abs=1e-5)


# Over the tiny BERT's 64 positions (as a 600-word review is over BERT's 512): fatal untruncated.
LONG_TEXT = " ".join(["the film was really good and very fun"] * 30)
# Over the run's max_length (32), under the positions: untruncated, it is scored differently.
MEDIUM_TEXT = " ".join(["a dull plot and a boring story"] * 6)


def test_predict_keeps_the_input_columns(text_ckpt, workdir) -> None:
    """The output is the input file's columns, in their order (ids kept verbatim), then predicted
    and prob_<label>; names the input already uses get a suffix instead of a duplicate header."""
    data = workdir / "with_ids.csv"
    texts = ["the film was awful", 'a "lovely", fun story', LONG_TEXT, MEDIUM_TEXT]
    rows = [
        {"review_id": f"00{i}", "text": t, "predicted": "old", "prob_pos": "0.1", "source": "web"}
        for i, t in enumerate(texts)
    ]
    with data.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    out = workdir / "with_ids_predictions.csv"
    proc = run_cli(
        "src.predict",
        f"ckpt_path={text_ckpt}",
        f"input={data}",
        f"out={out}",
        f"hydra.run.dir={workdir / 'pred_ids_run'}",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "predicted_1, prob_neg_1, prob_pos_1" in proc.stderr
    got = read_csv(out)
    assert list(got[0]) == [*rows[0], "predicted_1", "prob_neg_1", "prob_pos_1"]
    assert [{k: r[k] for k in rows[0]} for r in got] == rows
    expected = checkpoint_probs(text_ckpt, texts)  # long texts truncated as in training
    for r, ref in zip(got, expected, strict=True):
        assert float(r["prob_pos_1"]) == pytest.approx(float(ref[1]), abs=1e-5)
        assert r["predicted_1"] == ("pos" if float(r["prob_pos_1"]) > 0.5 else "neg")


def test_predict_keeps_jsonl_fields(text_ckpt, workdir) -> None:
    from src.predict import predict

    data = workdir / "new.jsonl"
    records = [
        {"id": 7, "text": "a lovely film", "meta": {"lang": "en"}},
        {"id": 8, "text": "a dull plot", "meta": None},
    ]
    data.write_text("".join(json.dumps(r) + "\n" for r in records))
    out = predict(
        compose_entry(
            "predict", f"ckpt_path={text_ckpt}", f"input={data}", f"out={workdir / 'jsonl.csv'}"
        )
    )
    got = read_csv(out)
    assert list(got[0]) == ["id", "text", "meta", "predicted", "prob_neg", "prob_pos"]
    assert [(r["id"], r["text"], r["meta"]) for r in got] == [
        ("7", "a lovely film", '{"lang": "en"}'),
        ("8", "a dull plot", ""),
    ]


def test_predict_refuses_to_overwrite_its_input(text_ckpt, workdir) -> None:
    data = workdir / "labelled" / "predictions.csv"
    data.parent.mkdir()
    data.write_text("text,label\nthe film was awful,0\na lovely story,1\n")
    before = data.read_bytes()
    # out= the file itself, or its folder (where the CSV would be predictions.csv): both refused.
    for out in (data, data.parent):
        proc = run_cli(
            "src.predict",
            f"ckpt_path={text_ckpt}",
            f"input={data}",
            f"out={out}",
            f"hydra.run.dir={workdir / 'pred_same_run'}",
        )
        assert proc.returncode == 2, proc.stderr[-3000:]
        assert "Traceback" not in proc.stderr
        (line,) = [x for x in proc.stderr.splitlines() if x.startswith("error:")]
        assert f"out={str(data)!r} is the input file" in line
        assert data.read_bytes() == before


@pytest.mark.parametrize("value", ["reviews.cvs", "data/new_reviews", "new_reviews.csv"])
def test_predict_missing_path_like_input_is_an_error(value, text_ckpt, workdir) -> None:
    """A mistyped path is not scored as a one-sentence text (text= says a string is text)."""
    out = workdir / "pathlike" / "p.csv"
    proc = run_cli(
        "src.predict",
        f"ckpt_path={text_ckpt}",
        f"input={value}",
        f"out={out}",
        f"hydra.run.dir={workdir / 'pred_pathlike_run'}",
    )
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert f"error: input={value!r}: no such file" in proc.stderr
    if not value.endswith(".csv"):  # not plainly a file name: the message says how to mean text
        assert "give text=" in proc.stderr
    assert not out.exists()


def test_predict_text_key(text_ckpt, workdir) -> None:
    """text= takes sentences, also ones that look like file names; text= with input= is refused."""
    out = workdir / "text_key.csv"
    sentences = ["reviews.cvs", "the plot was dull, and boring", "a lovely film"]
    proc = run_cli(
        "src.predict",
        f"ckpt_path={text_ckpt}",
        "text=[reviews.cvs,'the plot was dull, and boring',a lovely film]",
        f"out={out}",
        f"hydra.run.dir={workdir / 'pred_text_run'}",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = read_csv(out)
    assert [r["input"] for r in rows] == sentences
    for row, ref in zip(rows, checkpoint_probs(text_ckpt, sentences), strict=True):
        assert float(row["prob_pos"]) == pytest.approx(float(ref[1]), abs=1e-5)

    proc = run_cli(
        "src.predict",
        f"ckpt_path={text_ckpt}",
        "text=a lovely film",
        f"input={out}",
        f"hydra.run.dir={workdir / 'pred_text_run'}",
    )
    assert proc.returncode == 2 and "not both" in proc.stderr, proc.stderr[-3000:]


# Runs `python -m src.predict ARGS` in this interpreter, then reports which heavy modules it
# imported: the input checks must fail before torch (and the checkpoint) are touched.
IMPORT_PROBE = """
import runpy, sys
sys.argv = ["src.predict", *sys.argv[1:]]
code = 0
try:
    runpy.run_module("src.predict", run_name="__main__", alter_sys=True)
except SystemExit as e:
    code = e.code
heavy = [m for m in ("torch", "lightning", "transformers") if m in sys.modules]
print(f"probe: exit={code} heavy={heavy}", file=sys.stderr)
"""

CHECKED_FIRST = {
    "missing_file": (["input={root}/gone/new.csv"], "no such file"),
    "path_like": (["input=reviews.cvs"], "input='reviews.cvs': no such file or folder"),
    "missing_column": (["input={csv}", "text_column=review"], "column 'review' not in"),
    "out_is_input": (["input={csv}", "out={csv}"], "is the input file"),
    "text_and_input": (["text=great", "input={csv}"], "not both"),
    "nothing": ([], "nothing to predict"),
    "unwritable_out": (["text=great", "out={csv}/p.csv"], "is a file, not a folder"),
    "bad_suffix": (["input={root}/notes.txt"], "suffix '.txt'"),
}


@pytest.mark.parametrize("name", list(CHECKED_FIRST))
def test_predict_checks_its_input_before_the_checkpoint_and_torch(name, tmp_path) -> None:
    (tmp_path / "in.csv").write_text("text,label\ngood,1\n")
    (tmp_path / "notes.txt").write_text("good\n")
    corrupt = tmp_path / "corrupt.ckpt"  # read first, it would be the error
    corrupt.write_bytes(b"PK\x03\x04 not a checkpoint")
    args, needle = CHECKED_FIRST[name]
    fill = {"root": tmp_path, "csv": tmp_path / "in.csv"}
    proc = subprocess.run(
        [sys.executable, "-c", IMPORT_PROBE, f"ckpt_path={corrupt}"]
        + [a.format(**fill) for a in args]
        + [f"hydra.run.dir={tmp_path / 'run'}"],
        cwd=ROOT,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    err = proc.stderr
    assert needle in err and "checkpoint" not in err, err[-2000:]
    assert "probe: exit=2 heavy=[]" in err, err[-2000:]
    assert (tmp_path / "in.csv").read_text() == "text,label\ngood,1\n"


def test_predict_image_suffixes_match_the_data_reader() -> None:
    from src.data.image import IMAGE_SUFFIXES
    from src.predict_input import IMAGE_SUFFIXES as PREDICT_SUFFIXES

    assert PREDICT_SUFFIXES == IMAGE_SUFFIXES


def assert_default_modes(folder: Path) -> None:
    """Files 0666 and folders 0777 less the umask, as open() and mkdir make them (not 0600)."""
    umask = os.umask(0)
    os.umask(umask)
    for path in [folder, *folder.rglob("*")]:
        want = (0o777 if path.is_dir() else 0o666) & ~umask
        assert path.stat().st_mode & 0o777 == want, f"{path}: {oct(path.stat().st_mode & 0o777)}"


# --------------------------------------------------------------------------- export


def export_in_process(ckpt: Path, fmt: str, out: Path) -> dict:
    """The export entry point with its real config, without a subprocess per format."""
    from src.export import export

    return export(compose_entry("export", f"ckpt_path={ckpt}", f"format={fmt}", f"out={out}"))


def test_export_hf_pipeline_predicts_like_ftlab(text_ckpt, workdir) -> None:
    """The export's tokenizer carries the run's max_length: transformers' pipeline, asked to
    truncate, scores long texts as ftlab does (untruncated, the long one does not even run)."""
    out = workdir / "hf"
    proc = run_cli(
        "src.export",
        f"ckpt_path={text_ckpt}",
        "format=hf",
        f"out={out}",
        f"hydra.run.dir={workdir / 'export_run'}",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    from transformers import AutoTokenizer, pipeline

    info = json.loads((out / "export.json").read_text())
    assert info["max_length"] == 32 and info["pipeline_kwargs"] == {"truncation": True}
    assert AutoTokenizer.from_pretrained(out).model_max_length == 32
    sentences = [
        "the film was awful",
        "a lovely and fun story",
        "the plot was dull and boring",
        LONG_TEXT,
        MEDIUM_TEXT,
    ]
    classify = pipeline(
        "text-classification", model=str(out), top_k=None, device="cpu", truncation=True
    )
    expected = checkpoint_probs(text_ckpt, sentences)
    for scores, ref in zip(classify(sentences), expected, strict=True):
        by_label = {s["label"]: s["score"] for s in scores}
        assert set(by_label) == {"neg", "pos"}  # id2label from the checkpoint's label names
        assert by_label["neg"] == pytest.approx(float(ref[0]), abs=1e-5)
        assert by_label["pos"] == pytest.approx(float(ref[1]), abs=1e-5)
    assert_default_modes(out)  # model.safetensors included


def test_export_hf_refuses_an_image_model(image_ckpt, workdir) -> None:
    from src.errors import ConfigError

    with pytest.raises(ConfigError, match="format=hf needs a transformers text model"):
        export_in_process(image_ckpt, "hf", workdir / "hf_img")


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
@pytest.mark.parametrize("modality", ["text", "image"])
def test_export_gives_checkpoint_logits(fmt, modality, text_ckpt, image_ckpt, workdir) -> None:
    import onnxruntime as ort

    from src.export import FILE_NAMES
    from src.saved_run import load_run

    ckpt = text_ckpt if modality == "text" else image_ckpt
    out = workdir / f"{fmt}_{modality}"
    info = export_in_process(ckpt, fmt, out)
    assert info["check_max_abs_diff"] <= 1e-4
    # An independent check, on inputs of another batch size and length than the export's sample.
    model = load_run(ckpt)
    if modality == "text":
        texts = ["good", "the movie was cold and grim and really very weak", "fun", "a warm plot"]
        batch = dict(model.processor(texts, padding=True, return_tensors="pt"))
    else:
        batch = {"pixel_values": torch.randn(5, 3, 32, 32)}
    with torch.inference_mode():
        expected = model.module(batch)
    if fmt == "onnx":
        session = ort.InferenceSession(
            str(out / FILE_NAMES["onnx"]), providers=["CPUExecutionProvider"]
        )
        feeds = {i.name: batch[i.name].numpy() for i in session.get_inputs()}
        got = torch.from_numpy(session.run(None, feeds)[0])
    else:
        traced = torch.jit.load(str(out / FILE_NAMES["torchscript"]))
        with torch.inference_mode():
            got = traced(*(batch[name] for name in info["input_names"]))
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)
    assert json.loads((out / "export.json").read_text())["label_names"] == model.label_names
    assert_default_modes(out)
    if modality == "text":
        assert (out / "tokenizer.json").is_file()
        assert info["max_length"] == 32
    else:
        assert json.loads((out / "preprocessing.json").read_text())["crop_size"] == 32


def test_export_onnx_int8_is_a_quantized_approximation(text_ckpt, workdir) -> None:
    """quantize=int8 writes model.int8.onnx beside the exact fp32 model.onnx: int8 weights (a
    smaller file), logits close to the checkpoint's, the difference recorded in export.json."""
    import onnx

    from src.export import FILE_NAMES, QUANTIZED, export

    out = workdir / "onnx_int8"
    info = export(
        compose_entry(
            "export", f"ckpt_path={text_ckpt}", "format=onnx", "quantize=int8", f"out={out}"
        )
    )
    assert info["check_max_abs_diff"] <= 1e-4  # model.onnx itself stays exact
    quantized = info["quantized"]
    assert quantized["file"] == QUANTIZED["int8"] == "model.int8.onnx"
    assert 0 < quantized["check_max_abs_diff"] < 0.5, quantized
    graph = onnx.load(str(out / QUANTIZED["int8"])).graph
    int8 = [t for t in graph.initializer if t.data_type == onnx.TensorProto.INT8]
    assert int8, "no int8 weights in the quantized model"
    assert any(n.op_type in ("DynamicQuantizeLinear", "MatMulInteger") for n in graph.node)
    assert (out / QUANTIZED["int8"]).stat().st_size < (out / FILE_NAMES["onnx"]).stat().st_size
    assert not (out / "model.preprocessed.onnx").exists()
    assert json.loads((out / "export.json").read_text())["quantized"] == quantized


@pytest.mark.parametrize("fmt", ["hf", "torchscript"])
def test_export_quantize_needs_onnx(fmt, text_ckpt, workdir) -> None:
    from src.errors import ConfigError
    from src.export import export

    with pytest.raises(ConfigError, match="quantize='int8' with format=" + fmt):
        export(
            compose_entry(
                "export",
                f"ckpt_path={text_ckpt}",
                f"format={fmt}",
                "quantize=int8",
                f"out={workdir / ('q_' + fmt)}",
            )
        )


# --------------------------------------------------------------------------- ensemble


def test_ensemble_averages_member_probabilities(text_run, text_ckpt, text_data, workdir) -> None:
    epochs = sorted((text_run / "checkpoints").glob("epoch*.ckpt"))  # save_top_k=2: both epochs
    assert len(epochs) == 2 and text_ckpt in epochs
    out_dir = workdir / "ensemble"
    glob = text_run / "checkpoints" / "epoch*.ckpt"
    proc = run_cli("src.ensemble", f"ckpt_glob='{glob}'", f"hydra.run.dir={out_dir}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((out_dir / "metrics.json").read_text())
    assert metrics["n_members"] == 2
    best = epochs.index(text_ckpt)
    assert metrics[f"member{best}/ckpt_path"] == str(text_ckpt.resolve())
    # A member scores what its own training run measured on the same test file.
    run_metrics = read_metrics(text_run)
    assert metrics[f"member{best}/test/acc"] == pytest.approx(run_metrics["test/acc"], abs=1e-6)
    assert metrics[f"member{best}/test/loss"] == pytest.approx(run_metrics["test/loss"], rel=1e-4)
    # The ensemble's probabilities are the members' mean, example by example.
    texts = [r["text"] for r in read_csv(text_data / "test.csv")]
    member_probs = [checkpoint_probs(c, texts) for c in epochs]
    assert not torch.allclose(member_probs[0], member_probs[1])  # two different models
    mean = torch.stack(member_probs).mean(0)
    rows = read_csv(out_dir / "predictions.csv")
    got = torch.tensor([[float(r["prob_neg"]), float(r["prob_pos"])] for r in rows])
    torch.testing.assert_close(got, mean, atol=1e-5, rtol=0)
    labels = torch.tensor([["neg", "pos"].index(r["label"]) for r in rows])
    assert metrics["ensemble/test/acc"] == pytest.approx(
        float((mean.argmax(1) == labels).float().mean())
    )
    for key in ("ensemble/test/f1", "member0/test/f1", "members_mean/test/acc"):
        assert 0.0 <= metrics[key] <= 1.0


def test_ensemble_members_from_paths_and_run_dirs(text_run, text_ckpt) -> None:
    from src.ensemble import member_paths
    from src.errors import ConfigError

    last = text_run / "checkpoints" / "last.ckpt"
    cfg = compose_entry("ensemble", f"ckpt_paths=[{last}]", f"run_dirs=[{text_run}]")
    assert member_paths(cfg) == [last, text_ckpt]  # a run dir stands for its best checkpoint
    with pytest.raises(ConfigError, match="listed twice"):
        member_paths(
            compose_entry("ensemble", f"ckpt_paths=[{text_ckpt}]", f"run_dirs=[{text_run}]")
        )


@pytest.mark.parametrize("override", [None, "32-true"])
def test_ensemble_members_run_at_their_training_precision(
    text_run, text_ckpt, monkeypatch, override
) -> None:
    """By default a member runs as its own test did (bf16 autocast after a bf16-mixed run);
    `precision=32-true` scores it in fp32."""
    import src.saved_run
    from src.ensemble import member_output

    trained_at = read_metrics(text_run)["precision"]  # `auto` resolved for this CPU
    expected = override or trained_at
    load_run = src.saved_run.load_run
    dtypes: list[torch.dtype] = []

    def load_and_watch(path):
        model = load_run(path)
        model.module.network.register_forward_hook(lambda m, i, out: dtypes.append(out.dtype))
        return model

    monkeypatch.setattr(src.saved_run, "load_run", load_and_watch)
    extra = [] if override is None else [f"precision={override}"]
    member = member_output(text_ckpt, compose_entry("ensemble", *extra), torch.device("cpu"))
    assert member.precision == expected
    logits = torch.bfloat16 if expected == "bf16-mixed" else torch.float32
    assert dtypes and set(dtypes) == {logits}
    assert member.probs.dtype == torch.float32


def test_ensemble_names_a_bad_precision(text_ckpt, workdir) -> None:
    from src.ensemble import ensemble
    from src.errors import ConfigError

    cfg = compose_entry(
        "ensemble",
        f"ckpt_paths=[{text_ckpt}]",
        "precision=fp8",
        f"paths.output_dir={workdir / 'ens_fp8'}",
    )
    with pytest.raises(ConfigError, match=r"precision='fp8'; valid: null .*bf16-mixed"):
        ensemble(cfg)


def test_ensemble_rejects_members_of_another_task(text_ckpt, image_ckpt, workdir) -> None:
    from src.ensemble import ensemble
    from src.errors import ConfigError

    cfg = compose_entry(
        "ensemble",
        f"ckpt_paths=[{text_ckpt},{image_ckpt}]",
        f"paths.output_dir={workdir / 'ens_bad'}",
    )
    with pytest.raises(ConfigError, match="has classes"):
        ensemble(cfg)
