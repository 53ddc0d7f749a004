"""DatasetTask reads Parquet files and folders saved by ``datasets`` with the same rows as JSONL:
the Geo3k layout with images as ``{bytes, path}`` structs, a bad row named by file and row, and a
Geo3k-layout Parquet file training two steps with the VL config."""

import base64
import csv
import io
import json
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image, ImageDraw

from cepo.tasks import DatasetTask, Example, JsonlTask
from cepo.tasks import sources as sources_module
from cepo.tasks.jsonl import read_dataset

IMAGE = pa.struct([("bytes", pa.binary()), ("path", pa.string())])


def png(colour: tuple[int, int, int], size: int = 56) -> bytes:
    image = Image.new("RGB", (size, size), "white")
    ImageDraw.Draw(image).rectangle((8, 8, size - 8, size - 8), fill=colour)
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def geo3k_rows(n: int = 4) -> list[dict]:
    """Rows in hiyouga/geometry3k's layout: ``images`` a list of ``{bytes, path}``, ``problem``
    with an ``<image>`` placeholder, ``answer``."""
    return [
        {
            "images": [{"bytes": png((40 * i, 200 - 30 * i, 90)), "path": f"{i}.png"}],
            "problem": f"<image>Find x in triangle {i}.",
            "answer": str(3 + i),
        }
        for i in range(n)
    ]


GEO3K_SCHEMA = pa.schema([("images", pa.list_(IMAGE)), ("problem", pa.string()), ("answer", pa.string())])


def write_parquet(path, rows, schema=GEO3K_SCHEMA, row_group_size=None):
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), path, row_group_size=row_group_size)
    return path


def write_saved(folder, rows, schema=GEO3K_SCHEMA, files=2):
    """A folder in ``Dataset.save_to_disk``'s layout, written by hand: ``dataset_info.json``,
    ``state.json`` naming ``data-XXXXX-of-YYYYY.arrow`` files in Arrow IPC stream format."""
    folder.mkdir()
    table = pa.Table.from_pylist(rows, schema=schema)
    per = -(-len(rows) // files)
    names = []
    for i in range(files):
        name = f"data-{i:05d}-of-{files:05d}.arrow"
        with pa.OSFile(str(folder / name), "wb") as sink, pa.ipc.new_stream(sink, schema) as writer:
            writer.write_table(table.slice(i * per, per), max_chunksize=1)  # several record batches
        names.append(name)
    features = {name: {"_type": "Value", "dtype": "string"} for name in schema.names}
    if "images" in schema.names:
        features["images"] = [{"_type": "Image"}]
    (folder / "dataset_info.json").write_text(json.dumps({"features": features}))
    state = {
        "_data_files": [{"filename": n} for n in names],
        "_fingerprint": "0" * 16,
        "_format_columns": None,
        "_format_kwargs": {},
        "_format_type": None,
        "_output_all_columns": False,
        "_split": None,
    }
    (folder / "state.json").write_text(json.dumps(state))
    return folder


def pixels(example: Example) -> list[bytes]:
    return [img.decode().tobytes() for img in example.images]


def same(a: list[Example], b: list[Example]) -> None:
    assert [(e.prompt, e.answer, e.solution, e.messages) for e in a] == [
        (e.prompt, e.answer, e.solution, e.messages) for e in b
    ]
    assert [pixels(e) for e in a] == [pixels(e) for e in b]


def test_a_geo3k_parquet_file_gives_its_problems_and_images(tmp_path):
    rows = geo3k_rows()
    path = write_parquet(tmp_path / "geo.parquet", rows)
    train = DatasetTask(train=str(path), prompt_template="{question}").split("train")
    assert [e.prompt for e in train] == [r["problem"] for r in rows]
    assert [e.answer for e in train] == ["3", "4", "5", "6"]
    for example, row in zip(train, rows):
        (encoded,) = example.images
        assert encoded.data == row["images"][0]["bytes"]  # kept encoded until a batch needs it
        image = encoded.decode()
        assert image.mode == "RGB" and image.size == (56, 56)
        assert image.tobytes() == Image.open(io.BytesIO(row["images"][0]["bytes"])).convert("RGB").tobytes()


def test_the_same_rows_in_jsonl_parquet_and_a_saved_folder_give_the_same_examples(tmp_path):
    """Every row layout JsonlTask reads (question/answer, problem/solution, messages, images as a
    ``{bytes}`` dict) gives the same Examples from JSONL, Parquet and a save_to_disk folder."""
    rows = [
        {"question": "Janet has 3 apples.", "answer": "She has #### 3"},
        {"problem": "What is 1/2?", "solution": "It is $\\boxed{\\frac{1}{2}}$."},
        {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"}], "answer": "4"},
        {"problem": "<image>Find x.", "answer": "7", "images": [{"bytes": png((10, 200, 30)), "path": None}]},
        {"prompt": "How many sides?", "answer": "5", "images": [{"bytes": png((200, 10, 30)), "path": "p.png"}]},
    ]
    json_rows = [
        {**r, "images": [{"bytes": base64.b64encode(i["bytes"]).decode(), "path": i["path"]} for i in r["images"]]}
        if "images" in r
        else r
        for r in rows
    ]
    jsonl = tmp_path / "rows.jsonl"
    jsonl.write_text("".join(json.dumps(r) + "\n" for r in json_rows))
    turn = pa.struct([("role", pa.string()), ("content", pa.string())])
    columns = [(k, pa.string()) for k in ("question", "problem", "prompt", "answer", "solution")]
    schema = pa.schema([*columns, ("messages", pa.list_(turn)), ("images", pa.list_(IMAGE))])
    parquet = write_parquet(tmp_path / "rows.parquet", rows, schema=schema)
    saved = write_saved(tmp_path / "saved", rows, schema=schema)
    want = read_dataset(jsonl, "Q: {question}")
    assert len(want) == 5 and [len(e.images) for e in want] == [0, 0, 0, 1, 1]
    assert want[4].prompt == "<image>Q: How many sides?" and want[2].messages[0]["content"] == "Be brief."
    same(read_dataset(parquet, "Q: {question}"), want)
    same(read_dataset(saved, "Q: {question}"), want)


def test_a_saved_datasets_folder_is_read_across_its_arrow_files(tmp_path):
    rows = geo3k_rows(5)
    folder = write_saved(tmp_path / "geo3k", rows, files=2)
    assert sorted(p.name for p in folder.iterdir()) == [
        "data-00000-of-00002.arrow",
        "data-00001-of-00002.arrow",
        "dataset_info.json",
        "state.json",
    ]
    task = DatasetTask(train=str(folder), val=str(write_parquet(tmp_path / "v.parquet", rows)), verifier="exact")
    same(task.split("train"), task.split("val"))
    assert [e.answer for e in task.split("train")] == ["3", "4", "5", "6", "7"]


def test_a_folder_written_by_datasets_save_to_disk_reads(tmp_path):
    datasets = pytest.importorskip("datasets")
    rows = geo3k_rows(3)
    features = datasets.Features(
        {"images": datasets.Sequence(datasets.Image()), "problem": datasets.Value("string"), "answer": "string"}
    )
    datasets.Dataset.from_list(rows, features=features).save_to_disk(str(tmp_path / "ds"), num_shards=2)
    same(
        read_dataset(tmp_path / "ds", "{question}"),
        read_dataset(write_parquet(tmp_path / "g.parquet", rows), "{question}"),
    )


@pytest.mark.parametrize("kind", ["parquet", "saved"])
def test_rows_are_read_in_chunks_of_the_columns_rows_use(tmp_path, monkeypatch, kind):
    """Columns no row layout uses are never turned into Python values, and rows are made a chunk at
    a time: a bad row is found before the rest of the file is read."""
    rows = [{"question": f"q{i}", "answer": str(i), "blob": b"x" * 1000} for i in range(50)]
    rows[3]["answer"] = None
    schema = pa.schema([("question", pa.string()), ("answer", pa.string()), ("blob", pa.binary())])
    if kind == "parquet":
        path = write_parquet(tmp_path / "x.parquet", rows, schema=schema, row_group_size=10)
    else:
        path = write_saved(tmp_path / "x", rows, schema=schema)
    seen, batches_read = [], []
    real = sources_module._batch_rows

    def read(batches):
        for batch in batches:
            batches_read.append(batch.num_rows)
            yield batch

    def spy(batches, name, start=0):
        for where, row in real(read(batches), name, start):
            seen.append(row)
            yield where, row

    monkeypatch.setattr(sources_module, "CHUNK", 4)
    monkeypatch.setattr(sources_module, "_batch_rows", spy)
    with pytest.raises(ValueError) as err:
        read_dataset(path, "{question}")
    assert str(err.value) == f"{path}: row 3: row has no answer ('answer', or a \\boxed{{}} 'solution')"
    assert len(seen) == 4 and all("blob" not in row for row in seen)
    assert sum(batches_read) < 50 and max(batches_read) <= 16  # record batches, not the whole file


@pytest.mark.parametrize("kind", ["parquet", "saved"])
def test_a_bad_row_is_named_by_file_and_row(tmp_path, kind):
    rows = geo3k_rows(4)
    rows[2]["images"] = [{"bytes": b"not a png", "path": None}]
    rows[3]["answer"] = None
    path = write_parquet(tmp_path / "x.parquet", rows) if kind == "parquet" else write_saved(tmp_path / "x", rows)
    with pytest.raises(ValueError) as err:
        DatasetTask(train=str(path)).validate()
    assert str(err.value) == f"{path}: row 2: image 0: cannot decode the 'bytes' value (not an image file PIL can read)"
    rows[2] = geo3k_rows(3)[2]
    path = write_parquet(tmp_path / "y.parquet", rows) if kind == "parquet" else write_saved(tmp_path / "y", rows)
    with pytest.raises(ValueError) as err:
        DatasetTask(train=str(path)).validate()
    assert str(err.value) == f"{path}: row 3: row has no answer ('answer', or a \\boxed{{}} 'solution')"


def test_a_missing_unsupported_or_unreadable_dataset_is_one_line_naming_setting_and_file(tmp_path):
    def error(**paths):
        with pytest.raises((ValueError, FileNotFoundError)) as err:
            DatasetTask(**paths).validate()
        assert "\n" not in str(err.value)
        return str(err.value)

    assert error(val=str(tmp_path / "none.parquet")) == f"task.val: dataset file not found: {tmp_path / 'none.parquet'}"
    (tmp_path / "x.csv").write_text("question,answer\n")
    kinds = "a .jsonl (JSON Lines) or .parquet file, or a folder saved by datasets' save_to_disk"
    assert (
        error(train=str(tmp_path / "x.csv"))
        == f"task.train: {tmp_path / 'x.csv'} is not a dataset cepo reads; expected {kinds}"
    )
    (tmp_path / "dir").mkdir()
    assert error(test=str(tmp_path / "dir")).startswith(f"task.test: {tmp_path / 'dir'} is a folder without state.json")
    (tmp_path / "broken.parquet").write_bytes(b"PAR1 not really")
    assert error(train=str(tmp_path / "broken.parquet")).startswith(
        f"{tmp_path / 'broken.parquet'}: not a Parquet file"
    )
    folder = write_saved(tmp_path / "saved", geo3k_rows(2), files=1)
    (folder / "data-00000-of-00001.arrow").unlink()
    assert error(train=str(folder)) == f"{folder}: state.json names data-00000-of-00001.arrow, which is missing"
    parent = tmp_path / "dict"
    parent.mkdir()
    shutil.copytree(write_saved(tmp_path / "train", geo3k_rows(2)), parent / "train")
    (parent / "dataset_dict.json").write_text('{"splits": ["train"]}')
    assert "holds a DatasetDict (splits ['train'])" in error(train=str(parent))
    empty = write_parquet(tmp_path / "empty.parquet", [])
    assert error(train=str(empty)) == f"{empty}: no rows"


def test_jsonl_task_is_the_dataset_task():
    assert JsonlTask is DatasetTask
    from cepo.tasks.jsonl import JsonlTask as same_name

    assert same_name is DatasetTask


ROOT_CONFIGS = Path(__file__).resolve().parents[1] / "configs"
OVERLAYS = [None] + [  # every shipped method, credit rule and sampling option (about 1 s each)
    f"{kind}/{p.stem}.yaml"
    for kind in ("method", "credit", "sampling")
    for p in sorted((ROOT_CONFIGS / kind).glob("*.yaml"))
]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_a_geo3k_parquet_file_trains_two_steps_with_the_vl_config(tmp_path, overlay):
    """The issue's end-to-end case: ``cepo fit`` with the VL default config, ``--data.task
    cepo.tasks.DatasetTask --data.task.train x.parquet --data.task.val y.parquet``, for 2 steps;
    with every shipped method, credit rule and sampling option too (CIPO's corrections restated an
    image prompt, and a second placeholder stopped every VL CIPO run)."""
    from cepo.bases.tiny import build_tiny_vl
    from cepo.cli import cli_main
    from tests.helpers import ROOT

    model = build_tiny_vl(tmp_path / "model", seed=0)
    train = write_parquet(tmp_path / "x.parquet", geo3k_rows(4))
    val = write_parquet(tmp_path / "y.parquet", geo3k_rows(2))
    args = ["fit", "--config", str(ROOT / "configs" / "vl" / "default.yaml")]
    if overlay:
        args += ["--config", str(ROOT / "configs" / overlay)]
    if overlay == "method/cipo.yaml":  # with max_share 0.5, each step's 2 prompts may get 2 correction groups
        args += ["--model.objective.init_args.max_share", "0.5"]
    args += ["--data.task", "cepo.tasks.DatasetTask", "--data.task.train", str(train), "--data.task.val", str(val)]
    args += ["--model.model_path", str(model), "--trainer.max_steps", "2", "--data.prompts_per_step", "2"]
    args += ["--data.group_size", "2", "--data.eval_size", "2", "--data.eval_k", "1"]
    args += ["--data.sampling.max_new_tokens", "4", "--model.vision.max_pixels", "9000"]
    args += ["--run_root", str(tmp_path), "--run_name", "geo", "--run_version", "v"]
    cli_main(args)
    run = tmp_path / "geo" / "v"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["rl_steps"] == 2 and summary["optimizer_steps"] == 2
    if overlay == "method/cipo.yaml":  # corrections were sampled, with the prompt's image, at both steps
        rows = csv.DictReader(open(run / "metrics.csv"))
        attempts = [float(r["train/cipo/attempts"]) for r in rows if r.get("train/cipo/attempts")]
        assert len(attempts) == 2 and min(attempts) > 0, attempts
    final = [json.loads(line) for line in (run / "samples" / "final.jsonl").read_text().splitlines()]
    assert [(r["prompt"], r["reference"]) for r in final if r["sample"] == "greedy"] == [
        ("Question: <image>Find x in triangle 0.\nAnswer:", "3"),
        ("Question: <image>Find x in triangle 1.\nAnswer:", "4"),
    ]
